"""What a running sweep shows: counts, each running trial's epoch, and an ETA from measured epochs.

:class:`SweepStatus` is the bookkeeping (pure, clock passed in, unit-tested); the Tune callback
in :mod:`orchestrator.callbacks` feeds it and decides where its text goes: one live line on a
terminal's stderr, a line per finished trial otherwise, every epoch in the experiment's
``progress.log``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mgas_core.methods.registry import get_method, validate_settings


def search_plan(trial: dict[str, Any]) -> tuple[int, str]:
    """The most search epochs the trial's method can run with its settings, and how they split
    (:meth:`~mgas_core.methods.protocol.SearchMethod.epoch_plan`: MGAS's stages and phases)."""
    settings = validate_settings(trial["settings"])
    return get_method(settings.search.method, trial.get("method_module")).epoch_plan(settings.search)


def planned_epochs(trial: dict[str, Any]) -> int:
    """The search + retrain epochs a trial's settings plan (the search's most; a search that stops
    early, or retrains several architectures, revises it while running)."""
    return search_plan(trial)[0] + int(trial["settings"]["retrain"]["epochs"])


@dataclass
class TrialProgress:
    planned: int
    search_budget: int
    retrain_epochs: int = 0
    retrains: int = 1  # architectures to retrain (GOLD-NAS: its snapshots), known once retraining starts
    retrain_index: int = 0
    phase: str = "queued"
    epoch: int = 0  # epochs done in the current phase
    phase_total: int = 0
    done_epochs: int = 0  # over both phases
    last_event: float | None = None


    def phase_text(self) -> str:
        """``search 3/50``, ``retrain 2/600``, ``retrain 2/600 (2 of 5)`` for one of several."""
        text = f"{self.phase} {self.epoch}/{self.phase_total}"
        if self.phase == "retrain" and self.retrains > 1:
            text += f" ({self.retrain_index + 1} of {self.retrains})"
        return text


@dataclass
class SweepStatus:
    """Counts and ETA of one sweep. ``epoch_seconds`` are the measured durations of every epoch
    seen so far (time between two reports of a trial); the ETA is the epochs left over all
    unfinished trials x their mean, divided by the number of trials that ran at once."""

    trials: dict[str, TrialProgress]
    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)
    epoch_seconds: list[float] = field(default_factory=list)
    most_parallel: int = 0

    @classmethod
    def of(cls, trials: list[dict[str, Any]]) -> SweepStatus:
        return cls({t["trial_id"]: TrialProgress(planned_epochs(t), search_plan(t)[0],
                                                 int(t["settings"]["retrain"]["epochs"])) for t in trials})

    def _get(self, tid: str) -> TrialProgress:
        return self.trials.setdefault(tid, TrialProgress(planned=1, search_budget=1, retrain_epochs=1))

    def start(self, tid: str, now: float) -> None:
        progress = self._get(tid)
        progress.last_event = now
        self.running.add(tid)
        self.most_parallel = max(self.most_parallel, len(self.running))

    def epoch(self, tid: str, result: dict[str, Any], now: float) -> None:
        """A per-epoch report (``phase``, 0-based ``epoch``, optional ``max_epochs``)."""
        progress = self._get(tid)
        if tid not in self.running:
            self.start(tid, now)
        if progress.last_event is not None:
            self.epoch_seconds.append(max(0.0, now - progress.last_event))
        progress.last_event = now
        phase = str(result.get("phase", "search"))
        progress.epoch = int(result.get("epoch", 0)) + 1
        if phase == "search":
            budget = int(result.get("max_epochs") or progress.search_budget)
            progress.planned += budget - progress.search_budget
            progress.search_budget = budget
            progress.phase_total = budget
            progress.done_epochs = progress.epoch
        else:  # a search may yield several architectures to retrain (GOLD-NAS's snapshots)
            retrains, index = int(result.get("retrains") or 1), int(result.get("retrain_index") or 0)
            if retrains != progress.retrains:
                progress.planned = progress.search_budget + retrains * progress.retrain_epochs
                progress.retrains = retrains
            progress.retrain_index = index
            progress.phase_total = progress.retrain_epochs
            progress.done_epochs = progress.search_budget + index * progress.retrain_epochs + progress.epoch
        progress.phase = phase

    def finish(self, tid: str, ok: bool) -> None:
        self.running.discard(tid)
        if ok:
            self.done.add(tid)
            self.failed.discard(tid)
        else:
            self.failed.add(tid)
            self.done.discard(tid)

    def epochs_left(self) -> int:
        return sum(max(0, p.planned - p.done_epochs) for tid, p in self.trials.items()
                   if tid not in self.done and tid not in self.failed)

    def eta_s(self) -> float | None:
        """Seconds until every trial has finished, or None before any epoch was timed."""
        if not self.epoch_seconds:
            return None
        mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
        return self.epochs_left() * mean / max(1, self.most_parallel)

    def counts(self) -> str:
        return f"[{len(self.done)}/{len(self.trials)} done | {len(self.running)} running | {len(self.failed)} failed]"

    def line(self) -> str:
        """The live status: counts, each running trial's phase and epoch, the ETA."""
        parts = [f"{tid} {self.trials[tid].phase_text()}" for tid in sorted(self.running)]
        eta = self.eta_s()
        tail = f" | ETA {format_duration(eta)}" if eta is not None else ""
        return f"{self.counts()} {', '.join(parts)}{tail}"


def format_duration(seconds: float) -> str:
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
