"""What the server does besides averaging: round rules, each a part with hooks.

The round loop (:meth:`fedticket.federated.strategy.TicketStrategy.start`) stays plain
FedAvg on a fixed mask and calls the hooks of every rule active for the run at fixed
points, the way Flower's strategies let a subclass override ``configure_train`` or
``aggregate_train``:

* :meth:`RoundRule.begin`, :meth:`RoundRule.download` and :meth:`RoundRule.model`: a
  method whose global state is not a model (FedPM's scores) sets it up, says what
  travels down, and what model it stands for;
* :meth:`RoundRule.task`: which client task a round's instructions name (FedDST asks its
  clients to readjust their masks in some rounds);
* :meth:`RoundRule.decode`: read an upload that is not a plain model (a readjusted
  mask plus its weights) and say why it may not be used, if so;
* :meth:`RoundRule.combine`: make the new global model from the checked updates
  instead of the aggregator (FedDST's mask merge);
* :meth:`RoundRule.end_round`: act on the new global model (re-prune it, re-draw its
  mask) before the next round's downloads.

A rule that changes the mask says so (:attr:`RoundRule.changes_mask`): its clients then
take the mask each download carries, the run needs the dense-masked compute path, and the
checkpoint keeps the mask. A rule registers in :data:`RULES` where it is defined
(FedDST's in :mod:`fedticket.federated.dst`) and decides from the spec whether a run uses
it (:meth:`RoundRule.active`); ``federate.rule`` names one more for a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from fedticket.accounting.wire import DOWNLOAD_CODES
from fedticket.errors import ConfigError
from fedticket.federated.client import COMPUTE_PATHS
from fedticket.federated.messages import TRAIN, Instruction, Reply
from fedticket.pruning.mask import Mask
from fedticket.registry import Registry

if TYPE_CHECKING:
    from fedticket.federated.strategy import TicketStrategy
    from fedticket.spec import FederateSpec

State = dict[str, torch.Tensor]


class RoundRule:
    """A rule whose hooks all leave the round as FedAvg makes it (subclass and
    override)."""

    changes_mask = False
    """The global model's mask may change during training."""

    def active(self, spec: FederateSpec) -> bool:
        """Whether a run of ``spec`` uses this rule."""
        return False

    def check(self, spec: FederateSpec) -> None:
        """Raise a one-line :class:`ConfigError` if ``spec`` cannot run this rule."""
        follows = COMPUTE_PATHS[spec.compute].mask_may_change
        if self.changes_mask and (not follows or DOWNLOAD_CODES[spec.download].change):
            raise ConfigError("a mask that changes during training needs federate.compute = "
                              "dense-masked and federate.download = model")

    def begin(self, strategy: TicketStrategy) -> None:
        """Set the run up once the strategy holds the starting model (FedPM replaces it by
        its scores); per-run objects go in ``strategy.rule_data``, JSON that a checkpoint
        must keep in ``strategy.rule_meta``."""

    def download(self, strategy: TicketStrategy) -> bytes | None:
        """This round's download for every client; None: the codec's payload of the
        global model."""
        return None

    def model(self, strategy: TicketStrategy, state: State, round_: int) -> State | None:
        """The model the global ``state`` stands for (scored, saved as the final model);
        None: ``state`` itself."""
        return None

    def task(self, strategy: TicketStrategy, round_: int) -> tuple[str, float] | None:
        """The task and ``alpha`` of this round's instructions; None: no say."""
        return None

    def decode(self, strategy: TicketStrategy, rep: Reply, ins: Instruction
               ) -> tuple[State | None, str | None] | None:
        """The update of ``rep`` and why it may not be used; None: not this rule's to read.
        Called after the reply's numbers and FLOPs (:meth:`reply_flops`) were checked."""
        return None

    def reply_flops(self, strategy: TicketStrategy, rep: Reply, ins: Instruction,
                    flops: int | None) -> int | None:
        """The FLOPs an honest reply to ``ins`` reports, from the plain training's
        ``flops`` (None: unknown, not checked)."""
        return flops

    def combine(self, strategy: TicketStrategy, round_: int,
                instructions: Sequence[Instruction], usable: Sequence[tuple[Reply, State]]
                ) -> State | None:
        """The new global model; None: the aggregator's (``federate.aggregation``)."""
        return None

    def end_round(self, strategy: TicketStrategy, round_: int) -> None:
        """Act on the new global model (``strategy.global_state``) before evaluation."""


RULES: Registry[RoundRule] = Registry("federate.rule")
"""Every round rule a run may use."""
RULES.add("none", RoundRule())


def rules_for(spec: FederateSpec) -> list[RoundRule]:
    """The rules a run of ``spec`` uses, in registration order: the one
    ``federate.rule`` names, and those its other settings turn on."""
    named = RULES[spec.rule]
    return [rule for name in RULES if (rule := RULES[name]) is named or rule.active(spec)]


def mask_changes(spec: FederateSpec) -> bool:
    """Whether the mask of a run of ``spec`` may change during training."""
    return any(rule.changes_mask for rule in rules_for(spec))


def task_of(strategy: TicketStrategy, round_: int) -> tuple[str, float]:
    """The task and ``alpha`` of a round: the first active rule's say, else ``train``."""
    for rule in strategy.rules:
        said = rule.task(strategy, round_)
        if said is not None:
            return said
    return TRAIN, 0.0


def new_mask(strategy: TicketStrategy, mask: Mask) -> None:
    """Put the global model under ``mask`` (pruned entries zeroed) from the next download
    on; the mask goes to every client with it and the ledger counts it."""
    strategy.global_state = {k: v * mask.float(k) for k, v in strategy.global_state.items()}
    strategy.set_mask(mask)
