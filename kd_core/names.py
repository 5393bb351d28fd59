"""What kd_core accepts by name (datasets, losses, label-noise kinds, models) and the checks of
each, without importing torch: a sweep spec is validated, and `kdsweep status` runs, in a
fraction of a second.
"""

from __future__ import annotations

import math
import re

from . import registry
from .registry import DATASETS as DATASET_REGISTRY
from .registry import LOSSES as LOSS_REGISTRY
from .registry import MODELS as MODEL_REGISTRY

DATASETS = ("digits", "cifar10", "cifar100", "synthetic")  # kdsweep's own
# What a plan (and a report) needs to know of a dataset without reading it: training and test
# images, classes, image shape, and the augmentation's crop padding and flip (so its views).
DATASET_FACTS = {
    "cifar100": {"train": 50_000, "test": 10_000, "classes": 100, "shape": (3, 32, 32),
                 "padding": 4, "flip": True},
    "cifar10": {"train": 50_000, "test": 10_000, "classes": 10, "shape": (3, 32, 32),
                "padding": 4, "flip": True},
    "digits": {"train": 1347, "test": 450, "classes": 10, "shape": (1, 8, 8), "padding": 0,
               "flip": False},
}
# Class names by label, as the datasets' own meta files list them (figures name classes).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar",
    "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile",
    "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster",
    "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm"
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)
CLASS_NAMES = {
    "cifar100": CIFAR100_CLASSES,
    "cifar10": CIFAR10_CLASSES,
    "digits": tuple(str(d) for d in range(10)),
}
LOSSES = ("ce", "kl", "mse")  # kdsweep's own; a plugin registers more (kd_core.registry)
NOISE_KINDS = ("symmetric", "asymmetric")

# name -> (conv channels of the two stages, hidden width of the penultimate layer)
CNN_SIZES = {
    "cnn-large": ((32, 64), 128),
    "cnn-medium": ((16, 32), 64),
    "cnn-small": ((8, 16), 32),
}
MODEL_NAMES = ("wrn-D-W", "resnet-D", *CNN_SIZES)
WRN = re.compile(r"wrn-(\d+)-(\d+)")
RESNET = re.compile(r"resnet-(\d+)")


def _check_wrn(name: str) -> None:
    m = WRN.fullmatch(name)
    if (int(m[1]) - 4) % 6 or int(m[1]) < 10 or int(m[2]) < 1:
        raise ValueError(f"bad WideResNet {name!r}: depth must be 6n+4 and width >= 1")


def _check_resnet(name: str) -> None:
    depth = int(RESNET.fullmatch(name)[1])
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"bad CIFAR ResNet {name!r}: depth must be 6n+2")


# kdsweep's own entries, declared by name (with their params and the module whose decorators
# define them) so that a spec check resolves them without importing torch; the module's
# @register_* fills the function in on first use, the same decorator a plugin uses.
LOSS_REGISTRY.declare("ce", "kd_core.losses")
LOSS_REGISTRY.declare("kl", "kd_core.losses", params=("tau", "alpha"))
LOSS_REGISTRY.declare("mse", "kd_core.losses", params=("alpha",))
MODEL_REGISTRY.declare("wrn-D-W", "kd_core.models", pattern=WRN, check=_check_wrn,
                       facts={"hint": "(D = 6n+4, e.g. wrn-28-4)"})
MODEL_REGISTRY.declare("resnet-D", "kd_core.models", pattern=RESNET, check=_check_resnet,
                       facts={"hint": "(D = 6n+2, e.g. resnet-20)"})
for _name in CNN_SIZES:
    MODEL_REGISTRY.declare(_name, "kd_core.models")
for _name in DATASETS:
    DATASET_REGISTRY.declare(_name, "kd_core.data.datasets", facts=DATASET_FACTS.get(_name, {}))


# The smallest tau: z/tau overflows fp16/bf16 logits (max ~65504) well before 1e-320, and the
# paper's smallest studied tau is 0.1; 0.01 leaves room below it.
MIN_TAU = 0.01


def check_loss_params(loss: str, tau: float, alpha: float, params: dict | None = None) -> None:
    """Raise ValueError naming the bad argument; shared by the trainer config and the sweep spec.
    ``params``: a registered loss's params beyond tau and alpha."""
    registry.check_loss_values(loss, params or {})
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau) or tau <= 0:
        raise ValueError(f"tau must be a positive number or inf, got {tau!r}")
    if tau < MIN_TAU:
        raise ValueError(f"tau must be at least {MIN_TAU} (or inf), got {tau!r}")
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")


def check_noise_params(kind: str, rate: float) -> None:
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}: expected one of {', '.join(NOISE_KINDS)}")
    if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must lie in [0, 1), got {rate!r}")


def check_model_name(name: str) -> None:
    """Validate a name (depth rules included) without allocating the model's weights."""
    MODEL_REGISTRY.resolve(name)


def check_dataset_name(name: str) -> None:
    DATASET_REGISTRY.resolve(name)


def check_validation(fraction: float) -> None:
    """The share of the training split a run may hold out for validation: [0, 0.5)."""
    if not (isinstance(fraction, (int, float)) and 0 <= fraction < 0.5):
        raise ValueError(f"validation: a fraction of the training split in [0, 0.5), got "
                         f"{fraction!r}")
