"""Opt-in ``torch.compile`` of the network a retraining trains (``retrain.compile``).

The compiled forward wraps the module without replacing it: parameters, buffers, ``state_dict()``
keys and checkpoints stay the module's own (no ``_orig_mod.`` prefix), so a compiled run resumes
an eager checkpoint and the other way round. :class:`mgas_core.evaluation_network.EvalNetwork` is written so one
retraining compiles a bounded number of graphs, not one per epoch: training, the last smaller batch
of an epoch (a dynamic batch size after it), evaluation, and training once drop-path turns on.
The drop-path probability changes every epoch; inside a compiled graph it is a symbolic float, not
a constant the graph is specialised on (``model.drop_path``).

Compiled kernels add and multiply in another order than eager ones, so the two runs agree to a
tolerance, not bitwise, and under Inductor drop-path draws its random numbers with Inductor's own
generator (seeded from torch's, so a seed still gives one result on one machine). On CPU one
compile of a found network takes minutes and pays off after a few hundred steps
(``benchmarks/compile_retrain.py``; docs/performance.md).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mgas_common.errors import UserInputError


def inductor_cxx_candidates() -> list[str]:
    """The C++ compilers Inductor tries on CPU, in its order (``torch._inductor.config.cpp.cxx``:
    ``$CXX``, else ``g++`` on Linux)."""
    import torch._inductor.config as inductor_config

    return [c for c in inductor_config.cpp.cxx if c]


def compile_toolchain_problem(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot compile for ``device`` on this machine (None when it can): Inductor
    builds C++ kernels on CPU (one of :func:`inductor_cxx_candidates` on PATH) and Triton kernels
    on CUDA (the ``triton`` package)."""
    if backend != "inductor":
        return None
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Inductor on CUDA needs the triton package (pip install triton)"
        return None
    candidates = inductor_cxx_candidates()
    if not any(shutil.which(c) for c in candidates):
        return (f"Inductor on CPU builds C++ kernels with {' or '.join(candidates)} (set by $CXX), "
                "and none is on PATH")
    return None


def check_compile(enabled: bool, backend: str, device: torch.device) -> None:
    """Refuse ``retrain.compile`` where its backend cannot run, naming the fields and what would
    (the backend's name itself is validated with the settings: ``RetrainSettings.compile_backend``)."""
    if not enabled:
        return
    problem = compile_toolchain_problem(backend, device)
    if problem is not None:
        raise UserInputError(f"retrain.compile: {problem}; allowed here: retrain.compile false, or "
                             "retrain.compile_backend aot_eager or eager")


def compiled_forward(model: nn.Module, enabled: bool, backend: str) -> Callable[..., Any]:
    """What to call instead of ``model(...)``: ``model`` itself, or its ``torch.compile`` wrapper
    (which shares the module's parameters and training mode; save and load ``model``). One
    compiled retraining at a time per process: this drops the process's earlier compiled graphs."""
    if not enabled:
        return model
    # dynamo keeps at most ``recompile_limit`` (8) graphs of one function per process and then runs
    # it eagerly without a word; every network built in a process (a reused trial worker, GOLD-NAS's
    # snapshots retrained one after another) adds its own, so each retraining starts from none
    torch.compiler.reset()
    if backend == "inductor" and "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        import torch._inductor.config as inductor_config

        # Inductor compiles its kernels in up to 32 processes (one a core): a trial keeps to its
        # CPU allocation (the torch threads it was given) and leaves the node's other trials theirs
        inductor_config.compile_threads = max(1, torch.get_num_threads())
    return torch.compile(model, backend=backend)
