"""Runs the network stage of a ``population:`` experiment (see :mod:`orchestrator.population`) on the
Ray the grid sweep started: the block library from the block stage's rows, the Optuna study from
its journal, a Tune run of the candidates left, their rows, and the non-dominated set marked."""

from __future__ import annotations

import json
import sys
from typing import Any

from mgas_common.errors import UserInputError
from orchestrator.collect import latest_saved_trials, saved_from_grid, tune_run_location, write_results
from orchestrator.population import (
    BLOCKS_FILE,
    POPULATION_DIR,
    CandidateSpace,
    block_library,
    describe,
    journal_path,
    local_experiment_path,
    open_study,
    prepare_resume,
    searcher_class,
    study_name,
)
from orchestrator.results import read_rows
from orchestrator.resume import ATTEMPT_KEY, RESUME_KEY
from orchestrator.spec import trial_settings
from orchestrator.storage import Location


def run_population_stage(spec: Any, experiment: Location, uri: str, template: dict[str, Any], resume: bool,
                         attempt: int, callbacks: list[Any], tuner_factory: Any) -> dict[str, Any]:
    """The network stage; ``tuner_factory(num_samples, search_alg, callbacks)`` builds the Tune run
    as the grid's (same trainable, placement, folders, failure policy)."""
    population = spec.population
    path = local_experiment_path(uri)
    blocks = block_library(read_rows(experiment))
    if not blocks:
        raise UserInputError("population: the block stage left no architecture to take blocks from (every block "
                             "search failed); see its rows' error column")
    folder = experiment.child(POPULATION_DIR)
    folder.child(BLOCKS_FILE).write_bytes((json.dumps(blocks, indent=1) + "\n").encode())
    name = study_name(spec.name, population)
    journal = journal_path(path)
    study, storage = open_study(journal, name, population, create=not (resume and journal.exists()))
    study.set_user_attr("objective_metric", population.metrics[1])
    run = tune_run_location(experiment)
    saved = {tid: s for tid, s in latest_saved_trials(run).items()
             if s.trial.get("population") is not None} if resume else {}
    finished, resume_from = prepare_resume(study, saved)
    left = max(0, population.total - finished)
    print(f"{describe(population, len(blocks))}; {finished} candidate(s) finished, {left} to run"
          + (f" ({len(resume_from)} continue from a checkpoint)" if resume_from else ""), file=sys.stderr)
    template = {**template, ATTEMPT_KEY: attempt}
    space = CandidateSpace(template, population, blocks, lambda axes: trial_settings(spec, axes),
                           {tid: {RESUME_KEY: uri} for tid, uri in resume_from.items()})
    grid_trials: list[Any] = []
    if left:
        searcher = searcher_class()(space=space, metric=population.metrics, mode=["max", "min"],
                                    sampler=study.sampler, study_name=name, storage=storage,
                                    seed=population.seed, journal=journal, population=population)
        grid = tuner_factory(left, searcher, callbacks).fit()
        grid_trials = saved_from_grid(grid)
    # every candidate's row again: this run's from the result grid, earlier runs' from their saved results
    ran = {g.trial["trial_id"] for g in grid_trials}
    earlier = [s for s in latest_saved_trials(run).values()
               if s.trial.get("population") is not None and s.trial["trial_id"] not in ran]
    written = write_results(experiment, [*earlier, *grid_trials])
    return {**written, "candidates": population.total, "blocks": len(blocks), "study": str(journal)}
