"""DARTS (Liu, Simonyan, Yang; ICLR 2019): softmax-relaxed mixed edges, bilevel optimisation.

One alpha matrix (edges x 8 ops) for all normal cells and one for all reduction cells, init
``1e-3 * N(0, 1)``. Weights: SGD with cosine lr on the first half of the training set; alphas:
Adam on the second half. First order steps alpha on the held-out batch with the current weights.
Second order uses the unrolled weights ``w' = w - xi * (momentum + dL_train/dw + wd * w)`` with
``xi`` the current weight lr, and the Hessian-vector term by central finite differences with
``eps = 0.01 / ||dL_val/dw'||``. Virtual passes never touch the real BN running statistics.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torch.func import functional_call

from mgas_core.data import Batch, DatasetInfo
from mgas_core.latency.cost import add_latency_grads, latency_cost, latency_figures
from mgas_core.methods.protocol import MethodStyle, SearchMethod, cosine_lr, frozen, set_lr
from mgas_core.methods.registry import register_method
from mgas_core.settings.run import SearchSettings
from mgas_core.settings.strict import Strict
from mgas_core.space.architecture import Architecture
from mgas_core.space.topology import DARTS_PRIMITIVES
from mgas_core.supernet.builder import build_supernet
from mgas_core.supernet.shared_alphas import SharedAlphaModel


class DartsSettings(Strict):
    order: Literal[1, 2] = 2
    alpha_lr: float = Field(3e-4, gt=0)
    alpha_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.5, 0.999)
    alpha_weight_decay: float = Field(1e-3, ge=0)
    alpha_init_std: float = Field(1e-3, ge=0)
    unrolled_eps: float = Field(0.01, gt=0)


@register_method("darts")
class Darts(SearchMethod):
    primitives = DARTS_PRIMITIVES
    bilevel = True
    settings_model = DartsSettings
    presets = {"tiny": {"search.darts.order": 1, "search.darts.alpha_lr": 3e-3},
               "smoke": {"search.darts.order": 1}}
    cli_flags = {"order": "first or second order"}
    style = MethodStyle("DARTS", "#1f77b4", "o")
    benchmark_overrides = {"search.darts.order": 1}  # the official comparison's and the paper's cost figure's step
    reference_impl = True
    takes_latency_cost = True

    def __init__(self, settings: SearchSettings, info: DatasetInfo, device: torch.device, seed: int) -> None:
        super().__init__(settings, info, device, seed)
        cfg = settings.darts
        net = build_supernet(settings, self.primitives, info)
        self.model = SharedAlphaModel(net, cfg.alpha_init_std).to(device)
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), lr=settings.w_lr,
                                     momentum=settings.w_momentum, weight_decay=settings.w_weight_decay)
        self.a_opt = torch.optim.Adam(self.model.arch_parameters(), lr=cfg.alpha_lr, betas=cfg.alpha_betas,
                                      weight_decay=cfg.alpha_weight_decay)
        self.latency = latency_cost(settings, info, device, self.primitives)
        self.latency_ms: float | None = None

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"weights": self.w_opt, "alphas": self.a_opt}

    @property
    def lr(self) -> float:
        return self.w_opt.param_groups[0]["lr"]

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        s = self.settings
        set_lr(self.w_opt, cosine_lr(s.w_lr, s.w_lr_min, epoch, s.epochs))

    def train_step(self, batch: Batch, arch_batch: Batch | None = None) -> dict[str, float]:
        x, y = self.to_device(batch)
        if arch_batch is not None:
            xa, ya = self.to_device(arch_batch)
            self.a_opt.zero_grad(set_to_none=True)
            if self.settings.darts.order == 2:
                grads = self.unrolled_alpha_grads(x, y, xa, ya)
            else:
                # weights frozen: the graph keeps no conv input for a weight gradient nobody asks for
                with frozen(self.model.weight_parameters()), self.autocast():
                    loss_a = F.cross_entropy(self.model(xa), ya)
                    grads = list(torch.autograd.grad(loss_a, self.model.arch_parameters(), materialize_grads=True))
            self.latency_ms = add_latency_grads(self.latency, self.model.arch_parameters(), grads)
            for p, g in zip(self.model.arch_parameters(), grads):
                p.grad = g
            self.a_opt.step()
        return self.weight_step(self.w_opt, x, y)

    # --- second order ---------------------------------------------------------------------------
    def _functional_loss(
        self, params: dict[str, Tensor], alphas: tuple[Tensor, Tensor], x: Tensor, y: Tensor
    ) -> Tensor:
        net = self.model.net
        buffers = {k: v.clone() for k, v in net.named_buffers()}  # virtual passes leave BN stats alone
        with self.autocast():
            logits = functional_call(net, {**params, **buffers},
                                     (x, self.model.cell_weights(alphas), self.model.active))
            return F.cross_entropy(logits, y)

    def unrolled_alpha_grads(self, x: Tensor, y: Tensor, xa: Tensor, ya: Tensor) -> list[Tensor]:
        """d L_val(w'(alpha), alpha) / d alpha with the finite-difference Hessian-vector product."""
        net = self.model.net
        names = [n for n, _ in net.named_parameters()]
        weights = [p for _, p in net.named_parameters()]
        alphas = (self.model.alpha_normal, self.model.alpha_reduce)
        xi = self.lr
        momentum, wd = self.settings.w_momentum, self.settings.w_weight_decay
        detached = (alphas[0].detach(), alphas[1].detach())
        loss = self._functional_loss(dict(zip(names, weights)), detached, x, y)
        grads = torch.autograd.grad(loss, weights)
        unrolled = []
        for p, g in zip(weights, grads):
            buf = self.w_opt.state.get(p, {}).get("momentum_buffer")
            moment = buf * momentum if buf is not None else torch.zeros_like(p)
            unrolled.append((p - xi * (moment + g + wd * p)).detach().requires_grad_(True))
        loss_val = self._functional_loss(dict(zip(names, unrolled)), alphas, xa, ya)
        out = torch.autograd.grad(loss_val, [*alphas, *unrolled], materialize_grads=True)
        d_alpha, vector = list(out[:2]), out[2:]
        hvp = self.hessian_vector_product(names, weights, vector, x, y)
        return [da - xi * h for da, h in zip(d_alpha, hvp)]

    def hessian_vector_product(
        self, names: list[str], weights: list[Tensor], vector: tuple[Tensor, ...], x: Tensor, y: Tensor
    ) -> list[Tensor]:
        norm = torch.cat([v.reshape(-1) for v in vector]).norm()
        eps = self.settings.darts.unrolled_eps / norm
        alphas = (self.model.alpha_normal, self.model.alpha_reduce)
        grads = []
        for sign in (1.0, -1.0):
            shifted = {n: (w + sign * eps * v).detach() for n, w, v in zip(names, weights, vector)}
            loss = self._functional_loss(shifted, alphas, x, y)
            grads.append(torch.autograd.grad(loss, alphas, materialize_grads=True))
        return [(gp - gn) / (2 * eps) for gp, gn in zip(*grads)]

    # --- results --------------------------------------------------------------------------------
    def derive(self) -> Architecture:
        return self.model.derive(f"darts_seed{self.seed}")

    def log_metrics(self) -> dict[str, Any]:
        return {"w_lr": self.lr, **latency_figures(self.latency, self.latency_ms)}

    def summary(self) -> dict[str, Any]:
        return latency_figures(self.latency, self.latency_ms, self.derive())

    def extra_state(self) -> dict[str, Any]:
        return {"latency": self.latency.state_dict()} if self.latency else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.latency and "latency" in state:
            self.latency.load_state_dict(state["latency"])
