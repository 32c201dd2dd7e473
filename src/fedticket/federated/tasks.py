"""What a client does with an instruction: one function for every engine.

:func:`respond` is the client's side of a round in the simulator's processes, in the
in-process Flower engine and in the deployed ``ClientApp`` alike: decode the download,
do the instruction's task (train; or train, then readjust the mask; or score the
model), encode the upload, reply. Which task is named by the instruction and looked up
in :data:`TASKS`, where each task registers itself beside its code: ``train`` here,
``readjust`` in :mod:`fedticket.federated.dst`, ``saliency`` in
:mod:`fedticket.federated.saliency`. A task also says which settings its client works
under (:meth:`ClientTask.settings`: a saliency score is taken on the dense model in
float32, whatever the run's value code), and :func:`client_for` builds the trainer and
codec from that, once, for every engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedticket.accounting.wire import DOWNLOAD_CODES, Codec
from fedticket.data import Labeled
from fedticket.errors import FedticketError
from fedticket.federated.client import ClientUpdate, LocalTrainer, cpu_clock
from fedticket.federated.messages import TRAIN, Instruction, Memory, Reply
from fedticket.federated.rules import mask_changes
from fedticket.models.base import Classifier
from fedticket.pruning.mask import Mask
from fedticket.registry import Registry

if TYPE_CHECKING:
    from fedticket.spec import FederateSpec

State = dict[str, torch.Tensor]
Answer = Callable[[LocalTrainer, Codec, Instruction, Labeled, "Memory | None"], Reply]


def _same(federate: FederateSpec) -> FederateSpec:
    return federate


@dataclass(frozen=True)
class ClientTask:
    """One thing a client can be asked to do."""

    answer: Answer
    """``(trainer, codec, instruction, data, memory) -> Reply``."""
    settings: Callable[[FederateSpec], FederateSpec] = _same
    """The settings a client answers this task under, from the run's."""
    dense: bool = False
    """The task works on the dense model (a full mask), whatever the run's mask."""


TASKS: Registry[ClientTask] = Registry("client task")
"""Every task an instruction may name."""


def respond(trainer: LocalTrainer, codec: Codec, instruction: Instruction, data: Labeled,
            memory: Memory | None = None) -> Reply:
    """The client's answer to ``instruction`` on its ``data``, the same in every engine.
    ``memory`` is what this client keeps between rounds (None: it keeps nothing)."""
    if instruction.task not in TASKS:
        raise FedticketError(f"unknown client task {instruction.task!r}")
    return TASKS[instruction.task].answer(trainer, codec, instruction, data, memory)


def client_for(task: str, model: Classifier, mask: Mask, federate: FederateSpec,
               input_shape: tuple[int, ...]) -> tuple[LocalTrainer, Codec]:
    """The trainer and codec a client answers ``task`` with, for a run of ``federate``
    settings under ``mask`` (the server builds the same codec for the task's payloads)."""
    part = TASKS[task]
    federate = part.settings(federate)
    if part.dense:
        mask = Mask.full(model)
    return LocalTrainer(model, mask, federate, input_shape), Codec.of(mask, federate)


# ------------------------------------------------------------------------ training
def _held(trainer: LocalTrainer, codec: Codec, instruction: Instruction,
          memory: Memory | None) -> Codec:
    """The codec of the mask this client holds: the one in ``instruction``, or the one it
    kept (``memory``) when masks change during training, or the run's. ``trainer`` is
    set to that mask."""
    if not mask_changes(trainer.spec):
        return codec
    key = f"mask-{instruction.client}"
    message = instruction.mask
    if message and memory is not None:
        memory[key] = np.frombuffer(message, dtype=np.uint8).copy()
    elif memory is not None and key in memory:
        message = memory[key].tobytes()
    if not hasattr(trainer, "mask_message"):  # it starts on the run's mask: encode it once
        trainer.mask_message = codec.encode_mask()  # type: ignore[attr-defined]
        trainer.mask_codec = codec  # type: ignore[attr-defined]
    if not message or message == trainer.mask_message:  # type: ignore[attr-defined]
        return trainer.mask_codec  # type: ignore[attr-defined,no-any-return]
    mask = codec.decode_mask(message)
    trainer.set_mask(mask)
    held = Codec.of(mask, trainer.spec)
    trainer.mask_message, trainer.mask_codec = message, held  # type: ignore[attr-defined]
    return held


def _received(trainer: LocalTrainer, codec: Codec, instruction: Instruction,
              memory: Memory | None) -> State:
    """The model a download stands for: the payload decoded, or under ``download =
    change`` the model this client holds plus the change it carries; the client keeps
    what it now holds."""
    payload = instruction.payload
    part = DOWNLOAD_CODES[trainer.spec.download]
    if not part.change:
        return codec.decode(payload)
    key = f"model-{instruction.client}"
    if instruction.delta:
        held = None if memory is None else memory.get(key)
        if held is None and instruction.from_start:  # the seeded start, rebuilt here
            held = codec.kept(trainer.model.state_dict())
        if held is None or held.shape != (codec.size,):
            raise FedticketError(f"client {instruction.client} got the change from a model "
                                 "it does not hold")
        kept = (held + part.decode(codec, payload)).astype(np.float32)
        if not np.isfinite(kept).all():
            raise FedticketError("payload holds values that are not finite")
    else:
        kept = codec.kept(codec.decode(payload))
    if memory is not None:
        memory[key] = kept
    return codec.from_kept(kept)


@dataclass(frozen=True)
class Trained:
    """What local training left for a task to encode."""

    update: ClientUpdate
    received: State
    codec: Codec
    """The codec of the mask the client held while training."""
    started: tuple[float, float]
    """Wall and CPU clocks when the instruction arrived: a reply's seconds cover
    decoding, training and encoding, as a device would spend them."""

    def reply(self, instruction: Instruction, upload: bytes, flops: int | None = None
              ) -> Reply:
        wall, cpu = self.started
        return Reply(instruction.client, upload, self.update.num_examples,
                     self.update.train_loss, self.update.flops if flops is None else flops,
                     time.perf_counter() - wall, cpu_clock() - cpu)


def train_locally(trainer: LocalTrainer, codec: Codec, instruction: Instruction,
                  data: Labeled, memory: Memory | None) -> Trained:
    """Decode the download and train on ``data`` (the batch order from the
    instruction's seed)."""
    started = time.perf_counter(), cpu_clock()
    codec = _held(trainer, codec, instruction, memory)
    received = _received(trainer, codec, instruction, memory)
    g = torch.Generator().manual_seed(instruction.seed)
    return Trained(trainer.update(received, data, g), received, codec, started)


def encode_upload(t: Trained, instruction: Instruction, memory: Memory | None) -> bytes:
    """The upload of a trained client: its new model, or its change compressed by the
    run's update code (the residual kept in ``memory`` under error feedback)."""
    codec = t.codec
    if codec.update.is_model:
        return codec.encode(t.update.state)
    change = codec.kept(t.update.state) - codec.kept(t.received)
    key = f"residual-{instruction.client}"
    residual = None if memory is None else memory.get(key)
    rng = np.random.default_rng([instruction.seed, 0x05D])
    upload, residual = codec.update.encode(change, residual, rng)
    if memory is not None and residual is not None:
        memory[key] = residual
    return upload


def _train(trainer: LocalTrainer, codec: Codec, instruction: Instruction, data: Labeled,
           memory: Memory | None) -> Reply:
    t = train_locally(trainer, codec, instruction, data, memory)
    return t.reply(instruction, encode_upload(t, instruction, memory))


TASKS.add(TRAIN, ClientTask(_train))
