"""Datasets, seeded label noise and on-device augmentation."""

from ..names import check_validation
from .augment import Augment, draw_views, render_views
from .datasets import DATASETS, ImageData, load_dataset, synthetic
from .noise import (
    CIFAR10_ASYMMETRIC_MAP,
    NOISE_KINDS,
    NoisyLabels,
    apply_label_noise,
    check_noise_params,
    labels_hash,
)

__all__ = [
    "Augment",
    "draw_views",
    "render_views",
    "DATASETS",
    "ImageData",
    "check_validation",
    "load_dataset",
    "synthetic",
    "CIFAR10_ASYMMETRIC_MAP",
    "NOISE_KINDS",
    "NoisyLabels",
    "apply_label_noise",
    "check_noise_params",
    "labels_hash",
]
