"""A new method is one file: tests/plugins/random_alpha.py (settings, presets, a flag, a plot style)
put into ``mgas_core/methods/`` of a copy of the project, and installed as an ``mgas.methods``
entry point beside an unchanged project, runs through ``mgas search``, ``mgas run`` on embedded
Ray, ``mgas report`` (drawn in its own colour, under its own label) and the supernet step
benchmark; in the copy, ``git status`` shows that one file and nothing else.

Both run in a throwaway interpreter environment that sees this one's packages (torch, ray, ...)
but not its editable install of the project, so the copy's code (or the installed plugin) is what
runs, in the driver and in Ray's workers alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugins" / "random_alpha.py"
NAME, LABEL, COLOUR = "random_alpha", "Random alphas", "#17becf"

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def interpreter_without_the_project(folder: Path) -> Path:
    """A venv whose site-packages point at this interpreter's packages, so everything but the
    project itself (installed here in editable mode) is importable."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    (Path(site) / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def run(python: Path, args: list[str], cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "MPLBACKEND": "Agg"}
    done = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


SPEC = f"""name: new_method
dataset: synthetic
preset: smoke
sweep:
  method: [{NAME}, darts]
  seed: [0]
base:
  search.epochs: 1
  retrain.epochs: 1
  search.{NAME}.alpha_std: 0.5
resources: {{cpu: 1, gpu: 0}}
max_concurrent_trials: 2
"""

STYLE_CHECK = """
import json, sys
from analysis.aggregate import aggregate
from analysis.load import load_results
from analysis.plots import pareto_figure
from mgas_core.methods.registry import method_styles
styles = {name: (s.colour, s.marker, s.label) for name, s in method_styles().items()}
fig = pareto_figure(aggregate(load_results(sys.argv[1]).ok), styles=styles)
drawn = {}
for ax in fig.axes:
    for container in ax.containers:
        label = container.get_label()
        if label and not label.startswith("_"):
            drawn[label] = container.lines[0].get_color()
print(json.dumps(drawn))
"""


def exercise(python: Path, cwd: Path, pythonpath: Path, work: Path) -> None:
    """search, run, report and the step benchmark of the new method, as a user types them."""
    search = run(python, ["-m", "orchestrator.cli", "search", "--method", NAME, "--dataset", "synthetic",
                          "--preset", "smoke", "--alpha-std", "0.5", "--epochs", "1", "--out", str(work / "search"),
                          "--json", "--no-progress"], cwd, pythonpath)
    summary = json.loads(search.stdout)
    assert summary["method"] == NAME and summary["epochs_run"] == 1
    config = json.loads((work / "search" / "config.json").read_text())["settings"]["search"][NAME]
    assert config == {"alpha_std": 0.5}

    spec = work / "new_method.yaml"
    spec.write_text(SPEC)
    done = run(python, ["-m", "orchestrator.cli", "run", str(spec), "--out", str(work / "results"), "--json"],
               cwd, pythonpath)
    sweep = json.loads(done.stdout)
    assert sweep["ok"] == 2 and sweep["failed"] == 0, sweep
    results = work / "results" / "new_method" / "results"
    assert (results / f"method={NAME}").is_dir()

    run(python, ["-m", "orchestrator.cli", "report", str(work / "results" / "new_method"),
                 "--out", str(work / "report")], cwd, pythonpath)
    assert (work / "report" / "pareto.png").stat().st_size > 0
    drawn = json.loads(run(python, ["-c", STYLE_CHECK, str(work / "results" / "new_method")], cwd,
                           pythonpath).stdout.strip().splitlines()[-1])
    assert drawn[LABEL] == COLOUR and drawn["DARTS"] != COLOUR

    bench = run(python, ["-m", "benchmarks.supernet", "--method", NAME, "--alpha-std", "0.5", "--layers", "3",
                         "--channels", "4", "--batch", "4", "--resolution", "8", "--steps", "1", "--warmup", "0",
                         "--json"], cwd, pythonpath)
    measured = json.loads(bench.stdout.strip().splitlines()[-1])
    assert measured["method"] == NAME and measured["alpha_std"] == 0.5


def test_a_method_added_as_one_file_in_the_package(tmp_path):
    copy = tmp_path / "project"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_bytes(source.read_bytes())
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "the project as it is"], cwd=copy, check=True)
    (copy / "mgas_core" / "methods" / f"{NAME}.py").write_text(PLUGIN.read_text())

    python = interpreter_without_the_project(tmp_path / "venv")
    exercise(python, copy, copy, tmp_path / "work")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=copy,
                            capture_output=True, text=True, check=True).stdout
    assert status.splitlines() == [f"?? mgas_core/methods/{NAME}.py"]


def test_a_method_installed_as_an_entry_point(tmp_path):
    python = interpreter_without_the_project(tmp_path / "venv")
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "random_alpha_plugin.py").write_text(PLUGIN.read_text())
    dist = site / "random_alpha_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: random-alpha-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[mgas.methods]\n{NAME} = random_alpha_plugin\n")
    (dist / "RECORD").write_text("")
    exercise(python, ROOT, ROOT, tmp_path / "work")
