"""Learned latency predictors: an MLP over the architecture encoding (Xu et al., arXiv 2001.06392),
and the hybrid: the lookup table's sum times a learned correction.

Both regress the logarithm of the latency (relative errors weigh alike at every size) with a
two-hidden-layer MLP trained full-batch with Adam on standardised inputs. The ``mlp`` predictor
maps the encoding to ``log latency``; the ``hybrid`` maps the encoding and ``log`` of the table's
sum to ``log latency - log sum`` (the residual of the table). Everything needed to predict again
(weights, input statistics, the encoding space, the conditions) is in :meth:`state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mgas_core.latency.encoding import EncodingSpace
from mgas_core.latency.measure import LatencyConditions

HIDDEN = 256
EPOCHS = 1500
LR = 3e-3
WEIGHT_DECAY = 1e-4


def latency_mlp(inputs: int, hidden: int = HIDDEN) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


@dataclass
class LatencyPredictor:
    """A fitted predictor: ``kind`` ``mlp`` or ``hybrid`` (input: encoding + log table sum)."""

    kind: str
    space: EncodingSpace
    conditions: LatencyConditions
    net: nn.Sequential
    mean: Tensor
    std: Tensor
    target_mean: float
    target_std: float

    def _features(self, encodings: Tensor, table_ms: Tensor | None) -> Tensor:
        if self.kind == "hybrid":
            if table_ms is None:
                raise ValueError("the hybrid predictor needs the lookup table's sums")
            encodings = torch.cat([encodings, table_ms.log().unsqueeze(-1)], dim=-1)
        return (encodings - self.mean) / self.std

    def predict_log(self, encodings: Tensor, table_ms: Tensor | None = None) -> Tensor:
        """``log`` of the predicted latency (ms) of each row; differentiable in ``encodings``."""
        out = self.net(self._features(encodings, table_ms)).squeeze(-1) * self.target_std + self.target_mean
        return out + table_ms.log() if self.kind == "hybrid" and table_ms is not None else out

    def predict_ms(self, encodings: Tensor, table_ms: Tensor | None = None) -> Tensor:
        return self.predict_log(encodings, table_ms).exp()

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "space": self.space.as_dict(), "conditions": self.conditions.as_dict(),
                "hidden": self.net[0].out_features, "weights": self.net.state_dict(), "mean": self.mean,
                "std": self.std, "target_mean": self.target_mean, "target_std": self.target_std}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LatencyPredictor:
        mean = state["mean"]
        net = latency_mlp(mean.numel(), int(state["hidden"]))
        net.load_state_dict(state["weights"])
        net.eval()
        return cls(str(state["kind"]), EncodingSpace.from_dict(state["space"]),
                   LatencyConditions.from_dict(state["conditions"]), net, mean, state["std"],
                   float(state["target_mean"]), float(state["target_std"]))


def fit_predictor(kind: str, space: EncodingSpace, conditions: LatencyConditions, encodings: Tensor,
                  latency_ms: Tensor, table_ms: Tensor | None = None, seed: int = 0,
                  epochs: int = EPOCHS) -> LatencyPredictor:
    """Fit ``kind`` (``mlp`` or ``hybrid``) to measured latencies, reproducibly from ``seed``."""
    if kind not in ("mlp", "hybrid"):
        raise ValueError(f"kind must be mlp or hybrid, got {kind!r}")
    x = encodings.float()
    target = latency_ms.double().log().float()
    if kind == "hybrid":
        assert table_ms is not None
        x = torch.cat([x, table_ms.float().log().unsqueeze(-1)], dim=-1)
        target = target - table_ms.float().log()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    t_mean, t_std = float(target.mean()), max(float(target.std()), 1e-6)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        net = latency_mlp(x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xs, ys = (x - mean) / std, (target - t_mean) / t_std
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(net(xs).squeeze(-1), ys)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return LatencyPredictor(kind, space, conditions, net, mean, std, t_mean, t_std)


def relative_errors(predicted_ms: Tensor, measured_ms: Tensor) -> Tensor:
    """``|predicted - measured| / measured`` of each row."""
    return (predicted_ms - measured_ms).abs() / measured_ms


def error_summary(errors: Tensor) -> dict[str, float]:
    """Median and 90th percentile of relative errors."""
    return {"median_rel_error": round(float(errors.median()), 4),
            "p90_rel_error": round(float(torch.quantile(errors.double(), 0.9)), 4)}
