"""MG-DARTS's settings group (``search.mgas.*``) and its lambda controller's constants, with the
official code's values as defaults; ``docs/fidelity.md`` lists every deviation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from mgas_core.settings.run import GRANULARITIES
from mgas_core.settings.strict import Strict

OFFICIAL_MIN_FLOPS = 0.1
"""``--min_flops`` of the official ``train_search.py``: the final phase's end, in ``current_flops``
units (millions of weights)."""
OFFICIAL_SUPERNET_SIZE = 1.831168
"""``current_flops`` of the official 8-cell, C=16 CIFAR-10 supernet (M): 1.790208 M SepConv/DilConv
weights and 0.04096 M charged to skips (``units.stage_size``, pinned by a test)."""


class MgasLambdaControl(Strict):
    """The official MG-DARTS lambda controller, applied at every mask epoch.

    With ``n`` ops pruned at the mask epoch: ``n >= high`` -> lambda /= c0 and the increment resets
    to lambda0; ``n < low`` -> (unless lambda sits at its cap) increment *= c0^2, lambda += increment.
    The cap is lambda itself once the epoch's mean CE falls below ``cap_ratio`` x its mean
    lambda x size term (``stage_cap_ratio`` in the stages, ``final_cap_ratio`` in the final phase),
    else ``max_lambda``. ``high``/``low`` are the official counts for its 784-op supernet
    (8 cells x 14 edges x 7 ops); they scale with the supernet's number of ops.
    """

    lambda0: float = Field(1e-5, gt=0)
    c0: float = Field(2.0, gt=1)
    high: int = Field(48, ge=1, description="ops pruned at a mask epoch that halve lambda (784-op supernet)")
    low: int = Field(24, ge=1, description="fewer ops pruned than this grow lambda (784-op supernet)")
    reference_ops: int = Field(784, ge=1, description="op count the high/low counts were set for")
    stage_cap_ratio: float = Field(1.0, ge=0, description="0: lambda has no cap")
    final_cap_ratio: float = Field(0.5, ge=0, description="0: lambda has no cap")
    max_lambda: float = Field(100.0, gt=0)


class MgasSettings(Strict):
    """MG-DARTS as in its official code (lxy12357/MG_DARTS); docs/fidelity.md lists every deviation."""

    granularities: list[Literal["op", "filter", "weight"]] = ["op", "filter", "weight"]
    stages: int = Field(3, ge=1)
    warmup_epochs: int = Field(5, ge=0, description="weights-only epochs (lambda 0) opening every stage and the "
                                                    "final phase")
    mask_interval: int = Field(2, ge=1, description="stored masks are recomputed every k-th search epoch")
    stage_goal: float = Field(0.3, gt=0, lt=1, description="a stage ends once its size is below this fraction "
                                                           "of its size when it began")
    stage_goal_from_target: bool = Field(
        False, description="the stage goal follows the target: (target / supernet)^k, k chosen so that the official "
                           "target (--min_flops, 5.5 %) gives the official 0.3; a larger target ends every stage "
                           "sooner (docs/fidelity.md, presets)")
    stage_epochs: int | None = Field(None, ge=1, description="max search epochs of a stage (after warm-up); "
                                                             "default search.epochs")
    final_epochs: int | None = Field(None, ge=1, description="max search epochs of the final phase (after "
                                                             "warm-up); default search.epochs")
    regrow_fraction: float = Field(0.2, ge=0, le=1, description="ops regrown after stages 2.. as a fraction of "
                                                                "the ops pruned in the stage")
    min_width_fraction: float = Field(0.5, gt=0, le=1, description="filter removal keeps at least this fraction "
                                                                   "of every unit's initial width")
    w_lr: float = Field(0.01, gt=0, description="weight learning rate (constant)")
    alpha_lr: float = Field(1.0, gt=0)
    beta_lr: float = Field(1.0, gt=0)
    op_threshold_lr: float = Field(0.1, gt=0)
    filter_threshold_lr: float = Field(0.1, gt=0)
    weight_threshold_lr: float = Field(0.001, gt=0)
    arch_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of alpha, beta and the thresholds")
    control: MgasLambdaControl = MgasLambdaControl()
    augment: Literal["autoaugment", "standard"] = Field(
        "autoaugment", description="search-time CIFAR augmentation: crop+flip+AutoAugment (official) or crop+flip")
    cutout: int = Field(16, ge=0, description="search-time cutout length on CIFAR (0 disables it)")
    bn_reset: bool = Field(False, description="reset BN biases and running statistics of every alive op and "
                                              "pre-processing module at each filter removal, as the official "
                                              "prune_kernel's rebuild does (docs/fidelity.md, filter removal)")
    default_target_size: float = Field(
        OFFICIAL_MIN_FLOPS / OFFICIAL_SUPERNET_SIZE, gt=0, lt=1,
        description="without target_params: the final phase ends once the official size of the whole network "
                    "(current_flops: conv weights through the stored masks, plus skip charges) is below this "
                    "fraction of the supernet's; the default is the official --min_flops 0.1 on the official "
                    "8-cell C=16 CIFAR-10 supernet (whose size is 1.831168 M), about 5.5 %")

    @field_validator("granularities")
    @classmethod
    def _non_empty_unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("granularities must be a non-empty subset of op, filter, weight")
        if len(set(v)) != len(v):
            raise ValueError(f"granularities has duplicates: {v}")
        return [g for g in GRANULARITIES if g in v]


MGAS_PRESETS: dict[str, dict[str, Any]] = {
    # MG-DARTS scaled to digits (docs/fidelity.md, "presets"): 1 warm-up epoch per phase, a mask
    # update every epoch, 6-epoch stage and 12-epoch final budgets; digits has 12 steps an epoch
    # (CIFAR ~520), so lambda0 and the architecture learning rates (alpha, beta, thresholds) are
    # larger by what keeps their per-epoch motion; the official lambda cap; the stage goal follows
    # the target
    "tiny": {"search.mgas.stages": 3, "search.mgas.warmup_epochs": 1, "search.mgas.mask_interval": 1,
             "search.mgas.stage_epochs": 6, "search.mgas.final_epochs": 12, "search.mgas.w_lr": 0.05,
             "search.mgas.control.lambda0": 0.001, "search.mgas.alpha_lr": 6.0, "search.mgas.beta_lr": 6.0,
             "search.mgas.op_threshold_lr": 0.6, "search.mgas.filter_threshold_lr": 0.6,
             "search.mgas.weight_threshold_lr": 0.006, "search.mgas.stage_goal_from_target": True},
    # its smallest schedule: every phase 1 warm-up epoch, then 1-2 search epochs
    "smoke": {"search.mgas.warmup_epochs": 1, "search.mgas.mask_interval": 1, "search.mgas.stage_epochs": 1,
              "search.mgas.final_epochs": 2},
}
"""MGAS's values in the presets (see :attr:`~mgas_core.methods.protocol.SearchMethod.presets`)."""
