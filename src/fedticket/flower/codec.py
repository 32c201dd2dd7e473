"""Instructions and replies as Flower records, and back: the one codec both Flower apps
use.

An :class:`~fedticket.federated.messages.Instruction` travels as a ``ConfigRecord``
under :data:`~fedticket.flower.common.RECORD` in a TRAIN message, a
:class:`~fedticket.federated.messages.Reply` as one in the reply. Every field of a
record that came from another machine is checked (:func:`~fedticket.flower.common.get`)
before it is used.
"""

from __future__ import annotations

from flwr.app import ConfigRecord

from fedticket.federated.messages import TRAIN, Instruction, Reply
from fedticket.flower.common import get


def instruction_record(ins: Instruction) -> ConfigRecord:
    """The record of a TRAIN message that carries ``ins``."""
    return ConfigRecord({
        "round": ins.round, "client": ins.client, "payload": ins.payload, "mask": ins.mask,
        "seed": ins.seed, "task": ins.task, "alpha": ins.alpha,
        **({"delta": True} if ins.delta else {}),
        **({"from_start": True} if ins.from_start else {}),
    })


def read_instruction(rec: ConfigRecord) -> Instruction:
    """Inverse of :func:`instruction_record`."""
    return Instruction(
        round=get(rec, "round", int), client=get(rec, "client", int),
        payload=get(rec, "payload", bytes), mask=get(rec, "mask", bytes),
        seed=get(rec, "seed", int), task=get(rec, "task", str) if "task" in rec else TRAIN,
        alpha=get(rec, "alpha", float) if "alpha" in rec else 0.0,
        delta=get(rec, "delta", bool) if "delta" in rec else False,
        from_start=get(rec, "from_start", bool) if "from_start" in rec else False,
    )


def reply_record(rep: Reply) -> ConfigRecord:
    """The record of the reply that carries ``rep`` (what the engine measures itself,
    bytes and waiting time, does not travel)."""
    return ConfigRecord({
        "client": rep.client, "payload": rep.payload, "num-examples": rep.num_examples,
        "train-loss": rep.train_loss, "flops": rep.flops, "wall-s": rep.wall_s,
        "cpu-s": rep.cpu_s,
    })


def read_reply(rec: ConfigRecord, client: int) -> Reply:
    """Inverse of :func:`reply_record`, for the reply to an instruction sent to
    ``client`` (a reply that names another client is refused)."""
    if get(rec, "client", int) != client:
        raise ValueError(f"reply says client {rec['client']!r}")
    return Reply(
        client=client, payload=get(rec, "payload", bytes),
        num_examples=get(rec, "num-examples", int), train_loss=get(rec, "train-loss", float),
        flops=get(rec, "flops", int), wall_s=get(rec, "wall-s", float),
        cpu_s=get(rec, "cpu-s", float),
    )
