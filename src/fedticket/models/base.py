"""The classifier every fedticket model is (a body and a linear head), and the memory
layout its convolutions train in. The model registry, the user-model adapter and the
residual networks all build on this module; it imports none of them."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Classifier(nn.Module):
    """``head(body(x))``; ``decoder()`` builds a fresh mirrored DAE decoder."""

    def __init__(self, body: nn.Module, head: nn.Linear, decoder: Callable[[], nn.Module]):
        super().__init__()
        self.body = body
        self.head = head
        self._make_decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def decoder(self) -> nn.Module:
        return self._make_decoder()


def fast_layout(net: nn.Module) -> nn.Module:
    """``net`` with its conv weights in channels-last memory order, in place (a no-op
    without conv layers). The values are the same; only the layout changes. On this
    CPU build oneDNN's channels-last convolutions train the FedAvg CNN about 20% and
    evaluate it about 2.5x faster than the default order (docs/PERFORMANCE.md,
    ``benchmarks/layout.py``). Results agree to float rounding, not bit for bit."""
    return _layout(net, torch.channels_last)


def plain_layout(net: nn.Module) -> nn.Module:
    """Undo :func:`fast_layout` in place: every parameter contiguous again."""
    return _layout(net, torch.contiguous_format)


_HOOK = "_fedticket_layout_hook"


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def _layout(net: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """What ``net.to(memory_format=...)`` does, typed: 4-d parameters (conv weights) and
    their gradients change layout in place; the Parameter objects stay the same. For
    channels-last, the net's 4-d input is put in that order too (a forward pre-hook):
    oneDNN picks its fast kernels only when input and weights agree."""
    if not any(isinstance(m, nn.Conv2d) for m in net.modules()):
        return net
    for p in net.parameters():
        if p.dim() == 4:
            p.data = p.data.to(memory_format=memory_format)  # restrides even size-1 dims
            if p.grad is not None:
                p.grad = p.grad.to(memory_format=memory_format)
    handle = net.__dict__.pop(_HOOK, None)
    if handle is not None:
        handle.remove()
    if memory_format == torch.channels_last:
        net.__dict__[_HOOK] = net.register_forward_pre_hook(_to_channels_last)
    return net
