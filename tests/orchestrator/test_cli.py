from __future__ import annotations

import json

import pytest

from orchestrator.cli import main
from tests.orchestrator.helpers import MGAS_TINY as HELPER_MGAS

TINY_SEARCH = ["--set", "search.layers=3", "--set", "search.channels=4", "--set", "search.nodes=2",
               "--set", "search.batch_size=16", "--set", "data.synthetic.size=8",
               "--set", "data.synthetic.samples=96", "--set", "retrain.epochs=1", "--set", "retrain.channels=4",
               "--set", "retrain.layers=3", "--set", "retrain.cutout=0", "--set", "retrain.batch_size=16"]


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_info_json_reports_official_count(capsys):
    rc, out, _ = run_cli(capsys, "info", "--arch", "darts_v2", "--dataset", "cifar10", "--channels", "36",
                         "--layers", "20", "--json")
    data = json.loads(out)
    assert rc == 0 and data["params"] == 3349342 and data["flops"] > 4e8


@pytest.mark.parametrize("argv,fragment", [
    (["search", "--method", "nope", "--dataset", "digits"], "search.method"),
    (["search", "--method", "darts", "--dataset", "mnist"], "invalid choice"),
    (["search", "--method", "darts", "--dataset", "cifar10", "--data-root", "/no/such/dir"], "/no/such/dir"),
    (["search", "--method", "darts", "--dataset", "cifar10"], "--data-root"),
    (["search", "--method", "darts", "--dataset", "digits", "--epochs", "0"], "search.epochs"),
    (["search", "--method", "darts", "--dataset", "digits", "--channels", "7"], "even"),
    (["search", "--method", "darts", "--dataset", "digits", "--set", "search.nope=1"], "unknown setting"),
    (["info", "--arch", "nope", "--dataset", "cifar10"], "neither a built-in"),
    (["train", "--arch", "missing.json", "--dataset", "digits"], "does not exist"),
    (["search", "--dataset", "digits"], "--method"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, fragment):
    with pytest.raises(SystemExit) as info:
        main(argv)
    rc = info.value.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("mgas: error:") and fragment in err


@pytest.fixture(autouse=True)
def _exit_codes_as_exceptions(monkeypatch):
    """main() returns 2 for handled errors; turn that into SystemExit like the console script."""
    import orchestrator.cli as cli

    original = cli.main

    def wrapped(argv=None):
        rc = original(argv)
        if rc:
            raise SystemExit(rc)
        return rc

    monkeypatch.setattr("tests.orchestrator.test_cli.main", wrapped)


def test_unparsable_architecture_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as info:
        main(["train", "--arch", str(bad), "--dataset", "digits"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "not valid JSON" in err and err.count("\n") == 1


@pytest.mark.slow
def test_search_then_train_writes_outputs(tmp_path, capsys):
    out = tmp_path / "search"
    main(["search", "--method", "darts", "--dataset", "synthetic", "--epochs", "2", "--out", str(out),
          "--json", "--no-progress", *TINY_SEARCH])
    summary = json.loads(capsys.readouterr().out)
    for name in ("arch.json", "config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"):
        assert (out / name).exists(), name
    assert summary["arch_path"].endswith("arch.json") and 0 <= summary["val_acc"] <= 1
    assert summary["search_time_s"] > 0 and summary["peak_mem_mb"] >= 0 and summary["peak_mem_kind"]
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["search"]["layers"] == 3 and "git_sha" in config and "torch" in config["versions"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    main(["train", "--arch", summary["arch_path"], "--dataset", "synthetic", "--out", str(tmp_path / "train"),
          "--json", "--no-progress", *TINY_SEARCH])
    trained = json.loads(capsys.readouterr().out)
    assert 0 <= trained["test_acc"] <= 1 and trained["params"] > 0 and trained["flops"] > 0


@pytest.mark.slow
def test_search_resume_continues_from_checkpoint(tmp_path, capsys):
    out = tmp_path / "s"
    common = ["search", "--method", "darts", "--dataset", "synthetic", "--out", str(out), "--json",
              "--no-progress", *TINY_SEARCH]
    main([*common, "--epochs", "2"])
    first = json.loads(capsys.readouterr().out)
    main([*common, "--epochs", "3", "--resume"])
    resumed = json.loads(capsys.readouterr().out)
    assert first["epochs_run"] == 2 and resumed["epochs_run"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


MGAS_TINY = [*TINY_SEARCH, "--set", "retrain.layers=4",
             *[arg for key, value in HELPER_MGAS.items() if key != "search.mgas.stages"
               for arg in ("--set", f"{key}={value}")]]


@pytest.mark.parametrize("extra,fragment", [
    (["--target-params", "50"], "not below the supernet"),
    (["--stages", "0"], "search.mgas.stages"),
    (["--stages", "5"], "stages must be between 1 and the number of cells (4)"),
    (["--granularities", "op,pixel"], "search.mgas.granularities"),
    (["--set", "search.mgas.granularities=[]"], "non-empty subset"),
])
def test_mgas_invalid_arguments(capsys, extra, fragment):
    with pytest.raises(SystemExit) as info:
        main(["search", "--method", "mgas", "--dataset", "synthetic", "--no-progress", *MGAS_TINY, *extra])
    err = capsys.readouterr().err
    assert info.value.code == 2 and fragment in err and err.count("\n") == 1


@pytest.mark.slow
def test_mgas_search_summary_and_info_agree(tmp_path, capsys):
    out = tmp_path / "mgas"
    main(["search", "--method", "mgas", "--dataset", "synthetic", "--epochs", "5", "--stages", "2",
          "--target-params", "0.02", "--out", str(out), "--json", "--no-progress", *MGAS_TINY])
    summary = json.loads(capsys.readouterr().out)
    for key in ("supernet_params", "params", "nonzero_params", "remaining_ratio", "events", "arch_path",
                "schedule", "target_reached", "target_gap"):
        assert key in summary, key
    assert set(summary["remaining_ratio"]) == {"op", "filter", "weight"}
    assert {"phase", "filters_removed"} <= {e["type"] for e in summary["events"]}
    phases = [p["phase"] for p in summary["schedule"]]
    assert phases == ["stage 1 search", "stage 2 search", "stage 2 regrow", "final search"]
    assert summary["epochs_run"] == sum(p["epochs"] for p in summary["schedule"])
    assert (out / "arch.masks.safetensors").exists()
    main(["info", "--arch", summary["arch_path"], "--dataset", "synthetic", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert (info["params"], info["nonzero_params"]) == (summary["params"], summary["nonzero_params"])
    main(["train", "--arch", summary["arch_path"], "--dataset", "synthetic", "--out", str(tmp_path / "t"),
          "--json", "--no-progress", *MGAS_TINY])
    trained = json.loads(capsys.readouterr().out)
    assert trained["nonzero_params"] == summary["nonzero_params"]


@pytest.mark.parametrize("argv,fragment", [
    (["--method", "msg_das", "--subgraphs", "0"], "search.msg_das.subgraphs"),
    (["--method", "msg_das", "--subgraphs", "9"], "between 1 and the number of ops (8)"),
    (["--method", "gold_nas", "--cost", "energy"], "search.gold_nas.cost"),
    (["--method", "gold_nas", "--cost", "latency"], "--cost latency needs --latency-predictor"),
])
def test_baseline_invalid_arguments(capsys, argv, fragment):
    with pytest.raises(SystemExit) as info:
        main(["search", "--dataset", "synthetic", "--no-progress", *TINY_SEARCH, *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and fragment in err and err.count("\n") == 1


@pytest.mark.slow
def test_gold_nas_summary_lists_snapshots_with_paths(tmp_path, capsys):
    main(["search", "--method", "gold_nas", "--dataset", "synthetic", "--epochs", "20", "--out", str(tmp_path),
          "--json", "--no-progress", *TINY_SEARCH, "--set", "search.gold_nas.control.lambda0=0.1",
          "--set", "search.gold_nas.n0=8", "--set", "search.gold_nas.snapshot=epoch"])
    summary = json.loads(capsys.readouterr().out)
    snaps = summary["snapshots"]
    assert len(snaps) >= 2
    assert [s["params"] for s in snaps] == sorted((s["params"] for s in snaps), reverse=True)
    for s in snaps:
        assert (tmp_path / "snapshots").exists() and s["arch_path"].endswith(".json")
        main(["info", "--arch", s["arch_path"], "--dataset", "synthetic", "--json"])
        assert json.loads(capsys.readouterr().out)["params"] == s["params"]


def test_target_scales_genotype_width(capsys, tmp_path):
    main(["train", "--arch", "darts_v2", "--dataset", "synthetic", "--target-params", "0.05", "--epochs", "1",
          "--out", str(tmp_path), "--json", "--no-progress", *TINY_SEARCH[:-2]])
    summary = json.loads(capsys.readouterr().out)
    assert abs(summary["params"] - 50000) / 50000 < 0.15


@pytest.mark.slow
def test_search_killed_between_its_metrics_row_and_its_checkpoint_resumes_with_each_row_once(
        tmp_path, capsys, monkeypatch):
    """A kill after epoch 2's metrics row but before its checkpoint: the resume starts from epoch 1's
    checkpoint, says so on stderr, and metrics.jsonl ends with each epoch exactly once, the same
    rows an uninterrupted search writes."""
    import orchestrator.local as local

    common = ["search", "--method", "darts", "--dataset", "synthetic", "--epochs", "3", "--json", "--no-progress",
              *TINY_SEARCH]
    main([*common, "--out", str(tmp_path / "whole")])
    whole = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    capsys.readouterr()

    real_save, saves = local.save_checkpoint_keeping_previous, []

    def killed_on_second_save(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # the process dies here: row 2 written, its checkpoint not
        return real_save(*args, **kwargs)

    monkeypatch.setattr(local, "save_checkpoint_keeping_previous", killed_on_second_save)
    out = tmp_path / "killed"
    with pytest.raises(SystemExit) as info:
        main([*common, "--out", str(out)])
    assert info.value.code == 130
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # the duplicate-to-be
    monkeypatch.setattr(local, "save_checkpoint_keeping_previous", real_save)
    capsys.readouterr()
    main([*common, "--out", str(out), "--resume"])
    assert f"resuming from {out / 'checkpoint.pt'}: 1 of 3 epochs done" in capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["loss"] for r in rows] == [r["loss"] for r in whole]


@pytest.mark.slow
def test_a_diverging_search_is_one_line_and_exit_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["search", "--method", "darts", "--dataset", "synthetic", "--epochs", "1", "--no-progress",
              "--out", str(tmp_path / "s"), "--set", "search.w_lr=1e12", *TINY_SEARCH])
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.startswith("mgas: failed: diverged at epoch 0") and err.count("\n") == 1


@pytest.mark.slow
def test_json_stdout_holds_only_the_json_object_even_for_output_at_the_descriptor_level(tmp_path):
    """`mgas run --dry-run --json` through the entry point: the plan table (and anything a library
    writes straight to file descriptor 1) goes to stderr; stdout parses as one JSON object."""
    import subprocess
    import sys

    from tests.orchestrator.helpers import write_spec

    spec = write_spec(tmp_path)
    code = ("import os, sys; import orchestrator.sweep as sweep; from orchestrator.cli import main; "
            "plan = sweep.print_plan; "
            "sweep.print_plan = lambda *a: (os.write(1, b'fd 1 during the command\\n'), plan(*a))[1]; "
            "os.write(1, b'fd 1 before\\n'); sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "run", str(spec), "--dry-run", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, rest = done.stdout.split("fd 1 before\n", 1)  # stdout is untouched outside the command
    assert before == "" and "fd 1 during the command" in done.stderr
    plan = json.loads(rest)
    assert plan["trials"] == 4 and "experiment tiny: 4 trials" in done.stderr
