"""Learned discretisation: binary step functions with a long-tailed surrogate gradient.

``mask = Step(score - t)`` is 1 where the score clears the learnable threshold ``t``. The forward
pass is the exact 0/1 step; the backward pass uses the long-tailed surrogate of Liu et al.
(Dynamic Sparse Training, ICLR 2020), reused by MGAS::

    dStep/dx = 2 - 4|x|   for |x| <= 0.4
               0.4        for 0.4 < |x| <= 1
               0          beyond

so thresholds and scores keep receiving gradient near the decision boundary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def step_surrogate_grad(x: Tensor) -> Tensor:
    """The long-tailed surrogate derivative of the unit step, evaluated at ``x``."""
    a = x.abs()
    inner = 2.0 - 4.0 * a
    tail = torch.full_like(x, 0.4)
    return torch.where(a <= 0.4, inner, torch.where(a <= 1.0, tail, torch.zeros_like(x)))


class _StepWithSurrogate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * step_surrogate_grad(x)


def binary_step(x: Tensor) -> Tensor:
    """1[x > 0] forward, long-tailed surrogate gradient backward."""
    return _StepWithSurrogate.apply(x)


class LearnedThreshold(nn.Module):
    """A learnable scalar threshold ``t``; ``mask(score) = Step(score - t)``.

    ``regulariser()`` is ``exp(-t)``: minimising it raises ``t`` (prunes more), balanced by the
    task loss whose gradient reaches ``t`` through the surrogate.
    """

    def __init__(self, init: float = 0.0) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.tensor(float(init)))

    def mask(self, score: Tensor) -> Tensor:
        return binary_step(score - self.t)

    def regulariser(self) -> Tensor:
        return torch.exp(-self.t)


class FilterGate(nn.Module):
    """Filter-level unit scores ``sigmoid(beta_c)`` per output channel with a learned threshold.

    ``scale()`` returns ``sigmoid(beta) * Step(sigmoid(beta) - t)``: the factor each channel's
    output is multiplied by; a pruned channel contributes exactly zero.
    """

    def __init__(self, channels: int, threshold_init: float = 0.0) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(channels))
        self.threshold = LearnedThreshold(threshold_init)
        self.cached: tuple[Tensor, Tensor] | None = None  # (score, mask) batched for one step

    def score(self) -> Tensor:
        return self.cached[0] if self.cached is not None else torch.sigmoid(self.beta)

    def mask(self) -> Tensor:
        if self.cached is not None:
            return self.cached[1]
        return self.threshold.mask(self.score())

    def scale(self) -> Tensor:
        return self.score() * self.mask()

    def keep(self, index: Tensor) -> None:
        """Physically drop the channels not in ``index`` (filter shrinking)."""
        self.beta = nn.Parameter(self.beta.detach()[index.to(self.beta.device)].clone())
        self.cached = None


def remaining_ratio(masks: list[Tensor]) -> float:
    """Fraction of units whose hard mask is 1, over a list of mask tensors."""
    total = sum(int(m.numel()) for m in masks)
    if total == 0:
        return 1.0
    kept = sum(float(m.detach().sum()) for m in masks)
    return kept / total
