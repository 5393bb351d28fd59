"""Model zoo: ``build_model(name, num_classes, in_channels)``.

Names: ``wrn-D-W`` (pre-activation WideResNet), ``resnet-D`` (CIFAR ResNet),
``cnn-large`` / ``cnn-medium`` / ``cnn-small`` (for 8x8 digits).
"""

from __future__ import annotations

import re

from .base import Classifier
from .cnn import CNN_SIZES, SmallCNN
from .resnet import CifarResNet
from .wrn import WideResNet

__all__ = ["Classifier", "build_model", "check_model_name", "MODEL_NAMES"]

MODEL_NAMES = ("wrn-D-W", "resnet-D", *CNN_SIZES)
_WRN = re.compile(r"wrn-(\d+)-(\d+)")
_RESNET = re.compile(r"resnet-(\d+)")


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown model {name!r}: known models are wrn-D-W (D = 6n+4, e.g. wrn-28-4), "
        f"resnet-D (D = 6n+2, e.g. resnet-20), {', '.join(CNN_SIZES)}"
    )


def build_model(name: str, num_classes: int, in_channels: int = 3) -> Classifier:
    """Build a freshly initialised model by name; unknown names list the known ones.

    The model carries ``spec`` (name, num_classes, in_channels) so a checkpoint can rebuild it.
    """
    if m := _WRN.fullmatch(name):
        model = WideResNet(int(m[1]), int(m[2]), num_classes, in_channels)
    elif m := _RESNET.fullmatch(name):
        model = CifarResNet(int(m[1]), num_classes, in_channels)
    elif name in CNN_SIZES:
        channels, hidden = CNN_SIZES[name]
        model = SmallCNN(channels, hidden, num_classes, in_channels)
    else:
        raise _unknown(name)
    model.spec = {"name": name, "num_classes": num_classes, "in_channels": in_channels}
    return model


def check_model_name(name: str) -> None:
    """Validate a name (depth rules included) without allocating the model's weights."""
    if m := _WRN.fullmatch(name):
        depth = int(m[1])
        if (depth - 4) % 6 or depth < 10 or int(m[2]) < 1:
            raise ValueError(f"bad WideResNet {name!r}: depth must be 6n+4 and width >= 1")
    elif m := _RESNET.fullmatch(name):
        depth = int(m[1])
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"bad CIFAR ResNet {name!r}: depth must be 6n+2")
    elif name not in CNN_SIZES:
        raise _unknown(name)
