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


WEIGHT_INITS: Registry[Callable[[Start], State]] = Registry("weights.init")
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


WEIGHT_INITS.add("pretrained", lambda s: s.trained)
WEIGHT_INITS.add("rewind", lambda s: s.init)
WEIGHT_INITS.add("reinit", lambda s: s.fresh())
WEIGHT_INITS.add("fanin", lambda s: fanin_scaled(s.fresh(), s.mask, s.prunable))
