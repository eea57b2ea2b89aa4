"""Bitwise-reproducible kernels on request: cuDNN deterministic and not benchmarking, and
``torch.use_deterministic_algorithms`` (with the cuBLAS workspace setting it needs on CUDA).

On CPU the search and retraining loops are already bitwise reproducible for a seed and a thread
count; on GPU these flags make them so, at some speed cost, which is why they are opt-in.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CUBLAS_WORKSPACE = ":4096:8"


@contextmanager
def torch_determinism(enabled: bool) -> Iterator[None]:
    """Within the block, deterministic kernels only (when ``enabled``); the previous flags after."""
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    saved = (cudnn.deterministic, cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    cudnn.deterministic, cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def determinism_flags() -> dict[str, bool]:
    """The flags in force now (recorded with a run)."""
    return {"cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
