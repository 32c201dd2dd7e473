"""Which values the surviving weights start federated training from (``weights.init``):
a registry.

``pretrained`` keeps what the pretrain stage produced (the random init when there was no
pretraining), ``rewind`` resets them to the random init the pretraining started from
(the classic lottery ticket), ``reinit`` draws fresh random values (the control), and
``fanin`` draws fresh values scaled to the fan-in each unit keeps (the fair random
control). A new start is one function registered here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedticket.pruning.mask import Mask
from fedticket.registry import Registry

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Start:
    """What a start may draw from."""

    init: State
    """The random init the pretraining started from."""
    trained: State
    """What the pretrain stage produced."""
    fresh: Callable[[], State]
    """A fresh random init (its own seed stream)."""
    mask: Mask
    prunable: list[str]
    pretrained: bool = False
    """``trained`` came from a pretraining (else it is the random init)."""


@dataclass(frozen=True)
class WeightInit:
    """One start: the values it draws, and whether they are reproducible from the run's
    seed (a random init is; DAE-pretrained weights are not), which decides what the
    clients' first download of them costs (``federate.init_bytes``)."""

    draw: Callable[[Start], State]
    seeded: Callable[[Start], bool] = lambda start: True


WEIGHT_INITS: Registry[WeightInit] = Registry("weights.init")
"""Every start a spec may name; the mask is applied after it."""


def fanin_scaled(state: State, mask: Mask, names: list[str]) -> State:
    """Fresh weights rescaled so each unit's kept inputs have the spread the init gives a
    dense unit: row ``j`` of a pruned weight times ``sqrt(fan_in / kept_j)``.

    PyTorch's default init draws ``U(-b, b)`` with ``b`` proportional to
    ``1 / sqrt(fan_in)``; a unit that keeps ``kept_j`` of its ``fan_in`` inputs then sums
    ``kept_j / fan_in`` of the variance a dense unit sums. Units that keep nothing stay 0.
    """
    out = dict(state)
    for n in names:
        w, m = state[n], mask[n]
        if w.dim() < 2:
            continue
        fan_in = w[0].numel()
        kept = m.reshape(m.shape[0], -1).sum(dim=1).clamp_min(1).to(w.dtype)
        scale = (fan_in / kept).sqrt().view(-1, *([1] * (w.dim() - 1)))
        out[n] = w * scale
    return out


WEIGHT_INITS.add("pretrained", WeightInit(lambda s: s.trained, lambda s: not s.pretrained))
WEIGHT_INITS.add("rewind", WeightInit(lambda s: s.init))
WEIGHT_INITS.add("reinit", WeightInit(lambda s: s.fresh()))
WEIGHT_INITS.add("fanin", WeightInit(lambda s: fanin_scaled(s.fresh(), s.mask, s.prunable)))
