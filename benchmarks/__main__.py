"""``python -m benchmarks``: the benchmarks a user runs, each with its purpose and command, then the
diagnostics and the official-code driver. ``--json`` prints the same as one JSON object.

The purpose is the first line of each module's docstring, read without importing the module (no
torch), so the listing is instant and cannot drift from the module.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS: dict[str, list[str]] = {
    "supernet": [
        "python -m benchmarks.supernet --method METHOD --threads 1 --json   # METHOD: any registered one, "
        "with its own flags",
        "python -m benchmarks.supernet --official-darts PATH --threads 1 --steps 2 --json   # vs quark0/darts",
        "python -m benchmarks.supernet --official-mgas PATH --threads 1 --steps 2 --json    # vs lxy12357/MG_DARTS",
        "python -m benchmarks.supernet --compare impl --threads 1 --steps 2 --json          # fast vs reference",
    ],
    "search_epoch": ["python -m benchmarks.search_epoch --method METHOD --device cuda --json"],
    "compile_retrain": ["python -m benchmarks.compile_retrain --json"],
    "orchestration": ["python -m benchmarks.orchestration --json"],
    "cuda_readiness": ["python -m benchmarks.cuda_readiness --official-darts PATH --official-mgas PATH --out-dir gpu"],
}
"""The benchmarks a user runs (module under ``benchmarks/`` -> its commands)."""

DIAGNOSTICS: dict[str, list[str]] = {
    "step_profile": ["python -m benchmarks.diagnostics.step_profile --method METHOD --threads 1 --json"],
    "conv_paths": ["python -m benchmarks.diagnostics.conv_paths"],
    "process_cpu": ["python -m benchmarks.diagnostics.process_cpu --json"],
    "sweep_start": ["python -m benchmarks.diagnostics.sweep_start --json"],
}
"""Where a benchmark's figure comes from (module under ``benchmarks/diagnostics/`` -> commands)."""

OFFICIAL: dict[str, list[str]] = {
    "step": ["python -m benchmarks.official.step --repo PATH --kind darts|mgas --json   # what --official-* runs"],
    "counts": ["python -m benchmarks.official.counts --repo PATH --kind mg_darts --arch MG_DARTS_small --channels 24 "
               "--ours --json   # vs mgas import-arch"],
}
"""The official code alone (module under ``benchmarks/official/`` -> commands)."""

SECTIONS = (
    ("benchmarks", "Benchmarks", "", BENCHMARKS),
    ("diagnostics", "Diagnostics (benchmarks.diagnostics: where a benchmark's figure comes from)", "diagnostics",
     DIAGNOSTICS),
    ("official", "The official code alone (benchmarks.official: its step, run by supernet --official-*; its "
                 "evaluation network's size)", "official", OFFICIAL),
)


def purpose(folder: str, module: str) -> str:
    """The first line of the module's docstring."""
    path = HERE / folder / f"{module}.py"
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""
    return doc.strip().splitlines()[0].replace("``", "`") if doc.strip() else ""


def listing() -> dict[str, list[dict[str, object]]]:
    return {key: [{"module": ".".join(filter(None, ("benchmarks", folder, name))), "purpose": purpose(folder, name),
                   "commands": commands} for name, commands in entries.items()]
            for key, _title, folder, entries in SECTIONS}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the listing as one JSON object")
    args = p.parse_args(argv)
    listed = listing()
    if args.json:
        print(json.dumps(listed))
        return
    lines = ["Each prints JSON (--json) or a summary; `python -m MODULE --help` lists its flags. Comparisons run",
             "each variant in a fresh process; the official code comes from a checkout you pass (PATH).", ""]
    for key, title, _folder, _entries in SECTIONS:
        lines.append(f"{title}:")
        for entry in listed[key]:
            lines.append(f"  {entry['module']}: {entry['purpose']}")
            lines += [f"      {command}" for command in entry["commands"]]  # type: ignore[union-attr]
        lines.append("")
    print("\n".join(lines).rstrip())


if __name__ == "__main__":
    main()
