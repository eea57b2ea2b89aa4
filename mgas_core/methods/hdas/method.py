"""H-DAS (Liu, Zhong, Guo, Scott, Huang; AAAI 2021): cell level, then stage level.

Phase 1, **Hc-DAS** (``search.hdas.cell_epochs``): stage-specific cells on the DARTS supernet
(:mod:`.cell_search`). Phase 2, **Hs-DAS** (``search.hdas.stage_epochs``): the cells fixed, the
stage-level DAG and each stage's length (:mod:`.stage_search`). With ``search.hdas.cells_from``
(``mgas search --cells-from ARCH``) phase 1 is skipped and the given architecture's cells fill the
stages: the paper's "stage-level architecture combined with cells of other DAS methods".

Both phases step as the official code (first order): an Adam step of the architecture parameters
on a held-out batch's cross-entropy, in phase 2 a second Adam step on the depth and length losses,
then an SGD step of the weights on the training batch (lr cosine per phase, clip 5). Deviation,
stated in docs/fidelity.md: the official first-order architect takes the held-out gradient on a
copy of the network made at start and never synchronised again; here it is the network itself.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from mgas_common.errors import UserInputError
from mgas_core.data import Batch, DatasetInfo
from mgas_core.methods.hdas.cell_search import StageCellModel
from mgas_core.methods.hdas.settings import HdasSettings
from mgas_core.methods.hdas.stage_search import StageSearchNetwork
from mgas_core.methods.protocol import MethodStyle, SearchMethod, cosine_lr, frozen, set_lr
from mgas_core.methods.published import located
from mgas_core.methods.registry import register_method
from mgas_core.settings.run import SearchSettings
from mgas_core.settings.strict import SettingConflict
from mgas_core.space.architecture import Architecture, CellArch, architecture_from_json
from mgas_core.space.builtin_architectures import resolve_architecture
from mgas_core.space.stages import StageArch, normal_cells_by_stage
from mgas_core.space.topology import DARTS_PRIMITIVES, reduction_cells
from mgas_core.supernet.builder import build_supernet

STAGES = 3


def cells_of(arch: Architecture) -> tuple[list[CellArch], list[CellArch]]:
    """(normal cell per stage, reduction cells) that ``arch`` contributes to a stage-level network:
    a genotype's normal and reduction cell in every stage; a per-cell architecture's first normal
    cell of each of its stages and its reduction cells. Cells with channel widths are refused."""
    if arch.is_genotype:
        assert arch.normal is not None and arch.reduce is not None
        return [arch.normal] * STAGES, [arch.reduce] * (STAGES - 1)
    cells = arch.cells or []
    if arch.channels is not None and any(o.widths for c in cells for o in c.ops):
        raise UserInputError(f"--cells-from {arch.name!r}: its cells have channel widths (filters removed); a "
                             "stage-level DAG takes cells without widths (a genotype, or H-DAS's cells)")
    reductions = arch.reductions(len(cells))
    if len(reductions) != STAGES - 1:
        raise UserInputError(f"--cells-from {arch.name!r}: {len(reductions)} reduction cells; allowed: {STAGES - 1}")
    normals = []
    for s, inside in enumerate(normal_cells_by_stage(reductions, len(cells))):
        if not inside:
            raise UserInputError(f"--cells-from {arch.name!r}: stage {s + 1} has no normal cell")
        normals.append(_plain(cells[inside[0]]))
    return normals, [_plain(cells[i]) for i in reductions]


def _plain(cell: CellArch) -> CellArch:
    return CellArch(copy.deepcopy(cell.ops), list(cell.concat))


@register_method("hdas")
class Hdas(SearchMethod):
    primitives = DARTS_PRIMITIVES
    bilevel = True
    settings_model = HdasSettings
    presets = {"tiny": {"search.hdas.cell_layers": 5, "search.hdas.min_cells": 1, "search.hdas.max_cells": 3,
                        "search.hdas.alpha_lr": 3e-3, "search.hdas.length_coefficient": 0.1},
               "smoke": {"search.hdas.cell_layers": 5, "search.hdas.min_cells": 1, "search.hdas.max_cells": 2,
                         "search.hdas.cell_epochs": 1, "search.hdas.stage_epochs": 1}}
    cli_flags = {"cells_from": "another method's architecture (JSON, darts_v1, darts_v2) whose cells fill the "
                               "stages; only the stage level is searched"}
    style = MethodStyle("H-DAS", "#8c564b", "P")

    @classmethod
    def check_settings(cls, settings: SearchSettings) -> None:
        if settings.method != "hdas":
            return
        cfg = settings.hdas
        if cfg.cells_from is not None:
            try:
                cells_of(resolve_architecture(located(cfg.cells_from)))
            except UserInputError as exc:
                raise SettingConflict("hdas.cells_from", str(exc)) from None
            return
        layers = cfg.cell_layers or settings.layers
        reductions = reduction_cells(layers)
        if len(reductions) != STAGES - 1 or not all(normal_cells_by_stage(reductions, layers)):
            field = "hdas.cell_layers" if cfg.cell_layers else "layers"
            raise SettingConflict(field, f"H-DAS's cell level needs a normal cell in each of its {STAGES} stages: "
                                         f"{layers} cells place reductions at {reductions}; allowed: 5 or more "
                                         "(official 8)")

    @classmethod
    def epoch_plan(cls, settings: SearchSettings) -> tuple[int, str]:
        cell, stage = cls.phase_epochs(settings)
        return cell + stage, f"{cell} cell + {stage} stage ep"

    @staticmethod
    def phase_epochs(settings: SearchSettings) -> tuple[int, int]:
        cfg = settings.hdas
        cell = 0 if cfg.cells_from is not None else (cfg.cell_epochs or settings.epochs)
        return cell, cfg.stage_epochs or settings.epochs

    def __init__(self, settings: SearchSettings, info: DatasetInfo, device: torch.device, seed: int) -> None:
        super().__init__(settings, info, device, seed)
        if info.variant != "cifar":
            raise UserInputError(f"search.method hdas: the stage-level network is the CIFAR-style one; dataset "
                                 f"{info.name!r} builds the {info.variant} variant; allowed: digits, cifar10, "
                                 "cifar100, synthetic")
        self.cfg: HdasSettings = settings.hdas
        self.cell_epochs, self.stage_epochs = self.phase_epochs(settings)
        self.phase = "cell"
        self.cells: tuple[list[CellArch], list[CellArch]] | None = None
        self.source_arch: str | None = None
        self.nodes = settings.nodes  # of the cells: the searched ones', or the given architecture's
        if self.cfg.cells_from is not None:
            given = resolve_architecture(located(self.cfg.cells_from))
            self.cells, self.source_arch, self.nodes = cells_of(given), given.name, given.nodes
            self._enter_stage_phase()
        else:
            layers = self.cfg.cell_layers or settings.layers
            net = build_supernet(settings.model_copy(update={"layers": layers}), self.primitives, info)
            self.model = StageCellModel(net, self.cfg.alpha_init_std).to(device)
            self._make_optimizers()

    def _make_optimizers(self) -> None:
        s, cfg = self.settings, self.cfg
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), lr=s.w_lr, momentum=s.w_momentum,
                                     weight_decay=s.w_weight_decay)
        self.a_opt = torch.optim.Adam(self.model.arch_parameters(), lr=cfg.alpha_lr, betas=cfg.alpha_betas,
                                      weight_decay=cfg.alpha_weight_decay)

    def _enter_stage_phase(self) -> None:
        assert self.cells is not None
        normals, reduces = self.cells
        cfg, s = self.cfg, self.settings
        self.model = StageSearchNetwork(normals, reduces, s.channels, self.info.num_classes, self.info.in_channels,
                                        cfg.min_cells, cfg.max_cells, cfg.window, cfg.alpha_init_std).to(self.device)
        self.model.to(memory_format=self.memory_format)
        self.phase = "stage"
        self._make_optimizers()

    @property
    def max_epochs(self) -> int:
        return self.cell_epochs + self.stage_epochs

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"weights": self.w_opt, "alphas": self.a_opt}

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        s = self.settings
        if self.phase == "cell":
            lr = cosine_lr(s.w_lr, s.w_lr_min, epoch, self.cell_epochs)
        else:
            lr = cosine_lr(s.w_lr, s.w_lr_min, epoch - self.cell_epochs, self.stage_epochs)
        set_lr(self.w_opt, lr)

    def train_step(self, batch: Batch, arch_batch: Batch | None = None) -> dict[str, float]:
        x, y = self.to_device(batch)
        arch_params = self.model.arch_parameters()
        if arch_batch is not None:
            xa, ya = self.to_device(arch_batch)
            self.a_opt.zero_grad(set_to_none=True)
            # weights frozen through the backward too: a recomputed (checkpointed) cell sees what its forward saw
            with frozen(self.model.weight_parameters()), self.autocast():
                loss_a = F.cross_entropy(self.model(xa), ya)
                grads = torch.autograd.grad(loss_a, arch_params, materialize_grads=True)
            for p, g in zip(arch_params, grads):
                p.grad = g
            self.a_opt.step()
            if self.phase == "stage":
                self.a_opt.zero_grad(set_to_none=True)
                terms = (self.cfg.depth_coefficient * self.model.depth_loss()
                         + self.cfg.length_coefficient * self.model.length_loss())
                for p, g in zip(arch_params, torch.autograd.grad(terms, arch_params, materialize_grads=True)):
                    p.grad = g
                self.a_opt.step()
        return self.weight_step(self.w_opt, x, y)

    def end_of_epoch(self, epoch: int) -> list[dict[str, Any]]:
        if self.phase == "cell" and epoch + 1 == self.cell_epochs:
            cells = self.model.derive_cells()
            self.cells = ([cells[0], cells[2], cells[4]], [cells[1], cells[3]])
            self._enter_stage_phase()
            event = {"type": "phase", "epoch": epoch, "detail": "cell level done: stage-level search begins"}
            self.events.append(event)
            return [event]
        return []

    # --- results ------------------------------------------------------------------------------
    def derive(self) -> Architecture:
        name = f"hdas_seed{self.seed}"
        if self.phase == "cell":  # before the stage level: the stage-specific cells at the search depth
            derived = self.model.derive_cells()
            groups = self.model.groups
            return Architecture(name=name, nodes=self.settings.nodes,
                                cells=[_plain(derived[g]) for g in groups])
        assert self.cells is not None
        normals, reduces = self.cells
        stages = self.model.derive_stages()
        meta: dict[str, Any] = {"cells_per_stage": [st.cells for st in stages]}
        if self.source_arch is not None:
            meta["cells_from"] = self.source_arch
        return staged_architecture(name, self.nodes, normals, reduces, stages, meta)

    def log_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hdas_phase": self.phase, "w_lr": self.w_opt.param_groups[0]["lr"]}
        if self.phase == "stage":
            out["depth"] = float(-self.model.depth_loss().detach())
            for s, length in enumerate(self.model.expected_lengths()):
                out[f"expected_cells_stage{s + 1}"] = length
        return out

    def summary(self) -> dict[str, Any]:
        arch = self.derive()
        return {"cells_per_stage": [st.cells for st in arch.stages or []], "cells_from": self.source_arch}

    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"phase": self.phase}
        if self.cells is not None:
            normals, reduces = self.cells
            state["cells"] = [Architecture(name="cell", nodes=self.nodes, normal=c, reduce=c).to_json()
                              for c in [*normals, *reduces]]
        return state

    def prepare_load(self, state: dict[str, Any]) -> None:
        extra = state["extra"]
        if extra.get("phase") == "stage" and self.phase == "cell":
            cells = [architecture_from_json(a).normal for a in extra["cells"]]
            self.cells = (cells[:STAGES], cells[STAGES:])
            self._enter_stage_phase()


def staged_architecture(name: str, nodes: int, normals: list[CellArch], reduces: list[CellArch],
                        stages: list[StageArch], meta: dict[str, Any]) -> Architecture:
    """The per-cell architecture of stage-specific cells laid out by ``stages`` (a genotype where
    every stage has the same cells)."""
    if all(c.to_json() == normals[0].to_json() for c in normals) and all(
            c.to_json() == reduces[0].to_json() for c in reduces):
        return Architecture(name=name, nodes=nodes, normal=normals[0], reduce=reduces[0], stages=stages, meta=meta)
    cells: list[CellArch] = []
    for s, stage in enumerate(stages):
        cells += [_plain(normals[s]) for _ in range(stage.cells)]
        if s < len(reduces):
            reduce = _plain(reduces[s])
            reduce.reduction = True
            cells.append(reduce)
    return Architecture(name=name, nodes=nodes, cells=cells, stages=stages, meta=meta)
