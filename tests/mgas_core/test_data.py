from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from mgas_core.data import DatasetError, epoch_batches, load_splits, split_in_half
from mgas_core.settings.run import DataSettings


def test_digits_split_is_fixed_stratified_and_disjoint():
    a = load_splits(DataSettings(name="digits", val_fraction=0.2))
    b = load_splits(DataSettings(name="digits", val_fraction=0.2))
    sizes = [len(a.train), len(a.val), len(a.test)]
    assert sum(sizes) == 1797 and sizes == [1151, 287, 359]
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    rows = [tuple(t.flatten().tolist()) for s in (a.train, a.val, a.test) for t in s.tensors[0]]
    assert len(set(rows)) >= 1797 - 20  # digits has a handful of duplicate images, never split-wide
    for split in (a.train, a.val, a.test):
        counts = torch.bincount(split.tensors[1], minlength=10).float()
        assert counts.min() / counts.max() > 0.85  # every class in every split, in proportion
    assert a.info.in_channels == 1 and a.info.image_size == 8


@pytest.mark.slow
def test_digits_read_from_scikit_learns_file_are_its_loaders_without_importing_it():
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from mgas_core.data import digits_arrays

    images, target = digits_arrays()
    bunch = load_digits()
    assert images.dtype == bunch.images.dtype and target.dtype == bunch.target.dtype
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)
    probe = ("import sys; from mgas_core.data import digits_arrays; images, _ = digits_arrays(); "
             "assert images.shape == (1797, 8, 8); print('sklearn.datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_epoch_order_depends_only_on_seed_and_epoch():
    ds = load_splits(DataSettings(name="digits")).train
    first = [y for _, y in epoch_batches(ds, 64, True, seed=3, epoch=2)]
    again = [y for _, y in epoch_batches(ds, 64, True, seed=3, epoch=2)]
    other = [y for _, y in epoch_batches(ds, 64, True, seed=3, epoch=3)]
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    assert not all(torch.equal(p, q) for p, q in zip(first, other))
    w, a = split_in_half(ds)
    assert len(w) + len(a) == len(ds)


def _write_cifar(root, monkeypatch, n_train=20, n_test=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_train
        entry = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    for path in folder.iterdir():
        files[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    cls = datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f"data_batch_{i}", files[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(cls, "test_list", [["test_batch", files["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": files["batches.meta"]})


def test_cifar10_loader_on_written_files(tmp_path, monkeypatch):
    _write_cifar(tmp_path, monkeypatch)
    splits = load_splits(DataSettings(name="cifar10", root=str(tmp_path), val_fraction=0.2), cutout=16)
    assert len(splits.train) == 80 and len(splits.val) == 20 and len(splits.test) == 10
    x, y = next(epoch_batches(splits.train_augmented, 8, True))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.long
    assert (x == 0).flatten(1).sum(1).min() > 0  # cutout zeroed a square in every image
    assert splits.info.num_classes == 10


def test_missing_cifar_root_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_splits(DataSettings(name="cifar10", root=str(tmp_path / "absent")))
    with pytest.raises(DatasetError, match="needs --data-root"):
        load_splits(DataSettings(name="cifar100"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not found or corrupted"):
        load_splits(DataSettings(name="cifar10", root=str(tmp_path / "empty")))


def test_imagenet_folder_loader_on_written_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("n01", "n02"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    splits = load_splits(DataSettings(name="imagenet", root=str(tmp_path), val_fraction=0.2))
    assert len(splits.test) == 4 and len(splits.train) + len(splits.val) == 12
    x, _ = next(epoch_batches(splits.train, 4, True))
    assert x.shape == (4, 3, 224, 224)
    assert splits.info.variant == "imagenet"


def test_imagenet_without_val_folder(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="no val/ folder"):
        load_splits(DataSettings(name="imagenet", root=str(tmp_path)))


def test_synthetic_shapes():
    s = DataSettings(name="synthetic", synthetic={"channels": 2, "size": 12, "classes": 3, "samples": 50})
    splits = load_splits(s)
    assert splits.train.tensors[0].shape[1:] == (2, 12, 12)
    assert set(splits.train.tensors[1].tolist()) <= {0, 1, 2}


def test_mgas_searches_cifar_with_autoaugment_and_cutout_as_the_official_code(tmp_path, monkeypatch):
    from torchvision import transforms

    from mgas_core.methods.registry import search_augment_for, search_settings_model

    _write_cifar(tmp_path, monkeypatch)
    settings = DataSettings(name="cifar10", root=str(tmp_path), val_fraction=0.2)
    mgas = load_splits(settings, search_augment=search_augment_for(search_settings_model()(method="mgas")))
    darts = load_splits(settings, search_augment=search_augment_for(search_settings_model()(method="darts")))
    kinds = [type(t).__name__ for t in mgas.train.dataset.transform.transforms]
    assert kinds == ["RandomCrop", "RandomHorizontalFlip", "AutoAugment", "ToTensor", "Normalize", "Cutout"]
    assert mgas.train.dataset.transform.transforms[2].policy == transforms.AutoAugmentPolicy.CIFAR10
    assert mgas.train.dataset.transform.transforms[-1].length == 16
    assert [type(t).__name__ for t in darts.train.dataset.transform.transforms] == [
        "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    x, _ = next(epoch_batches(mgas.train, 8, True))
    assert x.shape == (8, 3, 32, 32) and (x == 0).flatten(1).sum(1).min() > 0  # cutout in every image
    assert len(mgas.test) == 10 and mgas.val.dataset.transform.transforms[0].__class__.__name__ == "ToTensor"
