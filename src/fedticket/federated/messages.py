"""The protocol between the server's round loop and the clients, with no logic in it.

An :class:`Instruction` goes to one sampled client, a :class:`Reply` or a
:class:`Failure` comes back, and the strategy books a :class:`ClientRecord` for it. An
:class:`Engine` carries instructions and replies (the simulator's processes, a Flower
grid); :data:`Memory` is what clients keep between rounds. Both the strategy and every
client-side part import these types from here, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

TRAIN = "train"
"""The task of a plain training instruction."""


@dataclass(frozen=True)
class Instruction:
    """What one sampled client receives in one round."""

    round: int
    client: int
    payload: bytes
    """The encoded global model (the same bytes for every client of a round)."""
    mask: bytes
    """The mask message, or ``b""`` when the client already holds the mask."""
    seed: int
    """Seed of the client's batch order (:func:`client_seed`)."""
    task: str = "train"
    """What the client does with it: the name of a registered client task
    (:data:`fedticket.federated.tasks.TASKS`): ``train``; ``readjust``: train, then
    readjust the mask by ``alpha`` (:mod:`fedticket.federated.dst`); ``saliency``: score
    the model before training (:mod:`fedticket.federated.saliency`)."""
    alpha: float = 0.0
    """``readjust``: the fraction of kept weights to swap."""
    delta: bool = False
    """``payload`` is the change from the model this client holds (its last download;
    ``federate.download = change``), not the model."""
    from_start: bool = False
    """``delta`` from the run's seeded starting model, which the client rebuilds (it holds
    no download yet)."""


@dataclass(frozen=True)
class Reply:
    """What one client sends back: its encoded model and what producing it cost."""

    client: int
    payload: bytes
    num_examples: int
    train_loss: float
    flops: int
    wall_s: float
    cpu_s: float
    framework_down_bytes: int | None = None
    """Bytes the engine itself moved for the download (Flower's message objects)."""
    framework_up_bytes: int | None = None
    elapsed_s: float | None = None
    """Seconds the server waited for this reply (from sending the instruction to
    receiving the answer), if the engine measured them: no honest client reports a
    longer wall time."""


@dataclass(frozen=True)
class Failure:
    """A sampled client whose reply never came or could not be used."""

    round: int
    client: int
    reason: str


@dataclass(frozen=True)
class ClientRecord:
    """One client's part in one round (a row of ``clients.jsonl``)."""

    round: int
    client: int
    num_examples: int
    down_bytes: int
    """The model payload only; the mask message is ``mask_bytes``."""
    mask_bytes: int
    up_bytes: int
    flops: int
    wall_s: float
    cpu_s: float
    train_loss: float
    framework_down_bytes: int | None = None
    framework_up_bytes: int | None = None

    def row(self) -> dict:
        row = dict(self.__dict__)
        if self.framework_down_bytes is None:
            del row["framework_down_bytes"], row["framework_up_bytes"]
        return row


class Engine(Protocol):
    """Carries a round's instructions to the clients and returns what came back."""

    name: str

    def train_round(
        self, instructions: Sequence[Instruction]
    ) -> tuple[list[Reply], list[Failure]]: ...

    def lost_state(self) -> set[int]:
        """Clients whose kept state (the mask) is gone since the last call, such as a
        restarted Flower SuperNode's; the strategy sends them the mask again."""
        ...


Memory = dict[str, np.ndarray]
"""What clients keep between rounds, as ``"WHAT-CLIENT"`` keys: ``residual-7`` (the
error-feedback residual of client 7's compressed uploads), ``mask-7`` (the mask
message client 7 holds, when masks change during training) and ``model-7`` (the kept
values of client 7's last download, under ``federate.download = change``). It never travels; an
engine keeps it for its simulated clients (a Flower node keeps its own in
``context.state``)."""


def memory_of(memory: Memory, clients: set[int]) -> Memory:
    """The entries of ``memory`` that belong to ``clients``."""
    return {k: v for k, v in memory.items() if int(k.rsplit("-", 1)[1]) in clients}
