"""Model zoo: ``build_model(name, num_classes, in_channels)``.

Names: ``wrn-D-W`` (pre-activation WideResNet), ``resnet-D`` (CIFAR ResNet),
``cnn-large`` / ``cnn-medium`` / ``cnn-small`` (for 8x8 digits); each registered by
``kd_core.registry.register_model``, as a plugin's models are.
"""

from __future__ import annotations

from torch import nn

from ..names import CNN_SIZES, MODEL_NAMES, MODEL_REGISTRY, RESNET, WRN, check_model_name
from ..registry import register_model
from .base import Classifier
from .cnn import SmallCNN
from .resnet import CifarResNet
from .wrn import WideResNet

__all__ = ["Classifier", "build_model", "check_model_name", "MODEL_NAMES"]


@register_model("wrn-D-W", pattern=WRN.pattern)
def wide_resnet(num_classes: int, in_channels: int, depth: str, width: str) -> Classifier:
    return WideResNet(int(depth), int(width), num_classes, in_channels)


@register_model("resnet-D", pattern=RESNET.pattern)
def cifar_resnet(num_classes: int, in_channels: int, depth: str) -> Classifier:
    return CifarResNet(int(depth), num_classes, in_channels)


def _cnn(name: str):
    channels, hidden = CNN_SIZES[name]

    @register_model(name)
    def small_cnn(num_classes: int, in_channels: int) -> Classifier:
        return SmallCNN(channels, hidden, num_classes, in_channels)


for _name in CNN_SIZES:
    _cnn(_name)


def build_model(name: str, num_classes: int, in_channels: int = 3) -> Classifier:
    """Build a freshly initialised model by name; unknown names list the known ones.

    The model carries ``spec`` (name, num_classes, in_channels) so a checkpoint can rebuild it.
    """
    entry, groups = MODEL_REGISTRY.resolve(name)
    model = entry.load()(num_classes, in_channels, *groups)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} ({entry.origin}): its builder returned "
                         f"{type(model).__name__}, not a torch.nn.Module")
    model.spec = {"name": name, "num_classes": num_classes, "in_channels": in_channels}
    return model
