"""Seeded label noise on the training split (symmetric and asymmetric), identical on every machine.

numpy's PCG64 stream is specified bit for bit across platforms and versions, so the same
(labels, kind, rate, seed) give the same noisy labels everywhere; the returned hash lets a trial
record exactly which labels it trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..names import NOISE_KINDS, check_noise_params  # noqa: F401 (kd_core.data's API)

# The standard CIFAR-10 asymmetric map: truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_ASYMMETRIC_MAP: Mapping[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


@dataclass(frozen=True)
class NoisyLabels:
    labels: torch.Tensor  # int64, same shape as the input
    realised_rate: float  # fraction of labels that differ from the clean ones
    labels_hash: str  # sha256 prefix of the int64 label bytes


def labels_hash(labels: torch.Tensor) -> str:
    data = labels.detach().cpu().to(torch.int64).numpy().astype("<i8").tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def apply_label_noise(
    labels: torch.Tensor,
    num_classes: int,
    *,
    kind: str,
    rate: float,
    seed: int,
    class_map: Mapping[int, int] | None = None,
) -> NoisyLabels:
    """Corrupt training labels; returns the labels, the realised noise rate and their hash.

    symmetric: each label is, with probability ``rate``, replaced by a uniformly drawn *different*
    class. asymmetric: each label is, with probability ``rate``, mapped through ``class_map``
    (default: the next class, cyclically); classes the map omits stay clean.
    """
    check_noise_params(kind, rate)
    clean = labels.detach().cpu().to(torch.int64)
    if rate == 0:
        return NoisyLabels(labels.clone(), 0.0, labels_hash(clean))
    y = clean.numpy()
    rng = np.random.Generator(np.random.PCG64(seed))
    flip = rng.random(y.shape[0]) < rate
    if kind == "symmetric":
        # An offset in [1, K-1] lands uniformly on one of the other K-1 classes.
        offset = rng.integers(1, num_classes, size=y.shape[0])
        noisy = np.where(flip, (y + offset) % num_classes, y)
    else:
        if class_map is None:
            target = (np.arange(num_classes) + 1) % num_classes
        else:
            target = np.arange(num_classes)
            for src, dst in class_map.items():
                target[src] = dst
        noisy = np.where(flip, target[y], y)
    out = torch.from_numpy(noisy).to(labels.device)
    realised = float((noisy != y).mean())
    return NoisyLabels(out, realised, labels_hash(out))
