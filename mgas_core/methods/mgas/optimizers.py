"""MGAS's optimiser set, as the official ``main()`` builds it for a phase: SGD with momentum for the
module weights of the trained cells and the current head, the alphas, the betas, and the
thresholds of every enabled level (each with its own learning rate)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mgas_core.methods.mgas.settings import MgasSettings
from mgas_core.methods.mgas.units import MgasModel
from mgas_core.nn.step import FilterGate
from mgas_core.settings.run import SearchSettings


def build_optimizers(settings: SearchSettings, model: MgasModel, levels: Sequence[str], upto: int,
                     head: nn.Module, alive: Tensor) -> tuple[list[nn.Parameter], dict[str, torch.optim.Optimizer]]:
    """(the module weights, the optimisers) over the stem, cells ``0 .. upto - 1`` (their ops alive
    in ``alive``) and ``head``."""
    cfg: MgasSettings = settings.mgas
    net = model.net
    modules: list[nn.Module] = [net.stem]
    for ci in range(upto):
        cell = net.cells[ci]
        modules += [cell.preprocess0, cell.preprocess1]
        modules += [op for e, edge in enumerate(cell.edges) for o, op in enumerate(edge.ops) if bool(alive[ci, e, o])]
    modules.append(head)
    betas = [g.beta for m in modules for g in m.modules() if isinstance(g, FilterGate)]
    skip = {id(b) for b in betas}
    weights = [p for m in modules for p in m.parameters() if id(p) not in skip]
    momentum = cfg.arch_momentum
    opts: dict[str, torch.optim.Optimizer] = {"weights": torch.optim.SGD(
        weights, lr=cfg.w_lr, momentum=settings.w_momentum, weight_decay=settings.w_weight_decay)}
    groups = []
    if "op" in levels:
        opts["alpha"] = torch.optim.SGD([model.alpha], lr=cfg.alpha_lr, momentum=momentum)
        groups.append({"params": [model.t_op], "lr": cfg.op_threshold_lr})
    if "filter" in levels:
        opts["beta"] = torch.optim.SGD(betas, lr=cfg.beta_lr, momentum=momentum)
        groups.append({"params": [model.t_filter, model.t_pre], "lr": cfg.filter_threshold_lr})
    if "weight" in levels:
        groups.append({"params": [model.t_weight], "lr": cfg.weight_threshold_lr})
    opts["thresholds"] = torch.optim.SGD(groups, lr=cfg.op_threshold_lr, momentum=momentum)
    return weights, opts
