"""``benchmarks.cuda_readiness`` and ``benchmarks.search_epoch`` (issue 17, item 4): the GPU plan
run on the CPU at the smallest shape, with real fresh processes, so that a short GPU lease only
has to run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import search_epoch
from benchmarks.cuda_readiness import default_variant, parse
from mgas_core.data import load_splits
from mgas_core.settings.run import DataSettings

pytestmark = [pytest.mark.slow, pytest.mark.benchmark]

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--layers", "2", "--channels", "4", "--batch", "8", "--resolution", "16",
        "--steps", "1", "--warmup", "0"]


def readiness(tmp_path: Path, *extra: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.cuda_readiness", *TINY, "--out-dir", str(tmp_path),
                           "--json", *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "readiness.json").read_text()) == printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["readiness.json", "readiness.md"]  # no temporary left
    return printed


def test_every_variant_is_measured_compared_with_the_default_and_an_epoch_extrapolated(tmp_path):
    not_a_checkout = tmp_path / "not_darts"
    not_a_checkout.mkdir()
    out = tmp_path / "out"
    summary = readiness(out, "--methods", "darts", "--epoch-images", "40", "--epoch-count", "2",
                        "--official-darts", str(not_a_checkout))
    runs = {r["name"]: r for r in summary["runs"]}
    # on a CPU: fp32 in both memory formats (bf16 autocast is CUDA's), each its own process
    assert [r["name"] for r in summary["runs"] if r["kind"] == "step"] == ["darts fp32 contiguous",
                                                                           "darts fp32 channels_last"]
    table = summary["variants"]["darts"]
    rows = {(r["precision"], r["memory_format"]): r for r in table["variants"]}
    default = tuple(summary["default_variant"])
    assert default == default_variant() == ("fp32", "channels_last")  # memory_format auto, fast implementation
    for (precision, fmt), row in rows.items():
        step = runs[f"darts {precision} {fmt}"]
        assert step["status"] == "ok" and step["result"]["memory_format"] == fmt and step["result"]["steps"] == 1
        assert row["images_per_s"] == step["result"]["images_per_s"] > 0
        assert row["speed_vs_default"] == pytest.approx(row["images_per_s"] / rows[default]["images_per_s"], abs=1e-3)
        assert row["memory_vs_default"] == pytest.approx(row["peak_mem_mb"] / rows[default]["peak_mem_mb"], abs=1e-3)
    fastest = max(rows.values(), key=lambda r: r["images_per_s"])
    assert table["fastest"] == {"precision": fastest["precision"], "memory_format": fastest["memory_format"]}
    wins = fastest["speed_vs_default"] >= 1.05 and (fastest["precision"], fastest["memory_format"]) != default
    assert table["fastest_wins_over_default"] is wins
    # a bad official checkout fails its own run with the reason; the plan goes on
    official = runs["darts vs official"]
    assert official["status"] == "failed"
    assert "is not a checkout of https://github.com/quark0/darts" in official["error"]
    assert summary["official"]["darts"]["status"] == "failed"
    # the epoch: two real epochs of 40 images, the later one scaled to CIFAR-10's 45,000 and 50 epochs
    epochs = [r for r in summary["runs"] if r["kind"] == "epoch"]
    assert [e["status"] for e in epochs] == ["ok"] * len(epochs) and len(epochs) == (2 if wins else 1)
    epoch = epochs[0]["result"]
    assert epoch["epochs_run"] == 2 and epoch["epoch_s"] == pytest.approx(epoch["epoch_s_each"][1], abs=1e-3)
    assert epoch["train_images"] == 40 and epoch["steps_per_epoch"] == 3  # halves of 20 at batch 8
    assert epoch["cifar10_epoch_s"] == pytest.approx(epoch["epoch_s"] * 45_000 / 40, rel=1e-3)
    assert epoch["search_hours"] == pytest.approx(epoch["cifar10_epoch_s"] * 50 / 3600, rel=1e-3)
    assert summary["counts"] == {"ok": 2 + len(epochs), "failed": 1, "timeout": 0, "skipped": 0}
    md = (out / "readiness.md").read_text()
    assert f"| darts | fp32 | channels_last (default) | {rows[default]['images_per_s']} |" in md


def test_a_spent_budget_skips_and_a_run_past_its_timeout_is_stopped(tmp_path):
    skipped = readiness(tmp_path / "a", "--methods", "darts,mgas", "--budget-s", "0")
    assert skipped["counts"] == {"ok": 0, "failed": 0, "timeout": 0, "skipped": 5}  # 2 x 2 steps + the epoch
    assert all("budget" in r["error"] for r in skipped["runs"])
    stopped = readiness(tmp_path / "b", "--methods", "mgas", "--run-timeout-s", "0.3", "--epoch-images", "0")
    assert [r["status"] for r in stopped["runs"]] == ["timeout", "timeout"]
    assert stopped["variants"]["mgas"] == {"variants": [], "fastest": None, "fastest_wins_over_default": False}


@pytest.mark.parametrize("images", [40, 900, 45_000])
def test_the_synthetic_epoch_has_cifar10s_split_proportions(images):
    settings = DataSettings(name="synthetic", synthetic={"samples": search_epoch.synthetic_samples(images), "size": 4})
    splits = load_splits(settings)
    assert len(splits.train) == images
    assert len(splits.val) == pytest.approx(images / 9, abs=1)  # 45,000 : 5,000


def test_bad_flags_are_named(tmp_path, capsys):
    for argv, message in ((["--methods", "darts,nope"], "--methods: unknown nope"),
                          (["--official-mgas", str(tmp_path / "none")], "--official-mgas"),
                          (["--epoch-images", "5"], "--epoch-images")):
        with pytest.raises(SystemExit) as stop:
            parse(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
