"""Whole-split tensor datasets: digits (bundled, offline), CIFAR-10/100 (from a root), synthetic.

Images are kept as uint8 in raw pixel units; the trainer moves a split to its device once and
normalises per batch, so the training loop never touches PIL or per-sample Python.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..names import DATASET_REGISTRY, DATASETS, check_validation  # noqa: F401 (kd_core.data API)
from ..registry import register_dataset
from .augment import Augment
from .noise import CIFAR10_ASYMMETRIC_MAP, NoisyLabels, apply_label_noise


@dataclass(frozen=True)
class ImageData:
    name: str
    train_images: torch.Tensor  # (N, C, H, W) uint8, raw pixels
    train_labels: torch.Tensor  # (N,) int64, the labels trained on (possibly noisy)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    pixel_max: float  # raw value of a white pixel (255 for CIFAR, 16 for digits)
    mean: tuple[float, ...]  # per-channel, in [0, 1] units
    std: tuple[float, ...]
    augment: Augment = Augment()
    class_map: dict[int, int] | None = None  # asymmetric-noise map; None = next class
    clean_train_labels: torch.Tensor | None = field(default=None, repr=False)
    # held out of the training split (with_validation): images, and the labels trained on
    val_images: torch.Tensor | None = field(default=None, repr=False)
    val_labels: torch.Tensor | None = field(default=None, repr=False)

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def clean_labels(self) -> torch.Tensor:
        return self.train_labels if self.clean_train_labels is None else self.clean_train_labels

    def with_label_noise(self, kind: str, rate: float, seed: int) -> tuple[ImageData, NoisyLabels]:
        """A copy whose training labels carry seeded noise; test labels are never touched."""
        noisy = apply_label_noise(
            self.clean_labels,
            self.num_classes,
            kind=kind,
            rate=rate,
            seed=seed,
            class_map=self.class_map,
        )
        return dataclasses.replace(
            self, train_labels=noisy.labels, clean_train_labels=self.clean_labels
        ), noisy

    def with_validation(self, fraction: float, seed: int) -> ImageData:
        """A copy holding out ``fraction`` of the training split as a validation set, stratified
        by the clean labels and drawn with ``seed`` (a trial's seed: a lineage shares it, so a
        teacher never trained on its students' validation images and a bank of the teacher's
        training views fits its students). Held-out images keep the labels they would have been
        trained on (noisy where noise is on: a researcher has no other). 0: the same data."""
        check_validation(fraction)
        if fraction == 0:
            return self
        clean = self.clean_labels.numpy()
        train, val = (np.sort(i) for i in stratified_split(clean, round(fraction * len(clean)),
                                                           seed))
        return dataclasses.replace(
            self,
            train_images=self.train_images[train],
            train_labels=self.train_labels[train],
            clean_train_labels=self.clean_labels[train],
            val_images=self.train_images[val],
            val_labels=self.train_labels[val],
        )

    def normalizer(self, device):
        """uint8 images -> the normalised float input the models see."""
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, device=device).view(shape) * self.pixel_max
        std = torch.tensor(self.std, device=device).view(shape) * self.pixel_max
        return lambda x: (x.float() - mean) / std

    def with_augment(self, augment: Augment) -> ImageData:
        return dataclasses.replace(self, augment=augment)


def load_dataset(
    name: str, *, root: str | Path | None = None, download: bool = False, **kwargs
) -> ImageData:
    """Load a dataset by name (kd_core.registry; a plugin's too); ``synthetic`` takes n_train,
    n_test, num_classes, image_size."""
    entry = DATASET_REGISTRY.resolve(name)[0]
    out = entry.load()(root=root, download=download, **kwargs)
    return out if isinstance(out, ImageData) else from_arrays(name, out, entry.origin)


def from_arrays(name: str, arrays, origin: str = "kdsweep") -> ImageData:
    """ImageData from a loader's ``(train_images, train_labels, test_images, test_labels)``:
    images (N, C, H, W) uint8, labels class indices; per-channel mean and std of the training
    images, no augmentation."""
    try:
        x_tr, y_tr, x_te, y_te = (torch.as_tensor(np.asarray(a)) for a in arrays)
    except (TypeError, ValueError) as e:
        raise ValueError(f"dataset {name!r} ({origin}): its loader must return ImageData or "
                         f"(train_images, train_labels, test_images, test_labels): {e}") from None
    for what, x in (("train_images", x_tr), ("test_images", x_te)):
        if x.dim() != 4 or x.dtype != torch.uint8:
            raise ValueError(f"dataset {name!r} ({origin}): {what} must be (N, C, H, W) uint8, "
                             f"got {tuple(x.shape)} {x.dtype}")
    y_tr, y_te = y_tr.long(), y_te.long()
    k = int(max(y_tr.max(), y_te.max())) + 1
    mean = (x_tr.float() / 255).mean(dim=(0, 2, 3))
    std = (x_tr.float() / 255).std(dim=(0, 2, 3)).clamp_min(1e-3)
    return ImageData(name, x_tr, y_tr, x_te, y_te, k, 255.0, tuple(mean.tolist()),
                     tuple(std.tolist()), augment=Augment())


@register_dataset("digits")
def _digits_loader(root=None, download=False):
    return _digits()


@register_dataset("cifar10")
def _cifar10(root=None, download=False, **kwargs):
    return _cifar("cifar10", root, download, **kwargs)


@register_dataset("cifar100")
def _cifar100(root=None, download=False, **kwargs):
    return _cifar("cifar100", root, download, **kwargs)


@register_dataset("synthetic")
def _synthetic(root=None, download=False, **kwargs):
    return synthetic(**kwargs)


def _digits(test_fraction: float = 0.25, split_seed: int = 0) -> ImageData:
    x, y = _digits_arrays()
    n_test = int(np.ceil(test_fraction * len(y)))
    train, test = stratified_split(y, n_test, split_seed)
    x_tr, x_te, y_tr, y_te = x[train], x[test], y[train], y[test]
    scaled = x_tr.astype(np.float64) / 16.0
    return ImageData(
        name="digits",
        train_images=torch.from_numpy(x_tr),
        train_labels=torch.from_numpy(y_tr),
        test_images=torch.from_numpy(x_te),
        test_labels=torch.from_numpy(y_te),
        num_classes=10,
        pixel_max=16.0,
        mean=(float(scaled.mean()),),
        std=(float(scaled.std()),),
    )


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (what ``load_digits`` reads), read without importing
    scikit-learn: its import costs ~0.7 s of CPU in every process that loads digits (each
    driver and trial worker), longer than an epoch."""
    import gzip
    from importlib.util import find_spec

    (package,) = find_spec("sklearn").submodule_search_locations  # finds, does not import
    with gzip.open(Path(package) / "datasets" / "data" / "digits.csv.gz", "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    x = data[:, :-1].astype(np.uint8).reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8), values 0..16
    return x, data[:, -1].astype(np.int64)


def stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices exactly as scikit-learn's ``train_test_split(stratify=y,
    random_state=seed)`` draws them (StratifiedShuffleSplit; test_data checks the two agree):
    the split every digits result so far was trained on, without the import."""
    rng = np.random.RandomState(seed)
    _, y_idx = np.unique(y, return_inverse=True)
    counts = np.bincount(y_idx)
    by_class = np.split(np.argsort(y_idx, kind="mergesort"), np.cumsum(counts)[:-1])
    n_train = _approximate_mode(counts, len(y) - n_test, rng)
    n_held = _approximate_mode(counts - n_train, n_test, rng)
    train, test = [], []
    for idx, count, a, b in zip(by_class, counts, n_train, n_held, strict=True):
        drawn = idx.take(rng.permutation(count), mode="clip")
        train.extend(drawn[:a])
        test.extend(drawn[a:a + b])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState):
    """scikit-learn's ``utils.extmath._approximate_mode``: per-class draws proportional to
    ``counts``, the remainder given by largest fraction, ties broken by ``rng``."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add = min(len(inds), need)
            floored[rng.choice(inds, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _cifar(
    name: str, root: str | Path | None, download: bool, verify_checksums: bool = True
) -> ImageData:
    from torchvision import datasets

    if root is None:
        raise ValueError(
            f"dataset {name!r} needs a data root (dataset.root in a spec, --data-root)"
        )
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    if not verify_checksums:
        # torchvision checks each batch file's md5; a hand-made (test or subset) copy in the same
        # format would fail it, so skip the md5 but keep torchvision's own reader.
        def files_exist(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

        cls = type(
            cls.__name__,
            (cls,),
            {"_check_integrity": files_exist, "meta": {**cls.meta, "md5": None}},
        )
    root = Path(root).expanduser()
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as e:
        raise FileNotFoundError(
            f"{name} not found under {root} (expected {root / _CIFAR_FOLDERS[name]}): {e} "
            f"Download it on a machine with internet access (kdsweep train --download, or "
            f"dataset.download: true in a spec), or copy the extracted python archive there."
        ) from e
    mean, std = CIFAR_STATS[name]
    num_classes = 10 if name == "cifar10" else 100
    return ImageData(
        name=name,
        train_images=torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),
        train_labels=torch.tensor(train.targets, dtype=torch.int64),
        test_images=torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
        test_labels=torch.tensor(test.targets, dtype=torch.int64),
        num_classes=num_classes,
        pixel_max=255.0,
        mean=mean,
        std=std,
        augment=Augment(padding=4, flip=True),
        class_map=dict(CIFAR10_ASYMMETRIC_MAP) if name == "cifar10" else None,
    )


def synthetic(
    n_train: int = 1024,
    n_test: int = 256,
    num_classes: int = 100,
    image_size: int = 32,
    channels: int = 3,
    seed: int = 0,
) -> ImageData:
    """Random CIFAR-shaped data of any size, for benchmarks (nothing to learn)."""
    g = torch.Generator().manual_seed(seed)
    shape = (channels, image_size, image_size)

    def split(n):
        x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        return x, torch.randint(0, num_classes, (n,), generator=g)

    (x_tr, y_tr), (x_te, y_te) = split(n_train), split(n_test)
    mean, std = CIFAR_STATS["cifar100"]
    return ImageData(
        "synthetic",
        x_tr,
        y_tr,
        x_te,
        y_te,
        num_classes,
        255.0,
        mean[:channels] if channels <= 3 else (0.5,) * channels,
        std[:channels] if channels <= 3 else (0.25,) * channels,
        augment=Augment(padding=4, flip=True),
    )
