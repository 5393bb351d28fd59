"""One training run described by value: what a CLI call or a sweep trial hands to the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .bank import TeacherBank
from .config import TrainConfig
from .data import Augment, ImageData, NoisyLabels, load_dataset
from .train import Trainer, init_model


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    model: str
    train: TrainConfig = field(default_factory=TrainConfig)
    data_root: str | None = None
    download: bool = False
    noise_kind: str = "symmetric"
    noise_rate: float = 0.0  # the noise seed is train.seed: a lineage shares one set of labels
    augment: Augment | None = None  # None: the dataset's default (crop+flip for CIFAR)
    # the share of the training split held out for validation, drawn with train.seed (0: none,
    # the paper's protocol: the whole training split, final-epoch test accuracy)
    validation: float = 0.0


def load_run_data(run: RunSpec) -> tuple[ImageData, NoisyLabels]:
    """The dataset with this run's label noise (over the whole training split, as without a
    validation set), its validation split and augmentation override applied."""
    data = load_dataset(run.dataset, root=run.data_root, download=run.download)
    if run.augment is not None:
        data = data.with_augment(run.augment)
    data, noisy = data.with_label_noise(run.noise_kind, run.noise_rate, run.train.seed)
    return data.with_validation(run.validation, run.train.seed), noisy


def build_trainer(
    run: RunSpec,
    teacher: nn.Module | None = None,
    data: tuple | None = None,
    bank: TeacherBank | None = None,
) -> tuple[Trainer, NoisyLabels]:
    """A Trainer for ``run`` with a freshly seeded model; pass ``data`` to reuse a loaded split,
    ``bank`` to read teacher logits from a prebuilt bank instead of ``teacher``."""
    data, noisy = data or load_run_data(run)
    model = init_model(run.model, data, run.train.seed)
    return Trainer(model, data, run.train, teacher, bank), noisy
