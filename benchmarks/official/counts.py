"""The official evaluation network's parameter count for a published architecture, from a checkout.

    python -m benchmarks.official.counts --repo PATH --kind mg_darts --arch MG_DARTS_small --channels 24 \
        --masks PATH/masks/mask_cifar10_darts_small.npy --json
    python -m benchmarks.official.counts --repo PATH --kind gold_nas --arch s1 --channels 36 --json
    python -m benchmarks.official.counts --repo PATH --kind darts --arch DARTS_V2 --channels 36 --layers 20 --json

``PATH`` is a checkout the user supplies of ``lxy12357/MG_DARTS`` (``--kind mg_darts``; code in
``cifar_train/``, its genotypes in the extension-less file ``cifar_train/genotypes``),
``sunsmarterjie/GOLD_NAS`` (``--kind gold_nas``; ``cifar_train/``) or ``quark0/darts`` (``--kind
darts``; ``cnn/``). Nothing of it is vendored: its folder goes first on ``sys.path``, its own
``genotypes`` and ``model`` modules are imported, and its ``NetworkCIFAR`` is built on the CPU for
CIFAR-10 (``--classes``) exactly as its ``train.py`` builds it (DARTS: ``auxiliary=False``; the
others build their auxiliary head, which is left out of the count). ``params`` is what the official
``utils.count_parameters_in_MB`` counts, as an integer: every parameter whose name does not contain
``auxiliary``. With ``--masks`` (MG-DARTS), ``nonzero`` subtracts the weights the masks file zeroes,
counted as the official ``train.py`` counts them (``nelement() - sum()`` of every mask tensor).

With ``--ours``, the same genotype is also imported by ``mgas import-arch``'s reader from the same
file (:func:`mgas_core.space.importers.import_architecture`) and counted, and both networks are
compared as functions: the official network's parameters are copied, in order and shape by shape,
into our evaluation network (auxiliary head left out), and ``max_abs_diff`` is the largest
difference of their logits on one random batch of two 32x32 images in training mode (batch
statistics; drop-path off; masks not applied).

Runtime patches, in this process only (the checkout is never edited): the modules' ``print``
output (the GOLD-NAS and DARTS cells print their widths) goes to stderr. Building and running the
networks on the CPU calls no ``.cuda()``, so nothing else is patched. This is the oracle of
the published counts pinned in ``tests/mgas_core/test_complexity.py`` (its tests run it when
``MGAS_OFFICIAL_MGAS`` / ``MGAS_OFFICIAL_GOLD_NAS`` / ``MGAS_OFFICIAL_DARTS`` name checkouts).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import torch

FOLDERS = {"mg_darts": "cifar_train", "gold_nas": "cifar_train", "darts": "cnn"}
UPSTREAM = {"mg_darts": "lxy12357/MG_DARTS", "gold_nas": "sunsmarterjie/GOLD_NAS", "darts": "quark0/darts"}


def code_folder(repo: Path, kind: str) -> Path:
    """The folder of ``repo`` holding the official ``model.py`` (the repository root is also accepted)."""
    for folder in (repo / FOLDERS[kind], repo):
        if (folder / "model.py").is_file():
            return folder
    raise SystemExit(f"{repo} is not a checkout of {UPSTREAM[kind]}: no {FOLDERS[kind]}/model.py")


def genotypes_file(folder: Path) -> Path:
    for name in ("genotypes.py", "genotypes"):
        if (folder / name).is_file():
            return folder / name
    raise SystemExit(f"{folder} has no genotypes.py (or genotypes)")


def _load_genotypes(path: Path) -> Any:
    loader = importlib.machinery.SourceFileLoader("genotypes", str(path))
    spec = importlib.util.spec_from_loader("genotypes", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["genotypes"] = module
    loader.exec_module(module)
    return module


def official_network(repo: Path, kind: str, arch: str, channels: int, layers: int | None,
                     classes: int) -> torch.nn.Module:
    """The checkout's ``NetworkCIFAR`` for genotype ``arch``, built as its ``train.py`` builds it."""
    folder = code_folder(repo, kind)
    sys.path.insert(0, str(folder))
    with contextlib.redirect_stdout(sys.stderr):
        genotype = getattr(_load_genotypes(genotypes_file(folder)), arch)
        model = importlib.import_module("model")
        if kind == "darts":
            return model.NetworkCIFAR(channels, classes, layers if layers is not None else 20, False, genotype)
        if kind == "gold_nas":
            return model.NetworkCIFAR(channels, classes, False, genotype)
        return model.NetworkCIFAR(channels, classes, genotype)


def masked_weights(path: Path) -> int:
    """Weights the official masks file zeroes, as the official ``train.py`` counts them."""
    masks = torch.load(path, map_location="cpu", weights_only=True)
    return int(sum(int(t.nelement() - t.sum()) for cell in masks for op in cell for t in op))


def count(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    net = official_network(Path(args.repo), args.kind, args.arch, args.channels, args.layers, args.classes)
    params = sum(p.numel() for name, p in net.named_parameters() if "auxiliary" not in name)
    out: dict[str, Any] = {"kind": args.kind, "arch": args.arch, "channels": args.channels,
                           "layers": len(net.cells), "classes": args.classes, "params": params}
    if args.masks:
        out["nonzero"] = params - masked_weights(Path(args.masks))
    if args.ours:
        out["ours"] = ours(args, net)
    return out


def ours(args: argparse.Namespace, official: torch.nn.Module) -> dict[str, Any]:
    """Our import of the same genotype: its counts and its logits against the official network's."""
    from mgas_core.evaluation_network import build_eval_network, count_architecture_params
    from mgas_core.space.importers import import_architecture

    folder = code_folder(Path(args.repo), args.kind)
    arch = import_architecture(args.kind, genotypes_file(folder), args.arch, args.channels, args.layers,
                               Path(args.masks) if args.masks else None)
    shape = {"channels": args.channels, "layers": arch.layers} if arch.is_genotype else {}
    counted = count_architecture_params(arch, args.classes, **shape)
    arch.masks = None
    net = build_eval_network(arch, args.classes, auxiliary=False, **shape)
    theirs = [(n, p) for n, p in official.named_parameters() if "auxiliary" not in n]
    mine = list(net.named_parameters())
    if len(theirs) != len(mine):
        raise SystemExit(f"{len(theirs)} official parameter tensors, {len(mine)} of ours")
    with torch.no_grad():
        for (n1, p1), (n2, p2) in zip(theirs, mine):
            if p1.shape != p2.shape:
                raise SystemExit(f"official {n1} {tuple(p1.shape)} != our {n2} {tuple(p2.shape)}")
            p2.copy_(p1)
        x = torch.randn(2, 3, 32, 32)
        official.drop_path_prob = 0.0
        official.train()
        net.train()
        diff = (official(x)[0] - net(x)[0]).abs().max().item()
    return {"params": counted.dense, "nonzero": counted.nonzero, "max_abs_diff": diff}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.official.counts", description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True, help="checkout of the official code")
    p.add_argument("--kind", required=True, choices=sorted(FOLDERS))
    p.add_argument("--arch", required=True, help="genotype name in the checkout's genotypes file")
    p.add_argument("--channels", type=int, required=True, help="initial channels (train.py's --init_channels)")
    p.add_argument("--layers", type=int, help="cells (darts only; default 20)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--masks", help="MG-DARTS weight masks (masks/*.npy)")
    p.add_argument("--ours", action="store_true", help="also import the genotype with ours, count it and compare "
                                                         "the two networks' logits on shared weights")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = count(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
