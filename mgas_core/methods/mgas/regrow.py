"""MG-DARTS's regrowth: which pruned ops come back after stages 2..S (official ``regrow``).

Importance is measured on the alive ops of the stage's cells, per cell and per op type, from two
signals: the mean ``|momentum|`` of their alphas in the alpha optimiser (SGD momentum buffer) and
their mean ``sigmoid(alpha)``. Each signal is normalised to sum to 1 (over the op types of a cell,
and over the cells), and importance is half of each. An op type with no alive op in a cell gets
half the smallest mean of that cell's types (so a type that died out can come back). A regrown op
is drawn with probability ``cell importance x type importance`` and then uniformly among the dead
ops of that (cell, type).

Deviations: the official cell signal is the sum of the types' means divided by the cell's alive op
count; here it is the mean over the cell's alive ops, as the method describes it. The official
draw can land on a (cell, type) without a dead op and is then lost; here every draw is among
buckets that still have one, so exactly ``int(regrow_fraction x pruned)`` ops come back whenever
that many are dead.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _normalised(x: Tensor) -> Tensor:
    total = x.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(x, 1.0 / x.shape[-1])
    return torch.where(total > 0, x / total.clamp_min(1e-30), uniform)


def regrow_importance(alpha: Tensor, momentum: Tensor | None, alive: Tensor) -> tuple[Tensor, Tensor]:
    """``(cell_importance [cells], type_importance [cells, ops])`` over the given cells.

    ``alpha``, ``momentum`` and ``alive`` are ``[cells, edges, ops]``.
    """
    alive_f = alive.to(alpha.dtype)
    grad = momentum.abs() if momentum is not None else torch.zeros_like(alpha)
    magnitude = torch.sigmoid(alpha)
    count = alive_f.sum(dim=1)  # [cells, ops]
    type_means = []
    for signal in (grad, magnitude):
        mean = (signal * alive_f).sum(dim=1) / count.clamp_min(1.0)
        smallest = torch.where(count > 0, mean, torch.full_like(mean, float("inf"))).min(dim=1, keepdim=True).values
        filler = torch.where(torch.isfinite(smallest), smallest / 2, torch.zeros_like(smallest))
        type_means.append(torch.where(count > 0, mean, filler.expand_as(mean)))
    type_importance = 0.5 * _normalised(type_means[0]) + 0.5 * _normalised(type_means[1])
    per_cell = alive_f.sum(dim=(1, 2)).clamp_min(1.0)
    cell_grad = (grad * alive_f).sum(dim=(1, 2)) / per_cell
    cell_mag = (magnitude * alive_f).sum(dim=(1, 2)) / per_cell
    cell_importance = 0.5 * _normalised(cell_grad) + 0.5 * _normalised(cell_mag)
    return cell_importance, type_importance


def draw_regrowth(cell_importance: Tensor, type_importance: Tensor, dead: Tensor, count: int,
                  generator: torch.Generator) -> list[tuple[int, int, int]]:
    """``count`` distinct dead ops ``(cell, edge, op)`` drawn as described above (fewer only if
    fewer are dead). ``dead`` is ``[cells, edges, ops]``; indices are relative to it."""
    dead = dead.clone().cpu()
    joint = (cell_importance[:, None] * type_importance).detach().cpu().double()
    picks: list[tuple[int, int, int]] = []
    for _ in range(count):
        has_dead = dead.any(dim=1)  # [cells, ops]
        if not bool(has_dead.any()):
            break
        weights = joint * has_dead
        if float(weights.sum()) <= 0:
            weights = has_dead.double()
        bucket = int(torch.multinomial(weights.flatten(), 1, generator=generator))
        ci, o = divmod(bucket, joint.shape[1])
        edges = torch.nonzero(dead[ci, :, o]).flatten()
        e = int(edges[int(torch.randint(len(edges), (1,), generator=generator))])
        dead[ci, e, o] = False
        picks.append((ci, e, o))
    return picks
