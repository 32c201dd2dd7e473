"""The round loop of the in-process simulator.

Every model that crosses the (simulated) network is encoded by the run's
:class:`~fedticket.accounting.wire.Codec` and decoded on the other side, so the
traffic counted is ``len()`` of real payloads and the server only ever sees
what a client could have sent. What happens around the loop (writing metrics,
printing progress) comes in through callbacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch

from fedticket.accounting.wire import Codec
from fedticket.data import Labeled
from fedticket.federated.aggregate import client_seed, fedavg, sample_clients
from fedticket.federated.client import LocalTrainer, evaluate
from fedticket.spec import FederateSpec


@dataclass(frozen=True)
class ClientRecord:
    """One client's part in one round."""

    round: int
    client: int
    num_examples: int
    down_bytes: int
    mask_bytes: int
    up_bytes: int
    flops: int
    wall_s: float
    train_loss: float


@dataclass
class Totals:
    """Cumulative client-side costs since round 0."""

    down_bytes: int = 0
    up_bytes: int = 0
    mask_bytes: int = 0
    client_flops: int = 0
    client_wall_s: float = 0.0

    def add(self, rec: ClientRecord) -> None:
        self.down_bytes += rec.down_bytes + rec.mask_bytes
        self.mask_bytes += rec.mask_bytes
        self.up_bytes += rec.up_bytes
        self.client_flops += rec.flops
        self.client_wall_s += rec.wall_s


@dataclass(frozen=True)
class RoundLog:
    """What a round did; ``test_*`` are None on rounds that are not evaluated."""

    round: int
    clients: Sequence[ClientRecord]
    totals: Totals
    test_accuracy: float | None
    test_loss: float | None
    train_loss: float | None = None

    def metrics(self) -> dict:
        """The row of ``metrics.jsonl`` for an evaluated round."""
        return {
            "round": self.round,
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
            "train_loss": self.train_loss,
            "clients": len(self.clients),
            "cum_down_bytes": self.totals.down_bytes,
            "cum_up_bytes": self.totals.up_bytes,
            "cum_mask_bytes": self.totals.mask_bytes,
            "cum_client_flops": self.totals.client_flops,
            "cum_client_wall_s": round(self.totals.client_wall_s, 6),
        }


class Callback(Protocol):
    def on_round(self, log: RoundLog) -> None: ...


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
    """FedAvg for ``spec.rounds`` rounds from ``state``; return the final global state.

    Round 0 is the evaluation of the starting model (all costs zero).
    """
    rng = np.random.default_rng([seed, 0xFED])
    totals = Totals()
    mask_msg = codec.encode_mask()
    has_mask: set[int] = set()
    global_state = codec.decode(codec.encode(state))

    def emit(r: int, records: list[ClientRecord], train_loss: float | None) -> None:
        acc = loss = None
        if r % spec.eval_every == 0 or r == spec.rounds:
            trainer.model.load_state_dict(global_state)
            acc, loss = evaluate(trainer.model, test)
        log = RoundLog(r, records, replace(totals), acc, loss, train_loss)
        for cb in callbacks:
            cb.on_round(log)

    emit(0, [], None)
    for r in range(1, spec.rounds + 1):
        ids = sample_clients(len(clients), spec.client_fraction, rng)
        down = codec.encode(global_state)
        received = codec.decode(down)  # every client receives these same bytes
        updates = []
        records = []
        for cid in ids:
            sent_mask = mask_msg if cid not in has_mask else b""
            has_mask.add(cid)
            g = torch.Generator().manual_seed(client_seed(seed, r, cid))
            upd = trainer.update(received, clients[cid], g)
            up = codec.encode(upd.state)
            updates.append((codec.decode(up), upd.num_examples))
            rec = ClientRecord(
                r, cid, upd.num_examples, len(down), len(sent_mask), len(up),
                upd.flops, upd.wall_s, upd.train_loss,
            )
            totals.add(rec)
            records.append(rec)
        global_state = fedavg(updates)
        n = sum(rec.num_examples for rec in records)
        train_loss = sum(rec.train_loss * rec.num_examples for rec in records) / n
        emit(r, records, train_loss)
    return global_state
