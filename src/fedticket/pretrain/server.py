"""Server-side training before pruning: a denoising autoencoder or the supervised oracle.

Both objectives share one loop (:class:`ServerTrainer`); only the loss differs.
The DAE trains the classifier's body as its encoder with a fresh mirrored
decoder, which is kept across iterative-pruning levels and thrown away after.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fedticket.errors import DivergenceError
from fedticket.flops import layer_costs, train_flops_per_sample
from fedticket.models import Classifier, fast_layout, plain_layout
from fedticket.pretrain.noise import NOISES
from fedticket.pruning.mask import Mask
from fedticket.pruning.masked import GradMask, apply_mask
from fedticket.spec import PretrainSpec

Objective = Callable[[torch.Tensor, torch.Tensor | None, torch.Generator], torch.Tensor]


class _Autoencoder(nn.Module):
    def __init__(self, body: nn.Module, decoder: nn.Module):
        super().__init__()
        self.body = body
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.body(x))


@dataclass
class ServerLog:
    """What the server spent and how the loss went, epoch by epoch."""

    epoch_losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    flops: int = 0
    samples: int = 0


class ServerTrainer:
    """Train ``model`` (DAE body or whole classifier) on the server pool.

    Parameters
    ----------
    model:
        The classifier; trained in place.
    spec:
        ``spec.kind`` selects the objective: ``dae`` or ``supervised``.
    x, y:
        The pool. ``y`` is used (and required) only by ``supervised``.
    generator:
        Drives batching and corruption, so runs repeat exactly.
    """

    def __init__(
        self,
        model: Classifier,
        spec: PretrainSpec,
        x: torch.Tensor,
        y: torch.Tensor | None,
        generator: torch.Generator,
    ):
        self.model, self.spec, self.x, self.y, self.g = model, spec, x, y, generator
        if spec.kind == "dae":
            self.net: nn.Module = _Autoencoder(model.body, model.decoder())
            self.objective = self._dae_loss
        elif spec.kind == "supervised":
            if y is None:
                raise ValueError("supervised pretraining needs the pool's labels")
            self.net = model
            self.objective = self._supervised_loss
        else:
            raise ValueError(f"nothing to train for pretrain kind {spec.kind!r}")
        self.log = ServerLog()
        self.on_epoch: Callable[[int, float], None] | None = None

    def _dae_loss(self, xb: torch.Tensor, yb: torch.Tensor | None, g: torch.Generator):
        noisy = NOISES[self.spec.noise](xb, self.spec.noise_level, g)
        logits = self.net(noisy)
        if self.spec.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, xb)
        return F.mse_loss(torch.sigmoid(logits), xb)

    def _supervised_loss(self, xb: torch.Tensor, yb: torch.Tensor | None, g: torch.Generator):
        assert yb is not None
        return F.cross_entropy(self.net(xb), yb)

    def reconstruction_loss(self, x: torch.Tensor) -> float:
        """Mean reconstruction loss on clean ``x`` (DAE only), for checking progress."""
        with torch.no_grad():
            logits = self.net(x)
            if self.spec.loss == "bce":
                return float(F.binary_cross_entropy_with_logits(logits, x))
            return float(F.mse_loss(torch.sigmoid(logits), x))

    def train(self, epochs: int, mask: Mask | None = None) -> list[float]:
        """Run ``epochs`` epochs under ``mask``; return the mean loss of each."""
        if epochs == 0:
            return []
        if mask is not None:
            apply_mask(self.model, mask)
        params = list(self.net.parameters())
        if self.spec.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=self.spec.lr)
        else:
            opt = torch.optim.SGD(params, lr=self.spec.lr, momentum=0.9)
        grad_mask = GradMask(self.model, mask)
        per_sample = train_flops_per_sample(layer_costs(self.net, tuple(self.x.shape[1:]), mask))
        n, bs = len(self.x), self.spec.batch_size
        losses: list[float] = []
        self.net.train()
        start = time.perf_counter()
        fast_layout(self.net)  # the optimizer's state follows the parameters' layout
        try:
            self._epochs(epochs, opt, grad_mask, n, bs, losses)
        finally:
            plain_layout(self.net)
        self.log.wall_s += time.perf_counter() - start
        self.log.flops += per_sample * n * epochs
        self.log.samples += n * epochs
        self.log.epoch_losses.extend(losses)
        return losses

    def _epochs(
        self, epochs: int, opt: torch.optim.Optimizer, grad_mask: GradMask, n: int, bs: int,
        losses: list[float],
    ) -> None:
        for _ in range(epochs):
            perm = torch.randperm(n, generator=self.g)
            total = torch.zeros(())
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                yb = self.y[idx] if self.y is not None else None
                loss = self.objective(self.x[idx], yb, self.g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_mask()
                opt.step()
                total += loss.detach() * len(idx)
            mean = float(total) / n
            if not math.isfinite(mean):
                raise DivergenceError(
                    f"server {self.spec.kind} training diverged (loss {mean}); "
                    "lower pretrain.lr"
                )
            losses.append(mean)
            if self.on_epoch is not None:
                self.on_epoch(len(self.log.epoch_losses) + len(losses), mean)
