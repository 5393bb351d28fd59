"""Small CNNs sized for 8x8 inputs (scikit-learn digits): one to teach, smaller ones to learn."""

from __future__ import annotations

from torch import nn

from .base import Classifier, init_weights


class SmallCNN(Classifier):
    def __init__(
        self, channels: tuple[int, int], hidden: int, num_classes: int, in_channels: int = 1
    ):
        super().__init__()
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c1, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c2, hidden),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(hidden, num_classes)
        init_weights(self)

    def features(self, x):
        return self.body(x)
