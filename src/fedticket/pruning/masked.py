"""Training under a fixed mask: pruned weights start at zero and get zero gradient.

With the gradient of a pruned weight zeroed after every backward pass, SGD's
momentum buffer for it stays zero and weight decay adds ``wd * 0``, so the
weight stays exactly zero through every step without re-masking the values.
"""

from __future__ import annotations

import torch
from torch import nn

from fedticket.pruning.mask import Mask


class GradMask:
    """Zero the gradients of pruned entries; tensors with nothing pruned are skipped."""

    def __init__(self, model: nn.Module, mask: Mask | None):
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        if mask is None:
            return
        for name, p in model.named_parameters():
            if name in mask and not bool(mask[name].all()):
                self.pairs.append((p, mask.float(name)))

    def __call__(self) -> None:
        for p, m in self.pairs:
            if p.grad is not None:
                p.grad.mul_(m)


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Set every pruned weight of ``model`` to zero, in place."""
    for name, p in model.named_parameters():
        if name in mask:
            p.mul_(mask.float(name))
