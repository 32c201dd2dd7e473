"""A model fedticket has never seen: a small residual network with BatchNorm.

fedticket loads it from a config with ``[model] name = "mymodel:build"`` (this folder is
the current folder, or on PYTHONPATH), or takes an instance in the Python API
(``fedticket.find_ticket(SmallResNet(10), images)``).
"""

from __future__ import annotations

import torch
from torch import nn


class SmallResNet(nn.Module):
    """conv-BN stem, one residual block, a strided conv-BN, pooling, a linear head."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.block_a = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.block_a_bn = nn.BatchNorm2d(width)
        self.block_b = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.block_b_bn = nn.BatchNorm2d(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.down_bn = nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem_bn(self.stem(x)))
        r = torch.relu(self.block_a_bn(self.block_a(h)))
        h = torch.relu(h + self.block_b_bn(self.block_b(r)))  # the residual add
        h = torch.relu(self.down_bn(self.down(h)))
        return self.classifier(self.pool(h).flatten(1))


def build(num_classes: int) -> nn.Module:
    """The factory fedticket calls: ``FACTORY(num_classes) -> nn.Module``."""
    return SmallResNet(num_classes)
