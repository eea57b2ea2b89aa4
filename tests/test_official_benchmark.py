"""``benchmarks.supernet --official-darts/--official-mgas`` (issue 17): the plumbing without a
checkout (ratios, the two command lines, where MG-DARTS's deleted ``prune.py`` comes from, the
official defaults, which official phase and optimisers an MGAS stage maps to), and, when
``MGAS_OFFICIAL_DARTS`` / ``MGAS_OFFICIAL_MGAS`` name a checkout of quark0/darts /
lxy12357/MG_DARTS, the real thing at a tiny shape (both sides, fresh processes; MGAS: the whole
network and stage 2 of 3)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import supernet
from benchmarks.official import compare
from benchmarks.official import step as official_step
from benchmarks.official.mgas import mgas_setup, official_stage, stage_problem
from benchmarks.official.step import COMMON, OfficialCheckoutError, default_shape, locate, prune_source
from mgas_core.methods.mgas.method import BENCHMARK_LAMBDA

pytestmark = [pytest.mark.benchmark]

ROOT = Path(__file__).resolve().parents[1]
PRUNE_TEXT = "class BinaryStep:\n    pass\n"


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-c", "commit.gpgsign=false", *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _last(cmd: list[str], flag: str) -> str:
    """The value argparse keeps for ``flag``: the one after its last occurrence."""
    return cmd[len(cmd) - cmd[::-1].index(flag)]


def _mgas_layout(root: Path, with_prune: bool) -> Path:
    folder = root / "cifar_search"
    folder.mkdir(parents=True)
    for name in COMMON:
        (folder / name).write_text("# stands for the official file of this name\n")
    if with_prune:
        (folder / "prune.py").write_text(PRUNE_TEXT)
    return folder


def test_ratios_are_ours_over_official_and_none_without_a_denominator():
    ours = {"images_per_s": 6.0, "peak_mem_mb": 300.0, "activation_mb": 100.0}
    official = {"images_per_s": 2.0, "peak_mem_mb": 600.0, "activation_mb": 400.0}
    assert compare.official_ratios(ours, official) == {
        "speed_vs_official": 3.0, "memory_vs_official": 0.5, "activation_vs_official": 0.25}
    assert compare.official_ratios(ours, {**official, "activation_mb": 0.0})["activation_vs_official"] is None


def test_commands_run_our_method_and_the_official_kind_at_one_shape():
    shape = {"layers": 3, "channels": 4, "batch": 4, "resolution": 8, "steps": 1, "warmup": 0, "threads": 1,
             "device": "cpu"}
    args = argparse.Namespace(**shape, stages=1, stage=1)
    argv = ["--official-mgas=/x", "--impl", "reference", "--json", "--batch", "4", "--threads", "1"]
    ours, official = compare.official_commands(args, argv, "mgas", "/x")
    assert ours[1:3] == ["-m", "benchmarks.supernet"] and ours[-1] == "--json"
    assert "/x" not in " ".join(ours) and "--official-mgas" not in " ".join(ours)
    assert ours.count("--json") == 1 and "reference" in ours
    assert " --method mgas --stages 1 --stage 1 " in " ".join(ours)
    assert official[1:7] == ["-m", "benchmarks.official.step", "--repo", "/x", "--kind", "mgas"]
    for side in (ours, official):  # argparse keeps the last value of a flag: the resolved shape
        assert {key: _last(side, f"--{key}") for key in shape} == {key: str(value) for key, value in shape.items()}
    assert _last(official, "--lam") == str(BENCHMARK_LAMBDA)
    assert (_last(official, "--stages"), _last(official, "--stage")) == ("1", "1")
    ours_darts, official_darts = compare.official_commands(args, ["--official-darts", "/d"], "darts", "/d")
    assert " --method darts --order 1 " in " ".join(ours_darts) and "/d" not in ours_darts
    assert "--lam" not in official_darts


def test_prune_py_is_read_from_the_commit_before_the_one_that_deleted_it(tmp_path):
    folder = _mgas_layout(tmp_path, with_prune=True)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "Add files via upload")
    (folder / "prune.py").write_text(PRUNE_TEXT + "CHANGED = 1\n")
    _git(tmp_path, "commit", "-q", "-am", "Update prune.py")
    with_file = _git(tmp_path, "rev-parse", "HEAD")
    _git(tmp_path, "rm", "-q", "cifar_search/prune.py")
    _git(tmp_path, "commit", "-q", "-m", "Delete cifar_search/prune.py")
    deleting = _git(tmp_path, "rev-parse", "HEAD")
    (folder / "utils.py").write_text("# later\n")
    _git(tmp_path, "commit", "-q", "-am", "Update utils.py")
    sources = locate(tmp_path, "mgas")
    assert sources.folder == folder.resolve()
    assert sources.commit == _git(tmp_path, "rev-parse", "HEAD")
    assert sources.prune_from == with_file
    assert sources.prune_deleted_in == f"{deleting} Delete cifar_search/prune.py"
    assert prune_source(sources) == PRUNE_TEXT + "CHANGED = 1\n"


def test_a_checkout_with_prune_py_needs_no_history(tmp_path):
    _mgas_layout(tmp_path, with_prune=True)
    sources = locate(tmp_path, "mgas")
    assert sources.prune_from is None and sources.commit is None


def test_missing_prune_py_outside_git_fails_with_one_line_saying_what_to_do(tmp_path):
    _mgas_layout(tmp_path, with_prune=False)
    with pytest.raises(OfficialCheckoutError) as err:
        locate(tmp_path, "mgas")
    message = str(err.value)
    assert "\n" not in message and "not a git checkout" in message and "git show 62248c5^" in message
    with pytest.raises(SystemExit) as stop:  # the CLI says it before running either side
        supernet.main(["--official-mgas", str(tmp_path), "--json"])
    assert str(stop.value) == f"error: {message}"


def test_a_folder_that_is_not_a_checkout_is_refused(tmp_path):
    with pytest.raises(OfficialCheckoutError, match=r"not a checkout of https://github\.com/quark0/darts"):
        locate(tmp_path, "darts")


def test_the_official_defaults_are_read_from_pre_37_sources(tmp_path):
    (tmp_path / "train_search.py").write_text(
        "parser.add_argument('--batch_size', type=int, default=96, help='batch size')\n"
        "parser.add_argument('--init_channels', type=int, default=16)\n"
        "parser.add_argument('--unrolled', action='store_true', default=False)\n"
        "target = target.cuda(async=True)\n")
    assert default_shape(tmp_path) == {"layers": 8, "channels": 16, "batch": 96}


def test_commands_pass_the_mgas_stage_to_both_sides():
    args = argparse.Namespace(layers=6, channels=4, batch=4, resolution=32, steps=1, warmup=0, threads=1,
                              device="cpu", stages=3, stage=2)
    argv = ["--official-mgas", "/x", "--stages", "3", "--mgas-stage", "2"]  # --mgas-stage: --stage's old name
    ours, official = compare.official_commands(args, argv, "mgas", "/x")
    assert (_last(ours, "--method"), _last(ours, "--stages"), _last(ours, "--stage")) == ("mgas", "3", "2")
    assert (_last(official, "--stages"), _last(official, "--stage")) == ("3", "2")


def test_our_stages_map_to_the_official_phases():
    assert [official_stage(3, k) for k in (1, 2, 3, 4)] == [1, 2, 3, 0]  # 0: the final phase, train()
    assert official_stage(1, 1) == official_stage(1, 2) == 0
    assert stage_problem(1, 1, 3, 8) is None and stage_problem(3, 3, 6, 8) is None and stage_problem(3, 4, 6, 8) is None
    assert stage_problem(3, 2, 6, 32) is None and stage_problem(3, 1, None, 32) is None
    assert "3 stages" in (stage_problem(2, 1, 6, 32) or "")
    assert "between 1 and 4" in (stage_problem(3, 5, 6, 32) or "")
    assert "at least 3 cells" in (stage_problem(3, 1, 2, 32) or "")
    for k in (1, 2):  # the official stage heads are built for 32x32 input
        problem = stage_problem(3, k, 6, 16) or ""
        assert f"AuxiliaryHeadCIFAR{k}" in problem and "--resolution 32" in problem


@pytest.mark.parametrize("flags", [["--stages", "2"], ["--stages", "3", "--mgas-stage", "1", "--resolution", "16"],
                                   ["--stages", "3", "--mgas-stage", "5"]])
def test_official_mgas_refuses_a_step_the_official_code_has_not(tmp_path, flags):
    with pytest.raises(SystemExit) as stop:
        supernet.main(["--official-mgas", str(tmp_path), *flags])
    assert stop.value.code == 2


def test_official_mgas_takes_a_stage_of_three_to_the_checkout(tmp_path):
    with pytest.raises(SystemExit) as stop:  # past the flags: the folder is then checked
        supernet.main(["--official-mgas", str(tmp_path), "--stages", "3", "--stage", "2", "--resolution", "32"])
    assert "not a checkout of https://github.com/lxy12357/MG_DARTS" in str(stop.value)


def test_official_step_checks_the_stage_flags(tmp_path):
    _mgas_layout(tmp_path, with_prune=True)
    for flags in (["--kind", "mgas", "--stages", "3", "--stage", "2", "--resolution", "16"],
                  ["--kind", "mgas", "--stages", "2"]):
        with pytest.raises(SystemExit) as stop:
            official_step.main(["--repo", str(tmp_path), *flags])
        assert stop.value.code == 2


class _Mixed(nn.Module):  # the official MixedOp's shape: one op
    def __init__(self) -> None:
        super().__init__()
        self._ops = nn.ModuleList([nn.Linear(1, 1)])


class _Cell(nn.Module):  # the official Cell's shape: one edge
    def __init__(self) -> None:
        super().__init__()
        self._ops = nn.ModuleList([_Mixed()])


class _Network(nn.Module):
    """The attributes of the official ``model_search.Network`` that ``main()``'s groups read."""

    def __init__(self, c: int, classes: int, layers: int, *hyper: float) -> None:
        super().__init__()
        self._layers, self.stage1_end, self.stage2_end = layers, layers // 3 - 1, 2 * layers // 3 - 1
        self.stem, self.classifier = nn.Linear(1, 1), nn.Linear(1, 1)
        self.cells = nn.ModuleList(_Cell() for _ in range(layers))
        self.auxiliary_head1, self.auxiliary_head2 = nn.Linear(1, 1), nn.Linear(1, 1)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)

        def var() -> torch.Tensor:
            return torch.zeros(1, requires_grad=True)

        self._arch_parameters = [var() for _ in range(layers)]
        self._thresholds = [[[[var(), var(), var()], [var(), var(), var()]], [[var(), var(), var()]]]
                            for _ in range(layers)]
        self._kernel_parameters = [[[[var()], [var()]], [[[], var()]]] for _ in range(layers)]
        self.reinitialized = False

    def arch_parameters(self) -> list[torch.Tensor]:
        return self._arch_parameters

    def _reinitialize_threshold(self) -> None:
        self.reinitialized = True


def _fake_train_search(calls: list) -> argparse.Namespace:
    hp = argparse.Namespace(eta_min=0.01, reg_flops=1, mu=0, momentum=0.9, weight_decay=3e-4, weight_decay_alpha=0,
                            grad_clip=5, learning_rate_alpha=[1, 2, 3, 4], learning_rate_omega=[10, 20, 30, 40],
                            learning_rate_alpha_kernel=[100, 200, 300, 400])
    return argparse.Namespace(args=hp, Network=_Network,
                              train=lambda *a, **k: calls.append(("train", a, k)),
                              train_local=lambda *a, **k: calls.append(("train_local", a, k)))


@pytest.mark.parametrize(("stages", "stage"), [(3, 1), (3, 2), (3, 3), (1, 1), (3, 4)])
def test_mgas_setup_builds_the_phase_as_the_official_main(monkeypatch, stages, stage):
    monkeypatch.setattr(nn.Module, "cuda", lambda self, *a, **k: self)
    calls: list = []
    args = argparse.Namespace(channels=4, layers=6, lam=1e-3, stages=stages, stage=stage)
    run, used = mgas_setup({"train_search": _fake_train_search(calls)}, args)
    run(["batch"])
    (name, call, flags), = calls
    model, opt_alpha, opt_kernel, opt_omega, opt_thre = call[1], *call[3:7]
    assert model.reinitialized and model.drop_path_prob == 0 and call[7] == 1e-3
    assert flags == {"only_train": False, "freeze_mask": True}
    k = official_stage(stages, stage)
    lr = k - 1 if k else 3
    assert opt_alpha.defaults["lr"] == [1, 2, 3, 4][lr] and opt_omega.defaults["lr"] == [10, 20, 30, 40][lr]
    assert opt_kernel.defaults["lr"] == (100 if k else 400)  # the official stages all use index 0
    assert opt_thre.defaults["lr"] == 0.1 and sorted({g["lr"] for g in opt_thre.param_groups}) == [0.001, 0.1]
    # main()'s stage lists alias one another: every stage's optimisers hold every cell
    assert [g["params"][0] for g in opt_alpha.param_groups] == model._arch_parameters
    assert sum(len(g["params"]) for g in opt_thre.param_groups) == 6 * (2 + 3)
    assert sum(len(g["params"]) for g in opt_kernel.param_groups) == 6 * (2 + 1)
    omega = [p for g in opt_omega.param_groups for p in g["params"]]
    assert {id(p) for p in omega} == {id(p) for p in model.parameters()} and len(omega) == len(list(model.parameters()))
    if k:
        assert name == "train_local" and call[8:] == (k, False)
        order = [model.stem, *model.cells[:2], model.auxiliary_head1, *model.cells[2:4], model.auxiliary_head2,
                 *model.cells[4:], model.classifier]
        assert omega == [p for m in order for p in m.parameters()]
        assert used["cells_run"] == {1: 2, 2: 4, 3: 6}[k] and used["function"] == f"train_local(stage_index={k})"
    else:
        assert name == "train" and len(call) == 8 and used["cells_run"] == 6 and used["function"] == "train()"


TINY = {"layers": 3, "channels": 4, "batch": 4, "resolution": 8, "steps": 1}
TINY_STAGES = {"layers": 6, "channels": 4, "batch": 4, "resolution": 32, "steps": 1}  # official heads: 32x32


@pytest.mark.parametrize(("kind", "stage", "shape"), [("darts", None, TINY), ("mgas", None, TINY),
                                                      ("mgas", 2, TINY_STAGES)])
def test_against_the_official_checkout_at_a_tiny_shape(kind, stage, shape):
    repo = os.environ.get(f"MGAS_OFFICIAL_{kind.upper()}")
    if not repo:
        pytest.skip(f"MGAS_OFFICIAL_{kind.upper()} does not name a checkout of the official {kind} code")
    flags = [x for key, value in shape.items() for x in (f"--{key}", str(value))]
    if stage:
        flags += ["--stages", "3", "--mgas-stage", str(stage)]
    done = subprocess.run([sys.executable, "-m", "benchmarks.supernet", f"--official-{kind}", repo, *flags,
                           "--warmup", "1", "--threads", "1", "--json"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ours, official = result["ours"], result["official"]
    assert ours["method"] == kind and official["kind"] == kind
    assert {k: ours[k] for k in shape} == {k: official[k] for k in shape} == shape
    for side in (ours, official):
        assert side["images_per_s"] > 0 and side["peak_mem_mb"] >= side["baseline_mem_mb"] > 0
    assert result["speed_vs_official"] == round(ours["images_per_s"] / official["images_per_s"], 3)
    assert result["memory_vs_official"] == round(ours["peak_mem_mb"] / official["peak_mem_mb"], 3)
    sources = locate(repo, kind)
    assert result["official_commit"] == sources.commit and result["official_repo"] == str(sources.repo)
    if kind == "mgas":
        cells = {None: 3, 2: 4}[stage]  # stage 2 of 3 at 6 cells: cells 0-3, auxiliary_head2
        assert ours["granularities"] == "op,filter,weight" and ours["cells_run"] == official["cells_run"] == cells
        assert ours["stage"] == (stage or 1) and official["stage"] == (stage or 1)
        function = f"train_local(stage_index={stage})" if stage else "train()"
        assert official["hyperparameters"]["function"] == function
        assert ("prune.py is missing" in done.stderr) == (sources.prune_from is not None)


def test_a_side_killed_by_the_out_of_memory_killer_is_named_as_such():
    import signal

    from benchmarks.measure import run_json

    code = f"import os; os.kill(os.getpid(), {int(signal.SIGKILL)})"
    with pytest.raises(SystemExit, match=r"killed by signal 9.*out-of-memory"):
        run_json([sys.executable, "-c", code])


def test_a_fallback_the_official_code_logs_at_info_is_caught():
    """Provoked on purpose: the official script configures logging after the watch is attached
    (``basicConfig`` then does nothing) and logs a fallback at INFO, as its ``except`` branches do."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)  # a fresh interpreter's root logger
        watch = official_step.FallbackWatch.install()
        logging.basicConfig(level=logging.INFO, format="%(message)s")  # what train_search.py does on import
        logging.info("batch: fell back to the slow path")  # its fallback line
        logging.info("train_acc 0.1")  # an ordinary line
        assert watch.hits == ["batch: fell back to the slow path"]
    finally:
        root.removeHandler(watch)
        root.setLevel(level)
        for handler in handlers:
            root.addHandler(handler)


class _ForwardNetwork(_Network):
    """``_Network`` with the official forward's outputs: the logits of every head run, then the
    size and threshold terms (one output per head up to the stage's, all three in the final phase)."""

    def __init__(self, *a: float) -> None:
        super().__init__(*a)
        self.calls: list[tuple[int, dict]] = []

    def forward(self, x: torch.Tensor, stage_index: int = 0, **flags: bool) -> tuple[torch.Tensor, ...]:
        self.calls.append((stage_index, flags))
        heads = (self.stem, self.auxiliary_head1, self.classifier)[: stage_index or 3]
        logits = [head(x) * torch.ones(1, 3) for head in heads]
        size = torch.sigmoid(self._arch_parameters[0]).sum()
        return (*logits, size, torch.exp(-self._thresholds[0][0][0][1]).sum())


@pytest.mark.parametrize(("stages", "stage"), [(3, 2), (1, 1)])
def test_the_explicit_definition_composes_the_official_step_without_train(monkeypatch, stages, stage):
    """``--definition explicit``: the forward with the stage index, the head's CE + lam x (size +
    threshold), backward, clip and all four optimisers stepping; ``train()`` never called."""
    monkeypatch.setattr(nn.Module, "cuda", lambda self, *a, **k: self)
    calls: list = []
    fake = _fake_train_search(calls)
    fake.Network = _ForwardNetwork
    args = argparse.Namespace(channels=4, layers=6, lam=1e-3, stages=stages, stage=stage, definition="explicit")
    run, used = mgas_setup({"train_search": fake}, args)
    model = run.__closure__ and next(c.cell_contents for c in run.__closure__
                                     if isinstance(c.cell_contents, _ForwardNetwork))
    alpha_before = model._arch_parameters[0].detach().clone()
    threshold_before = model._thresholds[0][0][0][1].detach().clone()
    weight_before = model.classifier.weight.detach().clone()
    run([(torch.ones(2, 1), torch.tensor([0, 1]))] * 2)
    k = official_stage(stages, stage)
    assert calls == [] and used["definition"] == "explicit" and "composed here" in used["function"]
    assert [c[0] for c in model.calls] == [k, k] and all(c[1]["update_mask"] is False for c in model.calls)
    assert not torch.equal(model._arch_parameters[0], alpha_before)  # the size term reached the alphas
    assert not torch.equal(model._thresholds[0][0][0][1], threshold_before)  # the threshold term, its optimiser
    assert torch.equal(model.classifier.weight, weight_before) == (k == 2)  # stage 2's head is auxiliary_head1 here


def test_the_two_official_definitions_agree_within_the_tolerance_only():
    train = {"step_s": 10.0, "peak_mem_mb": 1000.0}
    assert compare.definitions_agreement(train, {"step_s": 10.9, "peak_mem_mb": 1040.0})["agree"] is True
    result = compare.definitions_agreement(train, {"step_s": 11.5, "peak_mem_mb": 1000.0})
    assert result["agree"] is False and result["explicit_over_train"] == {"step_s": 1.15, "peak_mem_mb": 1.0}
    assert compare.definitions_agreement(train, {"step_s": 10.0, "peak_mem_mb": 1100.0})["agree"] is False


def test_cross_check_is_for_the_official_mgas_step_only(tmp_path):
    for flags in (["--cross-check"], ["--official-darts", str(tmp_path), "--cross-check"]):
        with pytest.raises(SystemExit) as stop:
            supernet.main(flags)
        assert stop.value.code == 2
    args = argparse.Namespace(layers=3, channels=4, batch=4, resolution=8, steps=1, warmup=0, threads=1,
                              device="cpu", stages=1, stage=1)
    ours, official = compare.official_commands(args, ["--official-mgas", "/x", "--cross-check"], "mgas", "/x")
    assert "--cross-check" not in ours and "--definition" not in official  # the train() side first
