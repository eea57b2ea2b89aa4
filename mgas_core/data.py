"""Dataset registry: ``digits`` (embedded), ``cifar10``, ``cifar100``, ``imagenet``, ``synthetic``.

Every dataset yields three disjoint splits: ``train`` (search/retraining weights), ``val`` (model
selection; held out of the training set with a fixed stratified split) and ``test`` (reported
once, never seen by search). Batches come from :func:`epoch_batches`, whose shuffle order is a
pure function of ``(seed, epoch, stream)`` so a resumed run replays the same order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from mgas_common.errors import UserInputError
from mgas_common.user_files import path_exists
from mgas_core.settings.run import DataSettings

Batch = tuple[Tensor, Tensor]


class DatasetError(UserInputError):
    """A dataset that cannot be loaded (missing root, unknown name, bad files)."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    variant: str  # evaluation-network variant: "cifar" or "imagenet"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)


@dataclass(frozen=True)
class SearchAugment:
    """Extra search-time augmentation of the CIFAR training view (MG-DARTS searches with the
    AutoAugment CIFAR policy and cutout; DARTS-style searches with crop and flip only)."""

    autoaugment: bool = False
    cutout: int = 0


@dataclass
class Splits:
    info: DatasetInfo
    train: Dataset
    val: Dataset
    test: Dataset
    train_augmented: Dataset | None = None  # same samples as train, with retraining augmentation


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with ``fraction`` of every class held out, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n = max(1, round(len(idx) * fraction))
        held.append(idx[:n])
        keep.append(idx[n:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 digits (values 0-16) and their labels, as ``sklearn.datasets.load_digits``
    returns them, read from the file scikit-learn ships without importing ``sklearn.datasets``
    (which imports SciPy: about 1 s of every trial process's first trial); scikit-learn's own
    loader where its file is not at that place."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def _digits(settings: DataSettings) -> Splits:
    images, target = digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(target, dtype=torch.long)
    rest, test = stratified_split(target, 0.2, seed=0)
    train_rel, val_rel = stratified_split(target[rest], settings.val_fraction, seed=1)
    train, val = rest[train_rel], rest[val_rel]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    info = DatasetInfo("digits", 10, 1, 8, "cifar")
    return Splits(info, TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]),
                  TensorDataset(x[test], y[test]))


def synthetic_split_sizes(samples: int, val_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes of the ``synthetic`` dataset: a fifth of its samples for testing,
    ``val_fraction`` of the rest for validation."""
    n_test = max(2, samples // 5)
    n_val = max(2, round((samples - n_test) * val_fraction))
    return samples - n_test - n_val, n_val, n_test


def _synthetic(settings: DataSettings) -> Splits:
    shape = settings.synthetic
    g = torch.Generator().manual_seed(1234)
    n = shape.samples
    x = torch.randn(n, shape.channels, shape.size, shape.size, generator=g)
    proj = torch.randn(shape.channels, shape.classes, generator=g)
    y = (x.mean(dim=(2, 3)) @ proj).argmax(dim=1)  # a learnable labelling
    _, n_val, n_test = synthetic_split_sizes(n, settings.val_fraction)
    idx = torch.arange(n)
    test, val, train = idx[:n_test], idx[n_test:n_test + n_val], idx[n_test + n_val:]
    info = DatasetInfo("synthetic", shape.classes, shape.channels, shape.size, "cifar")
    return Splits(info, TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]),
                  TensorDataset(x[test], y[test]))


class Cutout:
    """Zero one ``length`` x ``length`` square at a random centre (clipped at the borders)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        cy = int(torch.randint(h, (1,)))
        cx = int(torch.randint(w, (1,)))
        y0, y1 = max(0, cy - self.length // 2), min(h, cy + self.length // 2)
        x0, x1 = max(0, cx - self.length // 2), min(w, cx + self.length // 2)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0.0
        return img


CIFAR_STATS = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


MAX_LOADER_WORKERS = 16
DOWNLOAD_LOCK = ".mgas-download.lock"


def loader_workers(requested: int | None, cpus: float | None) -> int:
    """Data loader processes: ``requested`` if set, else the trial's CPUs minus the one that trains."""
    if requested is not None:
        return requested
    return max(0, min(MAX_LOADER_WORKERS, int(cpus or 1) - 1))


def resolve_data_settings(settings: DataSettings, cpus: float | None, base_dir: Path) -> DataSettings:
    """The data settings as seen where the trial runs: ``~`` is this machine's home, a relative
    root is relative to ``base_dir`` (the trial's working directory: the shipped ``working_dir``
    on a cluster), and the loader workers come from the trial's CPU allocation."""
    root = settings.root
    if root is not None:
        path = Path(os.path.expanduser(root))
        root = str(path if path.is_absolute() else (base_dir / path).resolve())
    return settings.model_copy(update={"root": root, "workers": loader_workers(settings.workers, cpus)})


def _require_root(settings: DataSettings, what: str) -> Path:
    if settings.root is None:
        raise DatasetError(f"dataset {settings.name!r} needs --data-root (a folder holding {what})")
    root = Path(os.path.expanduser(settings.root))
    if not path_exists(root) and not settings.download:
        raise DatasetError(f"dataset root {root} does not exist (pass --download to fetch {settings.name})")
    return root


@contextmanager
def download_lock(root: Path, enabled: bool) -> Iterator[None]:
    """Only one process per machine downloads or checks a dataset at a time (trials of one node
    share the root); the others wait, then find the files there."""
    if not enabled:
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / DOWNLOAD_LOCK)):
        yield


def _cifar(settings: DataSettings, cutout: int, augment: SearchAugment) -> Splits:
    from torchvision import datasets, transforms

    cls = datasets.CIFAR10 if settings.name == "cifar10" else datasets.CIFAR100
    root = _require_root(settings, f"the torchvision {cls.__name__} files")
    mean, std = CIFAR_STATS[settings.name]
    normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    policy = [transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10)] if augment.autoaugment else []
    search_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    *policy, *normalize, *([Cutout(augment.cutout)] if augment.cutout else [])])
    retrain_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                     *normalize, *([Cutout(cutout)] if cutout else [])])
    plain_tf = transforms.Compose(normalize)
    try:
        with download_lock(root, settings.download):
            train_full = cls(str(root), train=True, transform=search_tf, download=settings.download)
        train_aug = cls(str(root), train=True, transform=retrain_tf, download=False)
        train_plain = cls(str(root), train=True, transform=plain_tf, download=False)
        test = cls(str(root), train=False, transform=plain_tf, download=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DatasetError(f"{settings.name} files not found or corrupted under {root}: {exc}") from exc
    except OSError as exc:  # an unreadable root, or a download that failed
        raise DatasetError(f"{settings.name} files under {root} cannot be read or fetched: {exc}") from exc
    keep, held = stratified_split(np.asarray(train_full.targets), settings.val_fraction)
    info = DatasetInfo(settings.name, len(train_full.classes), 3, 32, "cifar")
    return Splits(info, Subset(train_full, keep.tolist()), Subset(train_plain, held.tolist()), test,
                  Subset(train_aug, keep.tolist()))


def _imagenet(settings: DataSettings, cutout: int) -> Splits:
    from torchvision import datasets, transforms

    root = _require_root(settings, "train/ and val/ ImageFolder trees")
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DatasetError(f"imagenet root {root} has no {sub}/ folder (expected ImageFolder layout)")
    normalize = [transforms.ToTensor(), transforms.Normalize(*IMAGENET_STATS)]
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2), *normalize,
        *([Cutout(cutout)] if cutout else []),
    ])
    eval_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), *normalize])
    try:
        train_full = datasets.ImageFolder(str(root / "train"), transform=train_tf)
        train_plain = datasets.ImageFolder(str(root / "train"), transform=eval_tf)
        test = datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    except OSError as exc:  # torchvision: no class folder, or no image in one
        raise DatasetError(f"imagenet root {root}: {exc}") from exc
    if len(train_full.classes) != len(test.classes):
        raise DatasetError(f"imagenet train/ has {len(train_full.classes)} classes but val/ has {len(test.classes)}")
    keep, held = stratified_split(np.asarray(train_full.targets), settings.val_fraction)
    info = DatasetInfo("imagenet", len(train_full.classes), 3, 224, "imagenet")
    return Splits(info, Subset(train_full, keep.tolist()), Subset(train_plain, held.tolist()), test)


DATASET_BUILDERS: dict[str, Callable[[DataSettings, int, SearchAugment], Splits]] = {
    "digits": lambda s, _c, _a: _digits(s),
    "synthetic": lambda s, _c, _a: _synthetic(s),
    "cifar10": _cifar,
    "cifar100": _cifar,
    "imagenet": lambda s, c, _a: _imagenet(s, c),
}


def load_splits(settings: DataSettings, cutout: int = 0, search_augment: SearchAugment | None = None) -> Splits:
    """Load ``settings.name``; ``cutout`` is applied to the retraining view of the train split,
    ``search_augment`` to its search view (CIFAR; the embedded sets have no augmentation)."""
    if settings.name not in DATASET_BUILDERS:
        raise DatasetError(f"unknown dataset {settings.name!r}; allowed: {', '.join(DATASET_BUILDERS)}")
    return DATASET_BUILDERS[settings.name](settings, cutout, search_augment or SearchAugment())


def shuffle_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A generator whose state depends only on (seed, epoch, stream)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


def epoch_batches(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    stream: int = 0,
    workers: int | None = 0,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Batches of one epoch. In-memory tensor datasets are sliced directly (no per-sample calls)."""
    n = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=shuffle_generator(seed, epoch, stream)) if shuffle else torch.arange(n)
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]
        return
    loader = DataLoader(Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=workers or 0, drop_last=drop_last, pin_memory=False,
                        generator=shuffle_generator(seed, epoch, stream + 100))
    yield from loader


def split_in_half(dataset: Dataset) -> tuple[Dataset, Dataset]:
    """The DARTS bilevel split: first half of the training set for weights, second for alphas."""
    n = len(dataset)  # type: ignore[arg-type]
    half = n // 2
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors
        return TensorDataset(x[:half], y[:half]), TensorDataset(x[half:], y[half:])
    return Subset(dataset, list(range(half))), Subset(dataset, list(range(half, n)))


STATIC_INFO = {
    "digits": DatasetInfo("digits", 10, 1, 8, "cifar"),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, "cifar"),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, "cifar"),
    "imagenet": DatasetInfo("imagenet", 1000, 3, 224, "imagenet"),
}


def dataset_info(settings: DataSettings) -> DatasetInfo:
    """Shape facts of a dataset without loading it (``mgas info``, dry runs)."""
    if settings.name == "synthetic":
        s = settings.synthetic
        return DatasetInfo("synthetic", s.classes, s.channels, s.size, "cifar")
    if settings.name not in STATIC_INFO:
        raise DatasetError(f"unknown dataset {settings.name!r}; allowed: {', '.join(DATASET_BUILDERS)}")
    return STATIC_INFO[settings.name]
