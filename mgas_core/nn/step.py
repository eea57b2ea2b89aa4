"""Learned discretisation: binary step functions with a long-tailed surrogate gradient.

``mask = Step(score - t)`` is 1 where the score clears the learnable threshold ``t``. The forward
pass is the exact 0/1 step; the backward pass uses the long-tailed surrogate of Liu et al.
(Dynamic Sparse Training, ICLR 2020), reused by MGAS::

    dStep/dx = 2 - 4|x|   for |x| <= 0.4
               0.4        for 0.4 < |x| <= 1
               0          beyond

so thresholds and scores keep receiving gradient near the decision boundary. MGAS keeps its
thresholds as tensors of its own (one per unit and level); :class:`FilterGate` holds the
filter-level scores and their stored mask.
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


class FilterGate(nn.Module):
    """Filter-level scores ``sigmoid(beta_c)`` per output channel of a conv stage.

    The channel's output is multiplied by ``scale() = sigmoid(beta) * mask``. ``stored`` is the
    permanent 0/1 mask (updated by MGAS every mask interval; its zeros are later removed for real);
    during a step MGAS lends the gate its live mask ``Step(sigmoid(beta) - t) * stored`` through
    ``cached``. A gate with ``maskable=False`` only scales (the official MG-DARTS
    FactorizedReduce: scores, but never pruned).
    """

    def __init__(self, channels: int, maskable: bool = True) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("stored", torch.ones(channels))
        self.maskable = maskable
        self.cached: tuple[Tensor, Tensor] | None = None  # (score, live mask) lent for one step

    def score(self) -> Tensor:
        return self.cached[0] if self.cached is not None else torch.sigmoid(self.beta)

    def mask(self) -> Tensor:
        return self.cached[1] if self.cached is not None else self.stored

    def scale(self) -> Tensor:
        return self.score() * self.mask()

    def keep(self, index: Tensor) -> None:
        """Physically drop the channels not in ``index`` (filter removal)."""
        index = index.to(self.beta.device)
        self.beta = nn.Parameter(self.beta.detach()[index].clone())
        self.stored = self.stored[index].clone()
        self.cached = None
