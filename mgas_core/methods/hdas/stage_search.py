"""H-DAS's stage level (Hs-DAS): a DAG of fixed cells per stage, its depth and length losses, and
the stage-level architecture it derives. Read against the official code (``msight-tech/research-hdas``:
``models/search_stage.py``, ``models/search_bigDAG.py``, ``trainer/searchDistribution_trainer.py``,
``genotypes.py``); the rules, in the paper's terms:

* **nodes are cells.** Each stage has ``max_cells`` cell nodes, all with the stage's fixed cell
  (searched by Hc-DAS or taken from another method, ``--cells-from``); the stage input is
  pre-processed twice (two 1x1 ReLU-conv-BN, states 0 and 1). Cell ``k`` reads one input, a mixed
  sum of its candidate edges, given to both of its cell inputs.
* **edges are parameter-free operations** (``max_pool_3x3``, ``avg_pool_3x3``, ``skip_connect``,
  ``none``), softmax-weighted as DARTS mixes ops, one alpha row per edge (init ``1e-3 * N(0, 1)``).
* **sliding window**: cell ``k`` has edges only from the last ``window`` states (official 3); the
  first cells, with fewer earlier states, from all of them.
* **stage length**: a beta per stage over the lengths ``min_cells..max_cells`` (official 4..8);
  the stage output is the softmax(beta)-weighted sum, over lengths ``l``, of the concatenation of
  the last two states of a stage of ``l`` cells (states ``l`` and ``l + 1``).
* **depth loss** (maximised): the expected depth of a stage, ``d_0 = d_1 = 0`` for the inputs and
  ``d_k = sum_j e_kj (d_j + 1) / |window|`` over cell ``k``'s edges, ``e_k = softmax`` over its
  edges of each edge's strongest non-``none`` alpha; a cell that may end the stage (``k + 1`` a
  candidate length) is scaled by ``1 + k * beta_{k+1}``; the stage's depth is ``sum(d) / max_cells``.
  Loss: ``-depth_coefficient * sum over stages``.
* **length (complexity) loss**: ``length_coefficient * sum over stages of sum_l softmax(beta)_l * l``
  (official 0.4).
* **derivation**: per cell the two strongest edges (strongest non-``none`` op each, ``k = 2``), the
  stage's length the argmax of beta, the cells after it dropped, the output the last two states.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgas_core.evaluation_cells import EvalCell, cell_specs
from mgas_core.nn.ops import DARTS_SEARCH, ReLUConvBN
from mgas_core.nn.stem import Stem
from mgas_core.space.architecture import CellArch
from mgas_core.space.stages import StageArch
from mgas_core.supernet.fast import MixedEdge, StateCache

STAGE_PRIMITIVES: tuple[str, ...] = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")
"""The stage-level candidates (official ``PRIMITIVES2``), ``none`` first as in the DARTS order."""


def window_sources(node: int, window: int) -> list[int]:
    """The states cell ``node`` may read: all earlier ones within the last ``window``."""
    return list(range(max(0, node + 2 - window), node + 2))


class StageSearchDag(nn.Module):
    """One stage of the stage-level supernet: ``max_cells`` nodes, each the stage's fixed cell."""

    def __init__(self, cell: CellArch, c_in: int, channels: int, max_cells: int, window: int,
                 lengths: Sequence[int]) -> None:
        super().__init__()
        self.width = len(cell.concat) * channels
        self.preprocess0 = ReLUConvBN(c_in, self.width, affine=False)
        self.preprocess1 = ReLUConvBN(c_in, self.width, affine=False)
        self.sources = [window_sources(k, window) for k in range(max_cells)]
        self.edges = nn.ModuleList(
            nn.ModuleList(MixedEdge(STAGE_PRIMITIVES, self.width, 1, DARTS_SEARCH) for _ in sources)
            for sources in self.sources
        )
        self.cells = nn.ModuleList(
            EvalCell(cell_specs(cell, self.width, self.width, channels, False, False), channels, False, cell)
            for _ in range(max_cells)
        )
        self.lengths = list(lengths)
        self.live = [i for i, p in enumerate(STAGE_PRIMITIVES) if p != "none"]

    @property
    def out_channels(self) -> int:
        return 2 * self.width

    def forward(self, x: Tensor, alphas: Sequence[Tensor], beta: Tensor) -> Tensor:
        states = [self.preprocess0(x), self.preprocess1(x)]
        last = max(self.lengths)
        for k in range(last):
            weights = F.softmax(alphas[k], dim=-1)
            acc: Tensor | None = None
            for e, src in enumerate(self.sources[k]):
                h = self.edges[k][e](StateCache(states[src]), weights[e].unbind(0), self.live)
                acc = h if acc is None else acc + h
            assert acc is not None
            states.append(self.cells[k](acc, acc, 0.0))
        mix = F.softmax(beta, dim=0)
        out: Tensor | None = None
        for w, length in zip(mix, self.lengths):
            h = w * torch.cat([states[length], states[length + 1]], dim=1)
            out = h if out is None else out + h
        assert out is not None
        return out


class StageSearchNetwork(nn.Module):
    """The stage-level supernet: stem -> stage DAG -> reduction cell -> ... -> pool + linear, the
    cells fixed; ``alphas`` (per stage, per cell: edges x ops) and ``betas`` (per stage: lengths)
    are its architecture parameters (in ``state_dict``)."""

    def __init__(self, normal_cells: Sequence[CellArch], reduce_cells: Sequence[CellArch], channels: int,
                 num_classes: int, in_channels: int, min_cells: int, max_cells: int, window: int,
                 init_std: float) -> None:
        super().__init__()
        self.lengths = list(range(min_cells, max_cells + 1))
        self.max_cells, self.window = max_cells, window
        self.stem = Stem(in_channels, channels, "cifar", multiplier=len(normal_cells[0].concat))
        self.stages = nn.ModuleList()
        self.reduction_cells = nn.ModuleList()
        c_in, width = self.stem.out_channels, channels
        for s, cell in enumerate(normal_cells):
            stage = StageSearchDag(cell, c_in, width, max_cells, window, self.lengths)
            self.stages.append(stage)
            c_in = stage.out_channels
            if s < len(reduce_cells):
                width *= 2
                reduction = EvalCell(cell_specs(reduce_cells[s], c_in, c_in, width, True, False), width, True,
                                     reduce_cells[s])
                self.reduction_cells.append(reduction)
                c_in = reduction.out_channels
        self.classifier = nn.Linear(self.stages[-1].out_channels, num_classes)
        n_ops = len(STAGE_PRIMITIVES)
        self.alphas = nn.ParameterList(
            nn.Parameter(init_std * torch.randn(len(sources), n_ops))
            for stage in self.stages for sources in stage.sources
        )
        self.betas = nn.ParameterList(nn.Parameter(init_std * torch.randn(len(self.lengths)))
                                      for _ in self.stages)

    def stage_alphas(self, s: int) -> list[nn.Parameter]:
        return list(self.alphas)[s * self.max_cells:(s + 1) * self.max_cells]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.alphas, *self.betas]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: Tensor) -> Tensor:
        s, _ = self.stem(x)
        for i, stage in enumerate(self.stages):
            s = stage(s, self.stage_alphas(i), self.betas[i])
            if i < len(self.reduction_cells):
                s = self.reduction_cells[i](s, s, 0.0)
        return self.classifier(F.adaptive_avg_pool2d(s, 1).flatten(1))

    # --- losses and derivation -----------------------------------------------------------------
    def edge_strengths(self, alpha: Tensor) -> Tensor:
        """Each edge's strongest alpha among the ops other than ``none``."""
        return alpha[:, 1:].max(dim=1).values

    def stage_depth(self, s: int) -> Tensor:
        """The expected depth of stage ``s`` (see the module docstring)."""
        beta = F.softmax(self.betas[s], dim=0)
        depths: list[Tensor] = [self.betas[s].new_zeros(()), self.betas[s].new_zeros(())]
        for k, alpha in enumerate(self.stage_alphas(s)):
            e = F.softmax(self.edge_strengths(alpha), dim=0)
            sources = window_sources(k, self.window)
            d = sum(e[j] * (depths[src] + 1) for j, src in enumerate(sources)) / len(sources)
            if k + 1 in self.lengths:
                d = d * (1 + k * beta[self.lengths.index(k + 1)])
            depths.append(d)  # type: ignore[arg-type]
        return torch.stack(depths).sum() / self.max_cells

    def depth_loss(self) -> Tensor:
        return -sum(self.stage_depth(s) for s in range(len(self.stages)))  # type: ignore[return-value]

    def length_loss(self) -> Tensor:
        lengths = self.betas[0].new_tensor(self.lengths, dtype=torch.float32)
        return sum((F.softmax(b, dim=0) * lengths).sum() for b in self.betas)  # type: ignore[return-value]

    def expected_lengths(self) -> list[float]:
        with torch.no_grad():
            return [float((F.softmax(b, dim=0) * torch.tensor(self.lengths, dtype=b.dtype)).sum())
                    for b in self.betas]

    def derive_stages(self) -> list[StageArch]:
        """Per stage: its length (argmax beta), per cell the two strongest edges, the last two states."""
        stages = []
        with torch.no_grad():
            for s in range(len(self.stages)):
                length = self.lengths[int(torch.argmax(self.betas[s]))]
                edges = []
                for k, alpha in enumerate(self.stage_alphas(s)[:length]):
                    sources = window_sources(k, self.window)
                    strength = self.edge_strengths(alpha).tolist()
                    best = sorted(range(len(sources)), key=lambda j: (-strength[j], j))[:2]
                    node = []
                    for j in sorted(best):
                        op = 1 + int(torch.argmax(alpha[j, 1:]))
                        node.append((STAGE_PRIMITIVES[op], sources[j]))
                    edges.append(node)
                stages.append(StageArch(length, edges, [length, length + 1]))
        return stages
