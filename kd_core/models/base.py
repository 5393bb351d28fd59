"""The contract every model honours: logits out, penultimate features on request."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """A feature extractor followed by one linear head.

    ``forward(x)`` returns logits; ``forward(x, return_features=True)`` returns
    ``(logits, features)`` from the same pass, where features are the pre-logit representation
    the paper analyses (||r_s||, 2-D projections).
    """

    head: nn.Linear
    spec: dict  # set by build_model: name, num_classes, in_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.features(x)
        logits = self.head(feats)
        return (logits, feats) if return_features else logits


def init_weights(model: nn.Module) -> None:
    """He init for convs, unit BatchNorm, zero biases: the WRN reference initialisation."""
    if any(p.is_meta for p in model.parameters()):
        return  # shapes only (profile.forward_macs): meta init would import torch._dynamo (1 s)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def to_cpu_storage(model: nn.Module) -> nn.Module:
    """``model`` (built on the meta device) given uninitialised CPU storage, in place, as
    ``model.to_empty(device="cpu")`` does, without its cost: ``to_empty``'s ``empty_like`` of a
    meta tensor runs torch's Python reference, whose first call imports sympy and torch's
    symbolic shapes (~0.3 CPU-s of every driver's start). ``empty_strided`` of the same size,
    stride and dtype is the same tensor, made by the CPU's kernel."""
    return model._apply(lambda t: torch.empty_strided(t.size(), t.stride(), dtype=t.dtype,
                                                      device="cpu"))
