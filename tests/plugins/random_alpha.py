"""A throwaway fifth search method, defined outside mgas_core: importing this module registers it.

Random-architecture baseline: a DARTS supernet whose op weights are fixed random alphas (never
trained); only the network weights learn, and the derived genotype is what those alphas rank
highest. It declares its own settings group, presets, a command-line flag, a plot style, a result
column and a short sweep axis, so a test can show that one module is all a new method needs (no
other file names it): tests/test_new_method.py puts it into a copy of the project and installs it
as an entry point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from mgas_core.data import Batch, DatasetInfo
from mgas_core.methods.protocol import MethodStyle, SearchMethod, accuracy, clip_and_step, frozen
from mgas_core.methods.registry import register_method
from mgas_core.settings.run import SearchSettings
from mgas_core.settings.strict import SettingConflict, Strict
from mgas_core.space.architecture import Architecture
from mgas_core.space.topology import DARTS_PRIMITIVES
from mgas_core.supernet.builder import build_supernet
from mgas_core.supernet.shared_alphas import SharedAlphaModel

NAME = "random_alpha"


class RandomAlphaSettings(Strict):
    alpha_std: float = Field(1.0, gt=0, le=100, description="spread of the fixed random op weights")


@register_method(NAME)
class RandomAlpha(SearchMethod):
    primitives = DARTS_PRIMITIVES
    settings_model = RandomAlphaSettings
    result_fields = ("alpha_std",)
    sweep_axes = ("alpha_std",)
    presets = {"tiny": {f"search.{NAME}.alpha_std": 2.0}}
    cli_flags = {"alpha_std": "spread of the fixed random op weights"}
    style = MethodStyle("Random alphas", "#17becf", "h")

    @classmethod
    def check_settings(cls, settings: SearchSettings) -> None:
        if settings.precision != "fp32":
            raise SettingConflict("precision", "random_alpha runs in fp32 only")

    def __init__(self, settings: SearchSettings, info: DatasetInfo, device: torch.device, seed: int) -> None:
        super().__init__(settings, info, device, seed)
        net = build_supernet(settings, self.primitives, info)
        self.model = SharedAlphaModel(net, settings.random_alpha.alpha_std).to(device)
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), lr=settings.w_lr,
                                     momentum=settings.w_momentum, weight_decay=settings.w_weight_decay)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"weights": self.w_opt}

    def train_step(self, batch: Batch, arch_batch: Batch | None = None) -> dict[str, float]:
        x, y = self.to_device(batch)
        self.w_opt.zero_grad(set_to_none=True)
        with frozen(self.model.arch_parameters()):
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
        clip_and_step(self.w_opt, self.model.weight_parameters(), self.settings.grad_clip)
        return {"loss": float(loss.detach()), "acc": accuracy(logits.detach(), y)}

    def derive(self) -> Architecture:
        return self.model.derive(f"{NAME}_seed{self.seed}")
