"""CIFAR ResNet-D (He et al. 2016, D = 6n + 2): three stages of basic blocks, 16/32/64 channels."""

from __future__ import annotations

from torch import nn

from .base import Classifier, init_weights


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Identity()
            if c_in == c_out and stride == 1
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x):
        o = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(o)) + self.shortcut(x))


class CifarResNet(Classifier):
    def __init__(self, depth: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(
                f"CIFAR ResNet depth must be 6n+2 (8, 20, 32, 56, 110, ...), got {depth}"
            )
        n = (depth - 2) // 6
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        ]
        c_in = 16
        for g, c_out in enumerate((16, 32, 64)):
            for i in range(n):
                layers.append(_BasicBlock(c_in, c_out, 2 if (i == 0 and g > 0) else 1))
                c_in = c_out
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, num_classes)
        init_weights(self)

    def features(self, x):
        return self.pool(self.body(x)).flatten(1)
