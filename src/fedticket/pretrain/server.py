"""Server-side training before pruning (``pretrain.kind``): a registry of objectives.

Every objective shares one loop (:class:`ServerTrainer`); only the trained module and
the loss differ. ``dae`` trains the classifier's body as the encoder of a fresh mirrored
decoder, which is kept across iterative-pruning levels and thrown away after;
``supervised`` (the oracle) trains the whole classifier on the pool's labels; ``none``
trains nothing. A new objective is one :class:`Objective` registered in
:data:`OBJECTIVES`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fedticket.errors import DivergenceError
from fedticket.flops import layer_costs, train_flops_per_sample
from fedticket.models import Classifier, fast_layout, plain_layout
from fedticket.pretrain.noise import NOISES
from fedticket.pruning.mask import Mask
from fedticket.pruning.masked import GradMask, apply_mask
from fedticket.registry import Registry

if TYPE_CHECKING:
    from fedticket.spec import PretrainSpec

Loss = Callable[["ServerTrainer", torch.Tensor, torch.Tensor | None, torch.Generator],
                torch.Tensor]


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
        self.part = OBJECTIVES[spec.kind]
        if self.part.net is None or self.part.loss is None:
            raise ValueError(f"nothing to train for pretrain kind {spec.kind!r}")
        if self.part.uses_labels and y is None:
            raise ValueError(f"{spec.kind} pretraining needs the pool's labels")
        self.net: nn.Module = self.part.net(model)
        self.log = ServerLog()
        self.on_epoch: Callable[[int, float], None] | None = None

    def objective(self, xb: torch.Tensor, yb: torch.Tensor | None, g: torch.Generator
                  ) -> torch.Tensor:
        assert self.part.loss is not None
        return self.part.loss(self, xb, yb, g)

    def probe(self, x: torch.Tensor) -> float | None:
        """The objective's check on clean ``x`` (the DAE's reconstruction loss); None
        for an objective without one."""
        return None if self.part.probe is None else self.part.probe(self, x)

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


# ------------------------------------------------------------------------ objectives
@dataclass(frozen=True)
class Objective:
    """One way to train the classifier on the server pool before pruning."""

    net: Callable[[Classifier], nn.Module] | None = None
    """The module trained (built around the classifier's own layers); None: no training."""
    loss: Loss | None = None
    """The loss of a batch (``yb`` is None unless :attr:`uses_labels`)."""
    uses_labels: bool = False
    """It reads the pool's labels (an oracle: fedticket's own method has none)."""
    probe: Callable[[ServerTrainer, torch.Tensor], float] | None = None
    """A check on clean images logged before and after (as :attr:`probe_name`)."""
    probe_name: str = ""


OBJECTIVES: Registry[Objective] = Registry("pretrain.kind")
"""Every server objective a spec may name."""


def _reconstruction(trainer: ServerTrainer, x: torch.Tensor) -> float:
    """Mean reconstruction loss on clean ``x``."""
    with torch.no_grad():
        logits = trainer.net(x)
        if trainer.spec.loss == "bce":
            return float(F.binary_cross_entropy_with_logits(logits, x))
        return float(F.mse_loss(torch.sigmoid(logits), x))


def _dae_loss(trainer: ServerTrainer, xb: torch.Tensor, yb: torch.Tensor | None,
              g: torch.Generator) -> torch.Tensor:
    noisy = NOISES[trainer.spec.noise](xb, trainer.spec.noise_level, g)
    logits = trainer.net(noisy)
    if trainer.spec.loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, xb)
    return F.mse_loss(torch.sigmoid(logits), xb)


def _supervised_loss(trainer: ServerTrainer, xb: torch.Tensor, yb: torch.Tensor | None,
                     g: torch.Generator) -> torch.Tensor:
    assert yb is not None
    return F.cross_entropy(trainer.net(xb), yb)


OBJECTIVES.add("none", Objective())
OBJECTIVES.add("dae", Objective(lambda m: _Autoencoder(m.body, m.decoder()), _dae_loss,
                                probe=_reconstruction, probe_name="clean_reconstruction_loss"))
OBJECTIVES.add("supervised", Objective(lambda m: m, _supervised_loss, uses_labels=True))
