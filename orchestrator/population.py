"""The network-level multi-objective search: a population of candidate networks on Ray Tune.

An experiment with a ``population:`` section runs in two stages:

1. **the block stage** is the experiment's ordinary sweep (``sweep``/``include``; by default
   GOLD-NAS, whose complexity term yields a series of cells of falling size): searches of this
   project, each retrained and written as rows as usual;
2. **the network stage** builds the block library from those rows (every retrained architecture's
   normal and reduction cell, widths dropped, duplicates once: ``population/blocks.json``) and runs
   a Tune sweep whose trials are candidate networks (``search.method: network_mo``) proposed by
   Optuna's NSGA-II sampler through Tune's Optuna integration (``OptunaSearch`` with two metrics
   and two modes): the genome is the block of each stage, the cells of each stage and the width;
   each candidate trains on the population's short budget (``population.settings``) and reports its
   validation accuracy (maximised) and its nonzero parameters or measured latency (minimised).
   ``population.size x population.generations`` candidates in all.

The Optuna study lives in ``population/optuna.journal`` (Optuna's journal file: JSON lines, no
pickle), so ``mgas run --resume`` continues the same study: finished candidates are not run again,
a candidate that was running when the driver died runs again under its own trial id, from its
newest checkpoint. The non-dominated set of the finished candidates is marked in their rows
(``non_dominated``) by :func:`orchestrator.front.mark_front`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mgas_common.errors import UserInputError
from mgas_core.settings.strict import MAX_CHANNELS, MAX_LAYERS, MAX_SEED, Strict, field_error

POPULATION_DIR = "population"
STUDY_FILE = "optuna.journal"
BLOCKS_FILE = "blocks.json"
STAGES = 3
OBJECTIVE_METRICS = {"params": "nonzero_params_m", "latency": "latency_ms"}
ACCURACY_METRIC = "val_acc"
CANDIDATE_METHOD = "network_mo"


class PopulationSpec(Strict):
    """``population:`` of an experiment: the network stage's evolutionary search."""

    size: int = Field(8, ge=2, le=1000, description="candidates per generation (NSGA-II's population)")
    generations: int = Field(2, ge=1, le=1000)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="the sampler's seed")
    objective: Literal["params", "latency"] = Field(
        "params", description="minimised beside validation accuracy: nonzero parameters, or the latency "
                              "measured on the trial's device (retrain.latency_runs > 0)")
    cells_per_stage: tuple[int, int] = Field((1, 3), description="fewest and most normal cells of a stage")
    widths: list[int] = Field([8, 12, 16], min_length=1, max_length=64, description="channels a candidate may have")
    mutation_prob: float | None = Field(None, ge=0, le=1, description="NSGA-II's mutation probability "
                                                                      "(None: Optuna's default)")
    crossover_prob: float = Field(0.9, ge=0, le=1, description="NSGA-II's crossover probability")
    settings: dict[str, Any] = Field({}, description="dotted settings of every candidate (the short training "
                                                     "budget), over base")

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        for w in v:
            if not 2 <= w <= MAX_CHANNELS or w % 2:
                raise ValueError(f"width {w}: an even number of channels from 2 to {MAX_CHANNELS} "
                                 "(FactorizedReduce halves them)")
        return sorted(set(v))

    @model_validator(mode="after")
    def _bounds(self) -> PopulationSpec:
        low, high = self.cells_per_stage
        if not 1 <= low <= high <= MAX_LAYERS:
            raise field_error("cells_per_stage", f"[{low}, {high}]: give [fewest, most] with 1 <= fewest <= most "
                                                 f"<= {MAX_LAYERS}", list(self.cells_per_stage), "PopulationSpec")
        return self

    @property
    def total(self) -> int:
        return self.size * self.generations

    @property
    def metrics(self) -> list[str]:
        return [ACCURACY_METRIC, OBJECTIVE_METRICS[self.objective]]


def check_population(population: PopulationSpec, base: dict[str, Any], swept_methods: list[Any], where: str) -> None:
    """What the spec's other parts must allow a population (before Ray starts, one line each)."""
    runs = population.settings.get("retrain.latency_runs", base.get("retrain.latency_runs"))
    if population.objective == "latency" and runs == 0:
        raise UserInputError(f"{where}: population.objective latency needs the candidates' measured latency, but "
                             "retrain.latency_runs is 0; allowed: retrain.latency_runs >= 1, or objective params")
    if CANDIDATE_METHOD in swept_methods or base.get("search.method") == CANDIDATE_METHOD:
        raise UserInputError(f"{where}: method {CANDIDATE_METHOD} is the population's candidates; the sweep is the "
                             "block stage: a searching method (e.g. gold_nas, darts, mgas)")


# --- the block library -------------------------------------------------------------------------


def _cells_by_stage(arch: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(normal, reduction) cell pairs of one architecture JSON: a genotype's pair; a per-cell
    architecture's first normal cell of each stage with the reduction cell after it (the last
    stage with the last reduction cell). Widths and pre-processing widths are dropped."""
    def plain(cell: dict[str, Any]) -> dict[str, Any]:
        return {"ops": [{k: o[k] for k in ("op", "input", "node")} for o in cell["ops"]],
                "concat": list(cell["concat"])}

    if "cells" not in arch:
        return [(plain(arch["normal"]), plain(arch["reduce"]))]
    from mgas_core.space.architecture import architecture_from_json
    from mgas_core.space.stages import normal_cells_by_stage

    parsed = architecture_from_json({**arch, "masks": None} if "masks" in arch else arch)
    cells = arch["cells"]
    reductions = list(parsed.reductions(len(cells)))
    if not reductions:
        return []
    return [(plain(cells[normals[0]]), plain(cells[reductions[min(s, len(reductions) - 1)]]))
            for s, normals in enumerate(normal_cells_by_stage(reductions, len(cells))) if normals]


def block_library(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The blocks of the block stage's ok rows (every retrained architecture, GOLD-NAS's snapshots
    included), as genotype architecture JSONs, each once, in a stable order."""
    blocks: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (str(r.get("trial_id")), r.get("snapshot_index") or 0)):
        if row.get("status") != "ok" or not row.get("arch_json") or row.get("method") == CANDIDATE_METHOD:
            continue
        arch = json.loads(row["arch_json"])
        source = f"{row['trial_id']}" + (f"#{row['snapshot_index']}" if row.get("snapshot_index") is not None else "")
        for normal, reduce in _cells_by_stage(arch):
            nodes = 1 + max(o["node"] for o in [*normal["ops"], *reduce["ops"]])
            key = json.dumps([normal, reduce], sort_keys=True)
            blocks.setdefault(key, {"format": "mgas-architecture", "version": 1, "name": f"block{len(blocks)}",
                                    "nodes": nodes, "normal": normal, "reduce": reduce,
                                    "meta": {"source": source}})
    return list(blocks.values())


# --- the candidates ---------------------------------------------------------------------------


def candidate_id(number: int) -> str:
    return f"{CANDIDATE_METHOD}_c{number:04d}"


class CandidateSpace:
    """Optuna's define-by-run space of a candidate: samples the genome, returns the trial entry
    (settings built and validated as every trial's are) under ``trial``. A candidate that a resume
    runs again keeps its trial id (``resumes`` user attribute) and continues from its checkpoint."""

    def __init__(self, template: dict[str, Any], population: PopulationSpec, blocks: list[dict[str, Any]],
                 settings_for: Callable[[dict[str, Any]], dict[str, Any]],
                 resume_from: dict[str, dict[str, Any]]) -> None:
        self.template = template
        self.population = population
        self.blocks = blocks
        self.settings_for = settings_for  # dotted overrides -> the trial's validated settings (orchestrator.spec)
        self.resume_from = resume_from  # trial id -> what its entry gains to continue from its checkpoint

    def __call__(self, trial: Any) -> dict[str, Any]:
        low, high = self.population.cells_per_stage
        stage_blocks = [trial.suggest_categorical(f"stage{s + 1}_block", list(range(len(self.blocks))))
                        for s in range(STAGES)]
        stage_cells = [trial.suggest_int(f"stage{s + 1}_cells", low, high) for s in range(STAGES)]
        width = trial.suggest_categorical("width", list(self.population.widths))
        number = int(trial.user_attrs.get("resumes", trial.number))
        genome = {"stage_blocks": stage_blocks, "stage_cells": stage_cells, "width": width}
        settings = self.settings_for({
            **self.population.settings, "method": CANDIDATE_METHOD, "search.network_mo.blocks": self.blocks,
            "search.network_mo.stage_blocks": stage_blocks, "search.network_mo.stage_cells": stage_cells,
            "retrain.channels": width, "retrain.target_params": None})
        entry = {**self.template, "trial_id": candidate_id(number),
                 "axes": {"method": CANDIDATE_METHOD, **genome, "objective": self.population.metrics[1]},
                 "settings": settings, "population": {"candidate": number, "generation": _generation(trial)}}
        entry.update(self.resume_from.get(entry["trial_id"], {}))
        return {"trial": entry}


def _generation(trial: Any) -> int | None:
    """The NSGA-II generation Optuna's sampler gave the trial (None for another sampler)."""
    study = trial.study
    sampler = study.sampler
    if not hasattr(sampler, "get_trial_generation"):
        return None
    frozen = study.get_trials(deepcopy=False)[trial.number]  # the sampler's bookkeeping reads the frozen trial
    return int(sampler.get_trial_generation(study, frozen))


def journal_path(experiment_path: str) -> Path:
    return Path(experiment_path) / POPULATION_DIR / STUDY_FILE


def study_name(experiment: str, population: PopulationSpec) -> str:
    key = json.dumps(population.model_dump(mode="json"), sort_keys=True)
    return f"{experiment}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def make_sampler(population: PopulationSpec, trials_before: int = 0) -> Any:
    """NSGA-II as the spec asks. A resumed study's sampler continues with a seed drawn from the spec's
    and the trials it already has: the journal keeps the trials, not the sampler's random state, and
    the spec's seed again would replay the first candidates' draws."""
    import numpy as np
    import optuna

    seed = population.seed if not trials_before else \
        int(np.random.SeedSequence([population.seed, trials_before]).generate_state(1)[0])
    return optuna.samplers.NSGAIISampler(population_size=population.size, seed=seed,
                                         mutation_prob=population.mutation_prob,
                                         crossover_prob=population.crossover_prob)


def open_study(path: Path, name: str, population: PopulationSpec, create: bool) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not create:
        names = [s.study_name for s in optuna.study.get_all_study_summaries(storage)]
        if name not in names:
            raise UserInputError(f"--resume: {path} holds no study of this population ({', '.join(names) or 'none'}"
                                 "); the population settings changed since: run without --resume")
    study = optuna.create_study(storage=storage, study_name=name, sampler=make_sampler(population),
                                directions=["maximize", "minimize"], load_if_exists=True)
    before = len(study.get_trials(deepcopy=False))
    if before:
        study.sampler = make_sampler(population, before)
    return study, storage


def searcher_class() -> type:
    """Tune's ``OptunaSearch``, with its state kept in the study's journal (no pickle of the
    searcher is written: Tune's restore is not used) and a candidate that ended without its
    metrics (failed) told to the study as failed."""
    from ray.tune.search.optuna import OptunaSearch

    class JournalOptunaSearch(OptunaSearch):
        """Pickled (Tune writes ``tuner.pkl`` of its config) as the recipe to reopen the study from
        its journal: the storage's and the sampler's locks do not pickle."""

        def __init__(self, *args: Any, journal: Path, population: PopulationSpec, **kwargs: Any) -> None:
            self._journal, self._population = journal, population
            super().__init__(*args, **kwargs)

        def __getstate__(self) -> dict[str, Any]:
            return {k: v for k, v in self.__dict__.items() if k not in ("_ot_study", "_storage", "_sampler")}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)
            self._ot_study, self._storage = open_study(self._journal, self._study_name, self._population, True)
            self._sampler = self._ot_study.sampler

        def save(self, checkpoint_path: str) -> None:
            # Tune's Searcher.save_to_dir takes NotImplementedError as "nothing to save": the journal holds the study
            raise NotImplementedError

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            values = [(result or {}).get(m) for m in self.metric] if isinstance(self.metric, list) else None
            if values is not None and any(v is None for v in values):
                import optuna

                if trial_id in self._completed_trials:
                    return
                self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.FAIL)
                self._completed_trials.add(trial_id)
                return
            super().on_trial_complete(trial_id, result, error)

    return JournalOptunaSearch


def prepare_resume(study: Any, saved: dict[str, Any]) -> tuple[int, dict[str, str]]:
    """Reconcile the study with what Tune saved: a running study trial whose candidate finished is
    told its result; one that did not finish is failed and its genome enqueued again (same trial
    id, from its newest checkpoint). Returns (finished candidates, trial id -> checkpoint).

    Candidates are counted by trial id: an interrupted study trial (failed here) and the trial that
    ran its genome again share one, and count once, when the candidate ended."""
    import optuna

    finished: set[str] = set()
    resume_from: dict[str, str] = {}
    for frozen in study.get_trials(deepcopy=False):
        tid = candidate_id(int(frozen.user_attrs.get("resumes", frozen.number)))
        state = saved.get(tid)
        done = state is not None and state.error is None and state.result.get("done_trial")
        if frozen.state.is_finished():
            if frozen.state != optuna.trial.TrialState.FAIL or done:
                finished.add(tid)
            continue
        if done:
            values = [state.result.get(m) for m in (ACCURACY_METRIC, _objective_metric(study))]
            if any(v is None for v in values):
                study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(frozen.number, values)
            finished.add(tid)
            continue
        study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(frozen.params, user_attrs={"resumes": int(frozen.user_attrs.get("resumes",
                                                                                            frozen.number))})
        if state is not None and state.checkpoint is not None:
            resume_from[tid] = state.checkpoint.uri
    return len(finished), resume_from


def _objective_metric(study: Any) -> str:
    return str(study.user_attrs.get("objective_metric", OBJECTIVE_METRICS["params"]))


def describe(population: PopulationSpec, blocks: int | None) -> str:
    low, high = population.cells_per_stage
    library = f"{blocks} blocks" if blocks is not None else "the blocks the sweep finds"
    return (f"population: {population.size} x {population.generations} generations (NSGA-II, seed "
            f"{population.seed}) over {library}, {low}-{high} cells per stage, widths "
            f"{population.widths}; objectives: {ACCURACY_METRIC} (max) and {OBJECTIVE_METRICS[population.objective]} "
            "(min)")


def local_experiment_path(uri: str) -> str:
    """The experiment folder as a local path (the study's journal is a file); an object store is refused."""
    from orchestrator.storage import is_uri, normalize

    if is_uri(uri):
        raise UserInputError(f"population: the study's journal is a local file; the experiment's storage {uri} is "
                             "an object store; allowed: a local path or a shared file system (NFS)")
    return os.path.abspath(normalize(uri))
