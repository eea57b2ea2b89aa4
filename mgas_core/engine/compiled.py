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

import ctypes
import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mgas_common.errors import UserInputError


def inductor_cxx_candidates() -> list[str]:
    """The C++ compilers Inductor tries on CPU, in its order (``torch._inductor.config.cpp.cxx``:
    ``$CXX``, else ``g++`` on Linux)."""
    import torch._inductor.config as inductor_config

    return [c for c in inductor_config.cpp.cxx if c]


CXX_PROBE_TIMEOUT_S = 10.0
PROBE_KERNEL = 'extern "C" float mgas_probe_kernel(float x) { return x + 1.0f; }\n'


def cxx_problem(compiler: str) -> str | None:
    """Why ``compiler`` cannot build a kernel the way Inductor does on CPU (None when it can): a
    one-function C++ file built into a shared library (``-shared -fPIC``) within
    :data:`CXX_PROBE_TIMEOUT_S`, loaded, and called. A compiler that is on PATH but broken (a
    wrapper that fails, a missing linker, no standard headers) would otherwise fail the first
    retraining minutes in, after its search."""
    with tempfile.TemporaryDirectory(prefix="mgas-cxx-probe-") as tmp:
        source, library = Path(tmp, "kernel.cpp"), Path(tmp, "kernel.so")
        source.write_text(PROBE_KERNEL)
        command = [compiler, "-shared", "-fPIC", "-O1", str(source), "-o", str(library)]
        try:
            built = subprocess.run(command, capture_output=True, text=True, timeout=CXX_PROBE_TIMEOUT_S,
                                   stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"the C++ compiler {compiler} did not build a one-line kernel within {CXX_PROBE_TIMEOUT_S:g} s"
        except OSError as exc:
            return f"the C++ compiler {compiler} cannot be run ({exc.strerror or exc})"
        if built.returncode != 0:
            said = next((line.strip() for line in (built.stderr + built.stdout).splitlines() if line.strip()), "")
            return (f"the C++ compiler {compiler} cannot build a kernel (exit {built.returncode}"
                    + (f": {said[:200]}" if said else "") + ")")
        try:
            kernel = ctypes.CDLL(str(library)).mgas_probe_kernel
        except (OSError, AttributeError) as exc:
            reason = " ".join(str(exc).split())[:200]
            return f"the C++ compiler {compiler} built a kernel that cannot be loaded ({reason})"
        kernel.restype, kernel.argtypes = ctypes.c_float, [ctypes.c_float]
        if kernel(1.0) != 2.0:
            return f"the C++ compiler {compiler} built a kernel that computes the wrong result"
    return None


def compile_toolchain_problem(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot compile for ``device`` on this machine (None when it can): Inductor
    builds C++ kernels on CPU (with the first of :func:`inductor_cxx_candidates` on PATH, which
    must build and load a test kernel: :func:`cxx_problem`) and Triton kernels on CUDA (the
    ``triton`` package)."""
    if backend != "inductor":
        return None
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Inductor on CUDA needs the triton package (pip install triton)"
        return None
    candidates = inductor_cxx_candidates()
    found = next((path for c in candidates if (path := shutil.which(c))), None)
    if found is None:
        return (f"Inductor on CPU builds C++ kernels with {' or '.join(candidates)} (set by $CXX), "
                "and none is on PATH")
    return cxx_problem(found)


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
