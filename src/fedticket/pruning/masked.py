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


BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance on the images ``x``
    (unlabeled) for the weights ``model`` holds now (pruned ones at zero): its running
    statistics are reset, and forward passes in train mode without gradients make them
    the plain average over all of ``x`` (momentum ``None``, as
    ``torch.optim.swa_utils.update_bn`` does). The model's mode and each layer's momentum
    are restored. Returns the number of layers recalibrated (0: no BatchNorm)."""
    norms = [m for m in model.modules() if isinstance(m, BATCHNORMS) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)
