"""The in-process engine: every client of a round trains here, one after another.

The payloads are real: the global model is encoded once per round and decoded as a
client would (all clients of a round receive the same bytes, so it is decoded once),
and each client's upload is encoded here and decoded by the strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedticket.accounting.wire import Codec
from fedticket.data import Labeled
from fedticket.federated.client import LocalTrainer
from fedticket.federated.strategy import (
    Callback,
    Failure,
    Instruction,
    Reply,
    TicketStrategy,
    client_train,
)
from fedticket.spec import FederateSpec


class LocalEngine:
    """Trains the sampled clients in this process with one shared :class:`LocalTrainer`."""

    name = "simulator"

    def __init__(self, trainer: LocalTrainer, codec: Codec, clients: Sequence[Labeled]):
        self.trainer, self.codec, self.clients = trainer, codec, clients
        self._received: tuple[bytes, dict[str, torch.Tensor]] | None = None

    def _decode(self, payload: bytes) -> dict[str, torch.Tensor]:
        if self._received is None or self._received[0] is not payload:
            self._received = (payload, self.codec.decode(payload))
        return self._received[1]

    def train_round(
        self, instructions: Sequence[Instruction]
    ) -> tuple[list[Reply], list[Failure]]:
        replies = [
            client_train(self.trainer, self.codec, self._decode(ins.payload),
                         self.clients[ins.client], ins)
            for ins in instructions
        ]
        return replies, []

    def lost_state(self) -> set[int]:
        return set()  # in-process clients lose nothing


def run_fedavg(
    trainer: LocalTrainer,
    codec: Codec,
    state: Mapping[str, torch.Tensor],
    clients: Sequence[Labeled],
    test: Labeled,
    spec: FederateSpec,
    seed: int,
    callbacks: Sequence[Callback] = (),
) -> dict[str, torch.Tensor]:
    """FedAvg for ``spec.rounds`` rounds from ``state`` in this process; return the final
    global state. Round 0 is the evaluation of the starting model (all costs zero)."""

    def evaluate_fn(s: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        return trainer.evaluate(s, test)

    strategy = TicketStrategy(codec, state, spec, seed, len(clients), evaluate_fn,
                              client_sizes=[len(c) for c in clients])
    return strategy.start(LocalEngine(trainer, codec, clients), callbacks)
