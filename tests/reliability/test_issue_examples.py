"""The bad inputs a new user tried (issue 16), each now one line and exit 2, nothing written:
in this process for all of them, and through the installed `mgas` entry point for a few."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mgas_core.files.atomic import atomic_write_bytes
from mgas_core.space.builtin_architectures import DARTS_V2
from orchestrator.results import result_schema, table_bytes
from tests.reliability.bad_input import STATS, assert_refused, snapshot

TINY = ["--dataset", "digits", "--preset", "tiny", "--no-progress"]
SPEC = "name: x\ndataset: digits\npreset: tiny\nsweep: {method: [darts]}\n"
BOMB = ("name: x\ndataset: digits\npreset: tiny\nsweep:\n  method: [darts]\n  seed: [&a0 [1,1,1,1,1,1,1,1,1,1]"
        + "".join(f", &a{i} [{','.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)) + "]\n")


def _files(folder: Path) -> dict[str, str]:
    """The input files of the examples, written into ``folder``; returns name -> path."""
    genotype = DARTS_V2.to_json()
    files = {
        "eight.json": json.dumps({**genotype, "channels": "eight"}),
        "nodes.json": json.dumps({**genotype, "nodes": 1000000000}),
        "escape.json": json.dumps({**genotype, "masks": "../elsewhere.masks.safetensors"}),
        "absolute.json": json.dumps({**genotype, "masks": "/etc/passwd"}),
        "cpu_inf.yaml": SPEC + "resources: {cpu: .inf}\n",
        "duplicate.yaml": SPEC + "dataset: cifar10\n",
        "epochs_true.yaml": SPEC + "base: {search.epochs: true}\n",
        "w_lr_inf.yaml": SPEC + "base: {search.w_lr: .inf}\n",
        "bomb.yaml": BOMB,
    }
    paths = {"folder": str(folder)}
    for name, text in files.items():
        (folder / name).write_text(text)
        paths[name.replace(".", "_")] = str(folder / name)
    (folder / "a_file").write_text("x")
    empty = result_schema().empty_table()
    atomic_write_bytes(folder / "zero_rows" / "results" / "method=darts" / "t.parquet", table_bytes(empty))
    torch_save_folder = folder / "no_search_key"
    torch_save_folder.mkdir()
    from mgas_core.files.checkpoints import save_checkpoint

    save_checkpoint({"epoch": 3}, torch_save_folder / "checkpoint.pt")
    return paths


EXAMPLES = [
    # (argv with {placeholders}, names one of which the line must contain)
    (["info", "--arch", "darts_v2", "--dataset", "cifar10", "--layers", "0"], ("--layers",)),
    (["info", "--arch", "darts_v2", "--dataset", "cifar10", "--channels", "-4"], ("--channels",)),
    (["search", "--method", "mgas", *TINY, "--impl", "reference"], ("search.impl",)),
    (["search", "--method", "darts", *TINY, "--out", "{folder}/a_file"], ("--out",)),
    (["report", "{folder}/zero_rows"], ("no rows",)),
    (["info", "--arch", "{eight_json}", "--dataset", "cifar10"], ("channels",)),
    (["run", "{cpu_inf_yaml}", "--dry-run"], ("resources.cpu",)),
    (["search", "--method", "darts", *TINY, "--resume", "--out", "{folder}/no_search_key"], ("'search' key",)),
    (["run", "{duplicate_yaml}", "--dry-run"], ("duplicate key 'dataset'",)),
    (["run", "{epochs_true_yaml}", "--dry-run"], ("search.epochs",)),
    (["run", "{w_lr_inf_yaml}", "--dry-run"], ("search.w_lr",)),
    (["search", "--method", "darts", *TINY, "--target-params", "inf"], ("search.target_params",)),
    (["info", "--arch", "{nodes_json}", "--dataset", "cifar10"], ("nodes",)),
    (["search", "--method", "darts", *TINY, "--epochs", "99999999999999999999999"], ("search.epochs",)),
    (["run", "{bomb_yaml}", "--dry-run"], ("aliases",)),
    (["info", "--arch", "{escape_json}", "--dataset", "cifar10"], ("masks",)),
    (["train", "--arch", "{absolute_json}", *TINY], ("masks",)),
]
if not torch.cuda.is_available():
    EXAMPLES.append((["search", "--method", "darts", *TINY, "--device", "cuda"], ("device",)))


def _argv(argv: list[str], paths: dict[str, str]) -> list[str]:
    return [a.format(**paths) for a in argv]


@pytest.mark.parametrize(("argv", "names"), EXAMPLES, ids=[" ".join(a[:3]) + f"-{i}" for i, (a, _) in
                                                          enumerate(EXAMPLES)])
def test_issue_example_is_one_line_and_exit_2(argv, names, tmp_path):
    paths = _files(tmp_path)
    assert_refused(_argv(argv, paths), tmp_path, names, "issue examples")


SUBPROCESS_EXAMPLES = [0, 2, 14]  # info (a number out of range), search (a combination), run (a YAML alias bomb)


@pytest.mark.slow
def test_issue_examples_through_the_installed_entry_point(tmp_path):
    """The real `mgas` process: exit 2, one line, no traceback, nothing written."""
    paths = _files(tmp_path)
    for index in SUBPROCESS_EXAMPLES:
        argv, names = EXAMPLES[index]
        before = snapshot(tmp_path)
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *_argv(argv, paths)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.startswith("mgas: error: ") and done.stderr.count("\n") == 1, done.stderr
        assert any(name in done.stderr for name in names) and "Traceback" not in done.stderr
        assert snapshot(tmp_path) == before
        STATS["entry point (subprocess)"] += 1


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user errors become exit 2: any other exception (here a FileNotFoundError raised by a
    bug, which the CLI used to turn into exit 2) propagates with its traceback."""
    import orchestrator.local as local
    from orchestrator.cli import main

    def broken(*args, **kwargs):
        raise FileNotFoundError("a bug, not the user's file")

    monkeypatch.setattr(local, "info_command", broken)
    with pytest.raises(FileNotFoundError, match="a bug"):
        main(["info", "--arch", "darts_v2", "--dataset", "cifar10"])
