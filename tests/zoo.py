"""Small reference classifiers, one per layer family, for "any model a user brings".

Each class is written by hand with ``torch.nn`` only (no torchvision / timm), from the
block diagram of its paper, scaled down to a few thousand to a few hundred thousand
parameters so that a CPU runs it in milliseconds:

* ``depthwise`` -- :class:`MobileNetV2Tiny`: inverted residuals with linear bottlenecks
  (expand 1x1, depthwise 3x3, project 1x1 without activation, add when shapes match),
  BatchNorm, ReLU6. Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
  Bottlenecks", CVPR.
* ``grouped`` -- :class:`ResNeXtTiny`: bottleneck blocks whose 3x3 convolution is grouped
  (cardinality 4), residual add with a projection shortcut when shapes change. Xie et al.
  2017, "Aggregated Residual Transformations for Deep Neural Networks", CVPR.
* ``se`` -- :class:`SENetTiny`: residual blocks of plain convolutions gated by
  squeeze-and-excitation (global average pool, linear reduce, ReLU, linear expand,
  Hardsigmoid, channel-wise product), Hardswish / SiLU activations. Hu et al. 2018,
  "Squeeze-and-Excitation Networks", CVPR; the hard gate and activations from Howard et
  al. 2019, "Searching for MobileNetV3", ICCV.
* ``shuffle`` -- :class:`ShuffleNetTiny`: ShuffleNet v2 units (channel split, a branch of
  1x1 / depthwise 3x3 / 1x1, concatenation, channel shuffle by reshape-transpose-reshape;
  both branches strided in the downsampling unit). Ma et al. 2018, "ShuffleNet V2:
  Practical Guidelines for Efficient CNN Architecture Design", ECCV.
* ``concat`` -- :class:`DenseNetTiny`: dense blocks (each layer BN-ReLU-conv1x1-BN-ReLU-
  conv3x3, its output concatenated to all it read), transition layers (BN-ReLU-conv1x1,
  average pool), and a fire module (squeeze 1x1, expand 1x1 and 3x3 concatenated). Huang et
  al. 2017, "Densely Connected Convolutional Networks", CVPR; Iandola et al. 2016,
  "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
  arXiv:1602.07360.
* ``norms`` -- :class:`NormZooNet`: no BatchNorm; GroupNorm, channels-last LayerNorm,
  GELU / SiLU / Hardswish, Dropout, adaptive average pooling and ``torch.flatten`` in the
  middle of the forward pass, then more layers.
* ``vit`` -- :class:`ViTTiny`: patch embedding (a convolution with stride = patch), class
  token, learned position embedding sized from the image at construction, pre-norm
  transformer blocks with explicit multi-head self-attention (``nn.Linear`` qkv and proj,
  ``softmax(q k^T / sqrt(head_dim))``) and a GELU MLP, a linear head on the class token
  (or on the mean of the patch tokens, ``pool="mean"``). Dosovitskiy et al. 2021, "An
  Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", ICLR.

Every class takes ``(in_channels, num_classes, image_size)`` and maps ``(N, C, H, W)``
images to ``(N, num_classes)`` logits, its last operation an ``nn.Linear`` (the head
:func:`fedticket.models.adapt.from_module` finds). :data:`SHAPES` are the image shapes
the suite uses; :func:`build` makes a model for one of them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SHAPES: list[tuple[int, int, int]] = [(1, 28, 28), (3, 32, 32)]


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias, "same" padding) -> BatchNorm -> activation (none when ``act`` is None)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------ MobileNetV2
class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1 (skipped when ``expand == 1``), depthwise 3x3,
    linear 1x1 projection; the input is added back when stride 1 and widths match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),  # depthwise
            conv_bn(hidden, cout, 1, act=None),  # linear bottleneck
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Tiny(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), three stages of inverted residuals."""

    # (expansion t, output channels c, repeats n, first stride s), as in the paper's table 2
    CONFIG = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 48, 1, 1))

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 image_size: tuple[int, int] = (28, 28), last_channels: int = 128):
        super().__init__()
        cin = 16
        layers: list[nn.Module] = [conv_bn(in_channels, cin, 3, act=nn.ReLU6)]
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, last_channels, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(self.dropout(torch.flatten(x, 1)))


# --------------------------------------------------------------------------------- ResNeXt
class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck (form (c) of the paper's figure 3): 1x1 reduce to
    ``cardinality * width``, grouped 3x3 with ``groups = cardinality``, 1x1 expand, add."""

    def __init__(self, cin: int, cout: int, stride: int, cardinality: int, width: int):
        super().__init__()
        inner = cardinality * width
        self.reduce = conv_bn(cin, inner, 1)
        self.grouped = conv_bn(inner, inner, 3, stride, groups=cardinality)
        self.expand = conv_bn(inner, cout, 1, act=None)
        self.shortcut: nn.Module = (nn.Identity() if stride == 1 and cin == cout
                                    else conv_bn(cin, cout, 1, stride, act=None))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(self.grouped(self.reduce(x)))
        return self.relu(out + self.shortcut(x))


class ResNeXtTiny(nn.Module):
    """ResNeXt (Xie et al. 2017): stem, then stages of grouped bottleneck blocks."""

    # (output channels, blocks, first stride); every stage has cardinality 4
    STAGES = ((64, 2, 1), (128, 2, 2))

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 image_size: tuple[int, int] = (28, 28), cardinality: int = 4,
                 width: int = 4):
        super().__init__()
        self.stem = conv_bn(in_channels, 32, 3)
        blocks: list[nn.Module] = []
        cin, w = 32, width
        for cout, n, stride in self.STAGES:
            for i in range(n):
                blocks.append(ResNeXtBlock(cin, cout, stride if i == 0 else 1, cardinality, w))
                cin = cout
            w *= 2  # the bottleneck width doubles with the output width, as in the paper
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


# ----------------------------------------------------------------------------------- SENet
class SqueezeExcite(nn.Module):
    """Squeeze (global average pool) and excitation (linear reduce by ``ratio``, ReLU,
    linear expand, Hardsigmoid), then the input scaled channel by channel."""

    def __init__(self, channels: int, ratio: int = 4):
        super().__init__()
        squeezed = max(4, channels // ratio)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Linear(channels, squeezed)
        self.act = nn.ReLU()
        self.expand = nn.Linear(squeezed, channels)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        s = self.pool(x).view(n, c)
        s = self.gate(self.expand(self.act(self.reduce(s))))
        return x * s.view(n, c, 1, 1)


class SEBlock(nn.Module):
    """SE-ResNet basic block (the paper's figure 3, right): conv3x3-BN-SiLU-conv3x3-BN, SE
    on the branch, residual add (projection shortcut when shapes change), SiLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride, act=nn.SiLU)
        self.conv2 = conv_bn(cout, cout, 3, act=None)
        self.se = SqueezeExcite(cout)
        self.shortcut: nn.Module = (nn.Identity() if stride == 1 and cin == cout
                                    else conv_bn(cin, cout, 1, stride, act=None))
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(self.conv2(self.conv1(x))) + self.shortcut(x))


class SENetTiny(nn.Module):
    """SE-ResNet (Hu et al. 2018) with MobileNetV3's Hardswish stem and Hardsigmoid gate."""

    STAGES = ((16, 1), (32, 2), (48, 2))  # (output channels, stride), one block each

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 image_size: tuple[int, int] = (28, 28)):
        super().__init__()
        self.stem = conv_bn(in_channels, 16, 3, act=nn.Hardswish)
        blocks: list[nn.Module] = []
        cin = 16
        for cout, stride in self.STAGES:
            blocks.append(SEBlock(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


# ----------------------------------------------------------------------------- ShuffleNetV2
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` groups of channels: reshape, transpose, reshape."""
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet v2 unit (the paper's figure 3 (c) and (d)). Stride 1: split the channels
    in half, pass one half through, run 1x1-dw3x3-1x1 on the other, concatenate, shuffle.
    Stride 2: no split; both branches see the input (dw3x3-1x1 and 1x1-dw3x3-1x1)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 1:
            assert cin == cout, "a stride-1 ShuffleNet v2 unit keeps its width"
            self.left: nn.Module = nn.Identity()
            branch_in = cin // 2
        else:
            self.left = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                                      conv_bn(cin, half, 1))
            branch_in = cin
        self.right = nn.Sequential(
            conv_bn(branch_in, half, 1),
            conv_bn(half, half, 3, stride, groups=half, act=None),
            conv_bn(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.right(x2)), dim=1)
        else:
            out = torch.cat((self.left(x), self.right(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetTiny(nn.Module):
    """ShuffleNet v2 (Ma et al. 2018): stem, stages of one downsampling unit and basic
    units, a 1x1 convolution, global pooling, linear head."""

    STAGES = ((48, 2), (96, 2))  # (output channels, units); the first unit has stride 2

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 image_size: tuple[int, int] = (28, 28), last_channels: int = 192):
        super().__init__()
        self.stem = conv_bn(in_channels, 24, 3)
        units: list[nn.Module] = []
        cin = 24
        for cout, n in self.STAGES:
            for i in range(n):
                units.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*units)
        self.last = conv_bn(cin, last_channels, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.last(self.stages(self.stem(x))))
        return self.fc(torch.flatten(x, 1))


# -------------------------------------------------------------------- DenseNet / SqueezeNet
class DenseLayer(nn.Module):
    """DenseNet-B layer: BN-ReLU-conv1x1 (``bottleneck * growth``)-BN-ReLU-conv3x3
    (``growth``); its output is concatenated to its input."""

    def __init__(self, cin: int, growth: int, bottleneck: int = 4):
        super().__init__()
        inner = bottleneck * growth
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, inner, 1, bias=False),
            nn.BatchNorm2d(inner), nn.ReLU(), nn.Conv2d(inner, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.body(x)), dim=1)


class DenseBlock(nn.Sequential):
    def __init__(self, cin: int, layers: int, growth: int):
        super().__init__(*(DenseLayer(cin + i * growth, growth) for i in range(layers)))
        self.out_channels = cin + layers * growth


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 (compression to ``cout``)-AvgPool 2x2."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2))


class Fire(nn.Module):
    """SqueezeNet's fire module: squeeze 1x1 to ``s``, ReLU, then expand 1x1 and 3x3 (``e``
    each) concatenated, ReLU."""

    def __init__(self, cin: int, s: int, e: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, s, 1)
        self.expand1 = nn.Conv2d(s, e, 1)
        self.expand3 = nn.Conv2d(s, e, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.relu(self.squeeze(x))
        return self.relu(torch.cat((self.expand1(s), self.expand3(s)), dim=1))


class DenseNetTiny(nn.Module):
    """DenseNet-BC (Huang et al. 2017): two dense blocks with a compressing transition
    between them, then a SqueezeNet fire module (Iandola et al. 2016), BN-ReLU, global
    pooling and a linear head. Every join is a concatenation."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 image_size: tuple[int, int] = (28, 28), growth: int = 8, layers: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 2 * growth, 3, padding=1, bias=False)
        self.block1 = DenseBlock(2 * growth, layers, growth)
        c = self.block1.out_channels
        self.trans1 = Transition(c, c // 2)  # compression 0.5
        self.block2 = DenseBlock(c // 2, layers, growth)
        c = self.block2.out_channels
        self.trans2 = Transition(c, c // 2)
        self.fire = Fire(c // 2, 16, 32)
        self.norm = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.block1(self.stem(x)))
        x = self.fire(self.trans2(self.block2(x)))
        x = self.pool(self.relu(self.norm(x)))
        return self.fc(torch.flatten(x, 1))


# ---------------------------------------------------------------------------- normalisations
class ChannelsLastLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` map (as in ConvNeXt): permute
    to channels-last, normalise, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class NormZooNet(nn.Module):
    """A plain conv net with no BatchNorm: GroupNorm, LayerNorm (channels-last and on
    vectors), GELU, SiLU, Hardswish, Dropout2d / Dropout, adaptive average pooling to 2x2,
    ``torch.flatten`` and two linear layers after it."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 image_size: tuple[int, int] = (28, 28), hidden: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, 16)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.gn2 = nn.GroupNorm(8, 32)
        self.act2 = nn.SiLU()
        self.conv3 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.ln3 = ChannelsLastLayerNorm(32)
        self.act3 = nn.Hardswish()
        self.drop2d = nn.Dropout2d(0.1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(32 * 2 * 2, hidden)
        self.ln_fc = nn.LayerNorm(hidden)
        self.act_fc = nn.GELU()
        self.dropout = nn.Dropout(0.2)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.gn1(self.conv1(x)))
        x = self.act2(self.gn2(self.conv2(x)))
        x = self.drop2d(self.act3(self.ln3(self.conv3(x))))
        x = torch.flatten(self.pool(x), 1)
        x = self.dropout(self.act_fc(self.ln_fc(self.fc1(x))))
        return self.fc2(x)


# ------------------------------------------------------------------------------------- ViT
class Attention(nn.Module):
    """Multi-head self-attention written out: one ``nn.Linear`` for q, k and v, scaled
    dot-product attention per head, an output projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        assert dim % num_heads == 0, "dim must be a multiple of num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (n, heads, tokens, head_dim)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, t, d)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTTiny(nn.Module):
    """Vision transformer (Dosovitskiy et al. 2021). The patch grid, and so the position
    embedding, is ``image_size // patch_size`` (a remainder is cropped by the stride-patch
    convolution). ``pool = "cls"`` reads the class token, ``"mean"`` the patch tokens'
    mean (no class token then)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 image_size: tuple[int, int] = (28, 28), *, patch_size: int = 4,
                 dim: int = 64, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 2.0,
                 pool: str = "cls"):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.grid = (image_size[0] // patch_size, image_size[1] // patch_size)
        tokens = self.grid[0] * self.grid[1] + (1 if pool == "cls" else 0)
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, num_heads, mlp_ratio)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (n, patches, dim)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.norm(self.blocks(x + self.pos_embed))
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        return self.head(x)


# ------------------------------------------------------------------------------------- zoo
ZOO: dict[str, type[nn.Module]] = {
    "depthwise": MobileNetV2Tiny,
    "grouped": ResNeXtTiny,
    "se": SENetTiny,
    "shuffle": ShuffleNetTiny,
    "concat": DenseNetTiny,
    "norms": NormZooNet,
    "vit": ViTTiny,
}


def build(name: str, shape: tuple[int, int, int], num_classes: int = 10) -> nn.Module:
    """The ``name`` family's model (a key of :data:`ZOO`) for ``(C, H, W)`` images."""
    c, h, w = shape
    return ZOO[name](in_channels=c, num_classes=num_classes, image_size=(h, w))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    for family, cls in ZOO.items():
        for shape in SHAPES:
            net = build(family, shape).eval()
            with torch.no_grad():
                out = net(torch.rand(2, *shape))
            print(f"{family:10s} {cls.__name__:16s} {shape}: {num_params(net):7,d} params, "
                  f"logits {tuple(out.shape)}")
