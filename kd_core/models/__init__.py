"""Model zoo: ``build_model(name, num_classes, in_channels)``.

Names: ``wrn-D-W`` (pre-activation WideResNet), ``resnet-D`` (CIFAR ResNet),
``cnn-large`` / ``cnn-medium`` / ``cnn-small`` (for 8x8 digits).
"""

from __future__ import annotations

from ..names import CNN_SIZES, MODEL_NAMES, RESNET, WRN, check_model_name, unknown_model
from .base import Classifier
from .cnn import SmallCNN
from .resnet import CifarResNet
from .wrn import WideResNet

__all__ = ["Classifier", "build_model", "check_model_name", "MODEL_NAMES"]

def build_model(name: str, num_classes: int, in_channels: int = 3) -> Classifier:
    """Build a freshly initialised model by name; unknown names list the known ones.

    The model carries ``spec`` (name, num_classes, in_channels) so a checkpoint can rebuild it.
    """
    if m := WRN.fullmatch(name):
        model = WideResNet(int(m[1]), int(m[2]), num_classes, in_channels)
    elif m := RESNET.fullmatch(name):
        model = CifarResNet(int(m[1]), num_classes, in_channels)
    elif name in CNN_SIZES:
        channels, hidden = CNN_SIZES[name]
        model = SmallCNN(channels, hidden, num_classes, in_channels)
    else:
        raise unknown_model(name)
    model.spec = {"name": name, "num_classes": num_classes, "in_channels": in_channels}
    return model
