"""Pre-activation WideResNet-D-W (Zagoruyko & Komodakis 2016), dropout 0, as in the paper."""

from __future__ import annotations

from torch import nn

from .base import Classifier, init_weights


class _PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            None if c_in == c_out and stride == 1 else nn.Conv2d(c_in, c_out, 1, stride, bias=False)
        )

    def forward(self, x):
        o = self.relu(self.bn1(x))
        # The projection shortcut takes the pre-activated input, as in the reference code.
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(self.relu(self.bn2(self.conv1(o))))
        return o + skip


class WideResNet(Classifier):
    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        for g in range(3):
            for i in range(n):
                c_in = widths[g] if i == 0 else widths[g + 1]
                layers.append(
                    _PreActBlock(c_in, widths[g + 1], (1 if g == 0 else 2) if i == 0 else 1)
                )
        layers += [nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def features(self, x):
        return self.pool(self.body(x)).flatten(1)
