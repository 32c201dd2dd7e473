"""Input corruptions for the denoising autoencoder. Inputs and outputs are in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import torch

Noise = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


def gaussian(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    """x + N(0, sigma^2), clipped to [0, 1] (Vincent et al. 2010, 'additive isotropic')."""
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp_(0.0, 1.0)


def masking(x: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    """Each input value set to 0 with probability ``fraction``."""
    keep = torch.rand(x.shape, generator=g) >= fraction
    return x * keep


def salt_pepper(x: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    """Each input value set, with probability ``fraction``, to 0 or 1 (equally likely)."""
    hit = torch.rand(x.shape, generator=g) < fraction
    salt = (torch.rand(x.shape, generator=g) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


NOISES: dict[str, Noise] = {"gaussian": gaussian, "masking": masking, "salt-pepper": salt_pepper}
