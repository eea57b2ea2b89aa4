"""MSG-DAS (Tan, Guo et al., arXiv 2107.04324): multi-subgraph search between DARTS and GDAS.

Per cell and edge, a Gumbel-TopK sampler perturbs the (shared normal/reduce) logits once,
``alpha + Gumbel``, and ranks the ops; the k-th ranked op goes to sub-graph k, so the K sub-graphs
are mutually exclusive single paths. Each sub-graph's op weight is the straight-through one-hot
``hard + hard * (soft - soft.detach())`` (exactly 1 forward, the gradient of ``softmax((alpha + g) / tau)``
backward, so every alpha of the edge receives gradient). The temperature anneals linearly from
``tau_max`` to ``tau_min``. Dropblock-Identity: ``torchvision.ops.drop_block2d`` on every
skip-connection (identity) branch, its rate decaying linearly to 0. Super-net guidance
distillation: each sub-graph also matches a teacher through ``T^2 * KL(teacher_T || student_T)``;
the teacher is the detached ensemble of the K sub-graphs (default) or the soft supernet evaluated
under ``no_grad`` (``teacher: supernet``), so no second autograd graph is kept. Optimisation is
bilevel as in GDAS (weights on one half of the training set, alphas with Adam on the other).

K (``--subgraphs``) is the memory/quality knob: K=1 is GDAS-like single-path search, K=|ops| visits
every op like DARTS; memory grows with K because the K sub-graphs share one backward pass.

The paper's exact constants are not published in code: ``tau_max=10``, ``tau_min=0.1``,
``dropblock_rate=0.1``, ``dropblock_size=3``, ``distill_weight=1``, ``distill_temperature=2``
are this implementation's defaults, all exposed in ``MsgDasSettings``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mgas_core.data import Batch, DatasetInfo
from mgas_core.latency.cost import add_latency_grads, latency_cost, latency_figures
from mgas_core.methods.protocol import MethodStyle, SearchMethod, accuracy, clip_and_step, cosine_lr, frozen, set_lr
from mgas_core.methods.registry import register_method
from mgas_core.nn.ops import Identity
from mgas_core.settings.run import SearchSettings
from mgas_core.settings.strict import SettingConflict, Strict
from mgas_core.space.architecture import Architecture
from mgas_core.space.topology import DARTS_PRIMITIVES
from mgas_core.supernet.builder import build_supernet
from mgas_core.supernet.shared_alphas import SharedAlphaModel


class MsgDasSettings(Strict):
    subgraphs: int = Field(2, ge=1, le=64)
    tau_max: float = Field(10.0, gt=0)
    tau_min: float = Field(0.1, gt=0)
    alpha_lr: float = Field(3e-4, gt=0)
    alpha_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.5, 0.999)
    alpha_weight_decay: float = Field(1e-3, ge=0)
    alpha_init_std: float = Field(1e-3, ge=0, description="alphas start at this times N(0, 1), as DARTS's")
    dropblock_rate: float = Field(0.1, ge=0, lt=1, description="initial DropBlock rate on the skip branch")
    dropblock_size: int = Field(3, ge=1, le=1024)
    distill_weight: float = Field(1.0, ge=0)
    distill_temperature: float = Field(2.0, gt=0)
    teacher: Literal["ensemble", "supernet"] = "ensemble"


class DropBlockIdentity(Identity):
    """The skip connection with DropBlock in training (``rate`` set by the method every epoch)."""

    def __init__(self, block_size: int) -> None:
        super().__init__()
        self.block_size = block_size
        self.rate = 0.0

    def forward(self, x: Tensor, x_relu: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
        if self.training and self.rate > 0:
            from torchvision.ops import drop_block2d  # imported on first use: torchvision takes ~1.5 s to load

            block = min(self.block_size, x.shape[-1], x.shape[-2])
            block -= 1 - block % 2  # DropBlock needs an odd block that fits the map
            x = drop_block2d(x, self.rate, block, training=True)
        return x if scale is None else x * scale


def gumbel_topk(logits: Tensor, k: int, tau: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Perturb ``logits [..., ops]`` once; return (top-k op indices [..., k], soft weights [..., ops])."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).to(logits.device)
    gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
    perturbed = logits + gumbel
    order = perturbed.detach().topk(k, dim=-1).indices
    soft = F.softmax(perturbed / tau, dim=-1)
    return order, soft


@register_method("msg_das")
class MsgDas(SearchMethod):
    primitives = DARTS_PRIMITIVES
    bilevel = True
    settings_model = MsgDasSettings
    presets = {"tiny": {"search.msg_das.alpha_lr": 0.03}}
    cli_flags = {"subgraphs": "sub-graphs K per step (memory/quality knob)"}
    style = MethodStyle("MSG-DAS", "#2ca02c", "^")
    takes_latency_cost = True
    result_fields = ("subgraphs",)

    @classmethod
    def check_settings(cls, settings: SearchSettings) -> None:
        cfg = settings.msg_das
        if not 1 <= cfg.subgraphs <= len(cls.primitives):
            raise SettingConflict("msg_das.subgraphs", f"subgraphs K={cfg.subgraphs} must be between 1 and the "
                                                       f"number of ops ({len(cls.primitives)})")
        if cfg.tau_min > cfg.tau_max:
            raise SettingConflict("msg_das.tau_min", f"tau_min={cfg.tau_min} must not exceed tau_max={cfg.tau_max}")

    def __init__(self, settings: SearchSettings, info: DatasetInfo, device: torch.device, seed: int) -> None:
        super().__init__(settings, info, device, seed)
        cfg = settings.msg_das
        self.cfg = cfg
        net = build_supernet(settings, self.primitives, info)
        skip = self.primitives.index("skip_connect")
        self.dropblocks: list[DropBlockIdentity] = []
        for cell in net.cells:
            for edge in cell.edges:
                if isinstance(edge.ops[skip], Identity):
                    edge.ops[skip] = DropBlockIdentity(cfg.dropblock_size)
                    self.dropblocks.append(edge.ops[skip])
        self.model = SharedAlphaModel(net, self.cfg.alpha_init_std).to(device)
        self.latency = latency_cost(settings, info, device, self.primitives)
        self.latency_ms: float | None = None
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), lr=settings.w_lr,
                                     momentum=settings.w_momentum, weight_decay=settings.w_weight_decay)
        self.a_opt = torch.optim.Adam(self.model.arch_parameters(), lr=cfg.alpha_lr, betas=cfg.alpha_betas,
                                      weight_decay=cfg.alpha_weight_decay)
        self.generator = torch.Generator().manual_seed(seed + 104729)
        self.tau = cfg.tau_max
        self.lr = settings.w_lr

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"weights": self.w_opt, "alphas": self.a_opt}

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        s, cfg = self.settings, self.cfg
        progress = epoch / max(1, s.epochs - 1)
        self.tau = cfg.tau_max - (cfg.tau_max - cfg.tau_min) * progress
        for block in self.dropblocks:
            block.rate = cfg.dropblock_rate * (1 - epoch / s.epochs)
        self.lr = cosine_lr(s.w_lr, s.w_lr_min, epoch, s.epochs)
        set_lr(self.w_opt, self.lr)

    # --- sub-graphs ---------------------------------------------------------------------------
    def sample_subgraphs(self) -> list[tuple[list[Tensor], list[list[list[int]]]]]:
        """K mutually exclusive single-path sub-graphs: per sub-graph, (cell weights, active ops)."""
        k = self.cfg.subgraphs
        logits = torch.stack([self.model.alpha_reduce if red else self.model.alpha_normal
                              for red in self.model.reductions])  # [cells, edges, ops]
        order, soft = gumbel_topk(logits, k, self.tau, self.generator)
        hard = F.one_hot(order, soft.shape[-1]).to(soft.dtype)  # [cells, edges, k, ops]
        straight = hard + hard * (soft.unsqueeze(2) - soft.unsqueeze(2).detach())  # x - x == 0 exactly
        order_list = order.tolist()
        out = []
        for j in range(k):
            weights = list(straight[:, :, j].unbind(0))
            active = [[[row[j]] for row in cell] for cell in order_list]
            out.append((weights, active))
        return out

    def subgraph_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean over sub-graphs of CE + distillation; also the ensemble logits."""
        cfg = self.cfg
        with self.autocast():
            logits = [self.model.net(x, w, a).float() for w, a in self.sample_subgraphs()]
        if cfg.teacher == "supernet":
            with torch.no_grad(), self.autocast():
                teacher = self.model(x).float()
        else:
            teacher = torch.stack(logits).mean(0).detach()
        t = cfg.distill_temperature
        target = F.log_softmax(teacher / t, dim=-1)
        loss = logits[0].new_zeros(())
        for z in logits:
            kl = F.kl_div(F.log_softmax(z / t, dim=-1), target, log_target=True, reduction="batchmean")
            loss = loss + F.cross_entropy(z, y) + cfg.distill_weight * t * t * kl
        return loss / len(logits), torch.stack(logits).mean(0).detach()

    def train_step(self, batch: Batch, arch_batch: Batch | None = None) -> dict[str, float]:
        x, y = self.to_device(batch)
        if arch_batch is not None:
            xa, ya = self.to_device(arch_batch)
            self.a_opt.zero_grad(set_to_none=True)
            with frozen(self.model.weight_parameters()):  # no weight gradient: none of its inputs kept
                loss_a, _ = self.subgraph_loss(xa, ya)
                grads = list(torch.autograd.grad(loss_a, self.model.arch_parameters(), materialize_grads=True))
            self.latency_ms = add_latency_grads(self.latency, self.model.arch_parameters(), grads)
            for p, g in zip(self.model.arch_parameters(), grads):
                p.grad = g
            self.a_opt.step()
        self.w_opt.zero_grad(set_to_none=True)
        with frozen(self.model.arch_parameters()):
            loss, ensemble = self.subgraph_loss(x, y)
            loss.backward()
        clip_and_step(self.w_opt, self.model.weight_parameters(), self.settings.grad_clip)
        return {"loss": float(loss.detach()), "acc": accuracy(ensemble, y)}

    def predict(self, x: Tensor) -> Tensor:
        """The soft supernet (softmax(alpha) mixture of every op), as DARTS evaluates it."""
        return self.model(x)

    def derive(self) -> Architecture:
        return self.model.derive(f"msg_das_seed{self.seed}")

    def log_metrics(self) -> dict[str, Any]:
        return {"tau": self.tau, "w_lr": self.lr, "dropblock_rate": self.dropblocks[0].rate if self.dropblocks else 0.0,
                **latency_figures(self.latency, self.latency_ms)}

    def summary(self) -> dict[str, Any]:
        return {"subgraphs": self.cfg.subgraphs, "teacher": self.cfg.teacher,
                **latency_figures(self.latency, self.latency_ms, self.derive())}

    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), **({"latency": self.latency.state_dict()} if self.latency
                                                           else {})}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        if self.latency and "latency" in state:
            self.latency.load_state_dict(state["latency"])

