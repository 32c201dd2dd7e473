"""A small CIFAR-style residual network with BatchNorm (He et al. 2016, section 4.2).

``resnet8``: a 3x3 stem convolution, three stages of one basic block each (two 3x3
convolutions with BatchNorm, added to the block's input), widths 16 / 32 / 64, the
second and third stages halving the map with stride 2 and a 1x1 convolution + BatchNorm
on the shortcut (option B), then global average pooling and one linear head. On
1x28x28 Fashion-MNIST images it has 77,754 parameters, 98.3% of them in convolutions,
and 9.35 M forward multiply-adds per image; the FedAvg CNN has 1.66 M parameters, 97%
in one linear layer, and 12.3 M multiply-adds (``tests/test_models.py`` checks these
numbers). Depth and width were fixed before any study run, so that a run costs about
what the CNN's does.

The residual adds tie channels together: the stem, both blocks' second convolutions
and the shortcut projections of a stage write into the same channels, so structured
pruning must remove them together (:mod:`fedticket.pruning.structured`).
"""

from __future__ import annotations

from torch import nn

from fedticket.models.adapt import auto_decoder
from fedticket.models.base import Classifier


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x):  # type: ignore[no-untyped-def]
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetBody(nn.Module):
    """Stem, stages, global average pooling: ``(N, C, H, W) -> (N, widths[-1])``."""

    def __init__(self, c_in: int, widths: tuple[int, ...], blocks: int):
        super().__init__()
        self.stem = nn.Conv2d(c_in, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        layers: list[nn.Module] = []
        prev = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(prev, w, 2 if i > 0 and b == 0 else 1))
                prev = w
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.flatten(self.pool(self.stages(self.relu(self.bn(self.stem(x))))))


def resnet(input_shape: tuple[int, int, int], num_classes: int,
           widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1) -> Classifier:
    """The residual classifier; its DAE decoder is :func:`~fedticket.models.adapt.auto_decoder`."""
    body = ResNetBody(input_shape[0], widths, blocks)
    return Classifier(body, nn.Linear(widths[-1], num_classes),
                      auto_decoder(widths[-1], input_shape))
