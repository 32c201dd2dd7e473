"""Any PyTorch image classifier as a fedticket :class:`~fedticket.models.Classifier`.

A user's model is split into a **body** and a **head** by one rule: the head is the
last ``nn.Linear`` the forward pass calls (or the module path the user names), and
the body is everything before it. The split is checked, not assumed: on a probe
batch the model's output must be exactly the head's output, so a model that does
more after its last linear layer (a softmax, a second branch) is refused with a
message that says to name the head or drop the extra step.

The body is the user's own module with its head replaced by ``nn.Identity``, so
``body(x)`` returns the features the head reads and ``head(body(x))`` is the model's
output; parameter names become ``body.<user path>`` and ``head.weight``.

The DAE decoder, when the user gives none, is built from the body's output width
``F`` and the image shape ``C x H x W`` (:func:`auto_decoder`): a linear layer to a
small feature map, a few upsample-and-convolve stages, and a final convolution to
``C`` channels at exactly ``H x W``.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from fedticket.errors import ConfigError
from fedticket.models.base import Classifier

DECODER_START_CHANNELS = 64
"""Channels of the decoder's first feature map; each upsampling stage halves them."""
DECODER_MIN_CHANNELS = 16
DECODER_MIN_SIDE = 4
"""The decoder starts from the smallest map whose sides stay at least this large."""
DECODER_MAX_STAGES = 3


def load_factory(name: str) -> Callable[[int], nn.Module]:
    """The factory named ``"PACKAGE.MODULE:FACTORY"``, imported from ``PYTHONPATH`` or the
    current folder (as ``python -m`` would)."""
    module_name, _, attr = name.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"model.name {name!r}: cannot import {module_name!r} ({e}); put the "
                          "module in the current folder or on PYTHONPATH") from None
    except Exception as e:  # the user's module failed while importing
        raise ConfigError(f"model.name {name!r}: importing {module_name!r} failed: "
                          f"{type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model.name {name!r}: {module_name} has no callable {attr!r}; "
                          "define FACTORY(num_classes: int) -> nn.Module")
    return factory


def build_user_model(name: str, input_shape: tuple[int, int, int], num_classes: int,
                     head: str = "") -> Classifier:
    """Call the factory ``name`` with ``num_classes`` and adapt what it returns."""
    factory = load_factory(name)
    try:
        net = factory(num_classes)
    except Exception as e:
        raise ConfigError(f"model.name {name!r}: {name}({num_classes}) failed: "
                          f"{type(e).__name__}: {e}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model.name {name!r} returned {type(net).__name__}, not an "
                          "nn.Module; return the classifier")
    return from_module(net, input_shape, num_classes, head=head, where=f"model {name!r}")


def from_module(
    net: nn.Module,
    input_shape: tuple[int, int, int],
    num_classes: int,
    head: str = "",
    decoder: Callable[[], nn.Module] | None = None,
    where: str = "the model",
) -> Classifier:
    """Wrap ``net`` (a classifier of ``C x H x W`` images) as body + head.

    ``net`` is taken over: its head module is replaced by ``nn.Identity`` in place.

    Parameters
    ----------
    net
        Maps ``(N, C, H, W)`` float images to ``(N, num_classes)`` logits.
    head
        Module path of the head (an ``nn.Linear``); empty: the last ``nn.Linear`` the
        forward pass calls.
    decoder
        Builds a fresh DAE decoder from the body's ``(N, F)`` features to ``(N, C, H, W)``
        logits of the image; ``None``: :func:`auto_decoder`.
    """
    _check_batchnorm(net, where)
    probe = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    calls: list[tuple[str, nn.Linear]] = []
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for path, m in net.named_modules():
        if isinstance(m, nn.Linear):
            def hook(mod: nn.Module, args: tuple, out: torch.Tensor, path: str = path) -> None:
                calls.append((path, mod))  # type: ignore[arg-type]
                seen[path] = (args[0].detach(), out.detach())
            hooks.append(m.register_forward_hook(hook))
    try:
        out = probe_output(net, probe, where)
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{where} returns {shape} for 2 images, expected (2, {num_classes}) "
                          f"logits for the data's {num_classes} classes")
    if head:
        mods = dict(net.named_modules())
        if not isinstance(mods.get(head), nn.Linear):
            raise ConfigError(f"model.head {head!r} is not an nn.Linear module of {where}")
        if head not in seen:
            raise ConfigError(f"model.head {head!r} is not called by the forward pass of {where}")
    elif not calls:
        raise ConfigError(f"{where} has no nn.Linear layer to serve as the head; end it with "
                          "one, or name the head with model.head")
    else:
        head = calls[-1][0]
    feats, head_out = seen[head]
    if not torch.equal(head_out, out):
        raise ConfigError(f"the output of {where} is not the output of its head {head!r} (the "
                          "last nn.Linear called); drop what comes after it (a softmax?) or "
                          "name the head with model.head")
    head_mod = dict(net.named_modules())[head]
    assert isinstance(head_mod, nn.Linear)
    parent_path, _, child = head.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    setattr(parent, child, nn.Identity())
    body_out = probe_output(net, probe, where)
    if not torch.equal(body_out, feats):
        raise ConfigError(f"{where}: without its head {head!r} it does not return what the head "
                          "read (the head is used more than once?); name the head with model.head")
    if decoder is None:
        decoder = auto_decoder(int(feats.shape[1]), input_shape)
    return Classifier(net, head_mod, decoder)


def probe_output(net: nn.Module, probe: torch.Tensor, where: str) -> torch.Tensor:
    """``net(probe)`` in eval mode without gradients (BatchNorm statistics untouched),
    the mode restored after; a model that fails on the probe is a ConfigError."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            return net(probe)
    except Exception as e:  # the user's forward failing on images of this shape
        raise ConfigError(f"{where} fails on a {tuple(probe.shape)} batch of images: "
                          f"{type(e).__name__}: {e}") from None
    finally:
        net.train(was_training)


def _check_batchnorm(net: nn.Module, where: str) -> None:
    for path, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is None:
            raise ConfigError(
                f"{where}: BatchNorm {path!r} has momentum=None (a cumulative average), whose "
                "running statistics rest on a local step counter that cannot be averaged "
                "across clients; give it a momentum (PyTorch's default is 0.1)"
            )


def decoder_plan(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """``(stages, h0, w0)``: how many times to upsample, from which map size. The sides are
    halved while both stay at least :data:`DECODER_MIN_SIDE`, at most
    :data:`DECODER_MAX_STAGES` times; ``h0 = ceil(H / 2**stages)``."""
    _, h, w = input_shape
    stages = 0
    while (stages < DECODER_MAX_STAGES and h // 2 ** (stages + 1) >= DECODER_MIN_SIDE
           and w // 2 ** (stages + 1) >= DECODER_MIN_SIDE):
        stages += 1
    return stages, math.ceil(h / 2**stages), math.ceil(w / 2**stages)


def auto_decoder(features: int, input_shape: tuple[int, int, int]) -> Callable[[], nn.Module]:
    """A builder of DAE decoders from ``(N, features)`` to ``(N, C, H, W)`` logits.

    ``Linear(features, 64 * h0 * w0)``, ReLU, then per stage ``Upsample(x2)``, a 3x3
    convolution halving the channels (at least 16) and ReLU, a resize to exactly
    ``H x W`` when the doublings overshoot, and a 3x3 convolution to ``C`` channels
    (:func:`decoder_plan` picks the stages and ``h0 x w0``). For 1x28x28 images that is
    a 7x7 map and two stages; for 3x32x32, 4x4 and three.
    """
    c, h, w = input_shape
    stages, h0, w0 = decoder_plan(input_shape)

    def build() -> nn.Module:
        ch = DECODER_START_CHANNELS
        d: dict[str, nn.Module] = {
            "fc": nn.Linear(features, ch * h0 * w0),
            "relu_fc": nn.ReLU(),
            "unflatten": nn.Unflatten(1, (ch, h0, w0)),
        }
        for i in range(1, stages + 1):
            nxt = max(DECODER_MIN_CHANNELS, ch // 2)
            d[f"up{i}"] = nn.Upsample(scale_factor=2, mode="nearest")
            d[f"conv{i}"] = nn.Conv2d(ch, nxt, 3, padding=1)
            d[f"relu{i}"] = nn.ReLU()
            ch = nxt
        if (h0 * 2**stages, w0 * 2**stages) != (h, w):
            d["resize"] = nn.Upsample(size=(h, w), mode="nearest")
        d["out"] = nn.Conv2d(ch, c, 3, padding=1)
        return nn.Sequential(OrderedDict(d))

    return build
