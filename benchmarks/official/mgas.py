"""The official MG-DARTS search step of one phase, for ``benchmarks.official.step --kind mgas``.

Which phase is ``--stages S --stage k``, as ``benchmarks.supernet --method mgas`` reads them too:

- ``--stages 3 --stage k`` (k = 1, 2, 3): stage ``k`` of the official three-stage search, as
  ``main()`` of ``cifar_search/train_search.py`` runs its search epochs: ``train_local(...,
  flops_lambda, stage_index=k, add_sparsity=False, only_train=False, freeze_mask=True)``, the
  official function itself. Its forward ``Network(input, k)`` runs cells ``0 .. L//3 - 1``
  (stage 1), ``0 .. 2L//3 - 1`` (stage 2) or all (stage 3) and classifies with
  ``auxiliary_head1`` (stage 1), ``auxiliary_head2`` (stage 2) or the global pool and classifier
  (stage 3); the loss is the cross-entropy of that head plus ``flops_lambda`` times the size term
  of the stage's own cells and the threshold term of every cell run. The four SGD optimisers are
  built as ``main()`` builds them for stage ``k``: its stage lists are one list each (stage 2's is
  stage 1's, appended to), so every stage's optimisers hold every cell's alphas, filter
  parameters and thresholds and every module weight (stem, cells, both auxiliary heads,
  classifier); what steps is what gets a gradient: the cells run and the stage's head. Learning
  rates: ``learning_rate_alpha[k-1]``, ``learning_rate_omega[k-1]``,
  ``learning_rate_alpha_kernel[0]`` (the official code uses index 0 for every stage), thresholds
  0.1, weight thresholds 0.001.
- ``--stages 1`` (``--stage 1``) or ``--stages 3 --stage 4``: the final, whole-network phase:
  ``train(..., only_train=False, freeze_mask=True)`` over all cells and the classifier, the size
  term of every cell, optimisers as ``main()`` builds them after the stages (module weights:
  ``model.parameters()``; learning rates index 3).

Either way the ``Network`` is fresh (all masks on, nothing pruned), ``drop_path_prob = 0``,
``_reinitialize_threshold()`` is called after the optimisers are built (as in ``main()``), the
step runs every loss term (``flops_lambda = --lam > 0``) and stores no mask (``freeze_mask=True``).
The official auxiliary heads are built for CIFAR's 32x32 input (their pool and conv sizes are
fixed), so stages 1 and 2 need ``--resolution 32``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import torch
from torch import nn

OFFICIAL_STAGES = 3  # the official search: stages cut at L // 3 and 2L // 3, then the final phase
HEAD_RESOLUTION = 32  # the input size the official auxiliary heads are built for
HEADS = {1: "auxiliary_head1 (AuxiliaryHeadCIFAR1)", 2: "auxiliary_head2 (AuxiliaryHeadCIFAR2)",
         3: "global_pooling + classifier", 0: "global_pooling + classifier"}


def official_stage(stages: int, stage: int) -> int:
    """The official ``stage_index`` of our stage ``stage`` of an ``stages``-stage search: 1..3,
    or 0 for the final, whole-network phase (``train()``)."""
    return stage if stages == OFFICIAL_STAGES and stage <= OFFICIAL_STAGES else 0


def stage_problem(stages: int, stage: int, layers: int | None, resolution: int,
                  flag: str = "--stage") -> str | None:
    """Why the official code has no step for stage ``stage`` of ``stages`` at this shape (one
    line; ``flag`` names the stage's option), or None."""
    if stages not in (1, OFFICIAL_STAGES):
        return (f"the official MG-DARTS search has {OFFICIAL_STAGES} stages (cut at L//3 and 2L//3) and a final "
                f"phase: use --stages 3 with {flag} 1, 2 or 3, or --stages 1 (the whole network)")
    if not 1 <= stage <= stages + 1:
        return f"{flag} must be between 1 and {stages + 1} (the final phase) for --stages {stages}"
    k = official_stage(stages, stage)
    if k and layers is not None and layers < OFFICIAL_STAGES:
        return f"the official three-stage split needs at least 3 cells, got --layers {layers}"
    if k in (1, 2) and resolution != HEAD_RESOLUTION:
        return (f"the official stage-{k} head (AuxiliaryHeadCIFAR{k}) is built for {HEAD_RESOLUTION}x"
                f"{HEAD_RESOLUTION} input: use --resolution {HEAD_RESOLUTION}")
    return None


def stage_groups(model: Any, k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                list[dict[str, Any]], Iterable[Any]]:
    """The parameter groups ``main()`` gives stage ``k`` (0: the final phase), in its order:
    alphas, filter parameters, thresholds, module weights."""
    arch: list[dict[str, Any]] = []
    kernel: list[dict[str, Any]] = []
    thresholds: list[dict[str, Any]] = []
    omega: list[dict[str, Any]] = [{"params": model.stem.parameters()}]
    heads = {model.stage1_end: model.auxiliary_head1, model.stage2_end: model.auxiliary_head2}
    for i in range(model._layers):
        arch.append({"params": model.arch_parameters()[i]})
        omega.append({"params": model.cells[i].parameters()})
        thresholds += [{"params": model._thresholds[i][0][0][1]}, {"params": model._thresholds[i][0][1][1]}]
        kernel += [{"params": model._kernel_parameters[i][0][0][0]}, {"params": model._kernel_parameters[i][0][1][0]}]
        for j, mixed in enumerate(model.cells[i]._ops):
            for o in range(len(mixed._ops)):
                t = model._thresholds[i][j + 1][o]
                thresholds += [{"params": t[0]}, {"params": t[1]}, {"params": t[2], "lr": 0.001}]
                kernel += [{"params": p} for p in model._kernel_parameters[i][j + 1][o]]
        if i in heads:
            omega.append({"params": heads[i].parameters()})
    omega += [{"params": model.global_pooling.parameters()}, {"params": model.classifier.parameters()}]
    return arch, kernel, thresholds, (omega if k else model.parameters())


DEFINITIONS = {
    "train": "the official train() / train_local() called on the batches",
    "explicit": "the step composed from the official model and optimisers, train() not called: the network's "
                "forward (with the stage index), cross-entropy of the phase's head + flops_lambda x (size term + "
                "threshold term), backward, clip_grad_norm_(grad_clip), the four SGD steps",
}
"""The two definitions of an official MGAS step (``--definition``): they must time the same work."""


def mgas_setup(mods: dict[str, ModuleType],
               args: argparse.Namespace) -> tuple[Callable[[Iterable[Any]], None], dict[str, Any]]:
    """Build the official network and optimisers of the phase; the step runner and what it used."""
    ts = mods["train_search"]
    hp = ts.args
    k = official_stage(args.stages, args.stage)
    model = ts.Network(args.channels, 10, args.layers, hp.eta_min, hp.reg_flops, hp.mu).cuda()
    arch, kernel, thresholds, omega = stage_groups(model, k)
    lr = k - 1 if k else 3  # main(): index k - 1 in the stages, 3 in the final phase
    kernel_lr = hp.learning_rate_alpha_kernel[0 if k else 3]
    sgd = torch.optim.SGD
    opt_alpha = sgd(arch, hp.learning_rate_alpha[lr], momentum=hp.momentum, weight_decay=hp.weight_decay_alpha)
    opt_kernel = sgd(kernel, kernel_lr, momentum=hp.momentum, weight_decay=hp.weight_decay_alpha)
    opt_omega = sgd(omega, hp.learning_rate_omega[lr], momentum=hp.momentum, weight_decay=hp.weight_decay)
    opt_thre = sgd(thresholds, 0.1, momentum=hp.momentum, weight_decay=hp.weight_decay_alpha)
    model._reinitialize_threshold()
    model.drop_path_prob = 0
    criterion = nn.CrossEntropyLoss().cuda()
    optimizers = (opt_alpha, opt_kernel, opt_omega, opt_thre)

    def run(queue: Iterable[Any]) -> None:
        if k:
            ts.train_local(queue, model, criterion, *optimizers, args.lam, k, False, only_train=False,
                           freeze_mask=True)
        else:
            ts.train(queue, model, criterion, *optimizers, args.lam, only_train=False, freeze_mask=True)

    def run_explicit(queue: Iterable[Any]) -> None:  # the same step, composed here (DEFINITIONS)
        model.train()
        for inputs, target in queue:
            outputs = model(inputs, k, update_mask=False, gradual_discretization=False)
            logits, size_term, threshold_term = outputs[(k or 3) - 1], outputs[-2], outputs[-1]
            ce = criterion(logits, target)
            for opt in optimizers:
                opt.zero_grad()
            loss = ce + args.lam * (size_term + threshold_term)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
            for opt in optimizers:
                opt.step()
                opt.zero_grad()

    cells = {1: model.stage1_end + 1, 2: model.stage2_end + 1}.get(k, model._layers)
    definition = getattr(args, "definition", "train")
    used = {"definition": definition, "phase": f"stage {k} of {OFFICIAL_STAGES}" if k else "final (whole network)",
            "function": (f"train_local(stage_index={k})" if k else "train()") if definition == "train"
            else f"Network.forward(stage_index={k}), the loss and the steps composed here", "head": HEADS[k],
            "omega_lr": hp.learning_rate_omega[lr], "alpha_lr": hp.learning_rate_alpha[lr],
            "kernel_lr": kernel_lr, "threshold_lr": 0.1, "weight_threshold_lr": 0.001,
            "momentum": hp.momentum, "weight_decay": hp.weight_decay, "grad_clip": hp.grad_clip,
            "flops_lambda": args.lam, "granularities": "op,filter,weight", "cells_run": cells}
    return (run if definition == "train" else run_explicit), used
