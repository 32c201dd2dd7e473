"""The fedticket ClientApp: one SuperNode holds one client partition.

Node config: ``partition-id`` and ``num-partitions`` (required), ``data-path``
(optional: where this node keeps the dataset files) and ``threads`` (optional).
The mask arrives with the node's first training message and is kept in
``context.state``; later messages carry only the surviving weights. The training step
is the simulator's: :func:`fedticket.federated.tasks.respond` on a
:class:`~fedticket.federated.LocalTrainer`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedticket.errors import FedticketError
from fedticket.flower.common import RECORD, get, spec_from_run_config

if TYPE_CHECKING:
    from fedticket.data import Labeled
    from fedticket.models import Classifier
    from fedticket.pruning.mask import Mask
    from fedticket.spec import ExperimentSpec, FederateSpec

# Flower starts a fresh process for every message: what only training needs (torch and
# the trainer) is imported by the training handler, so that answering a query (which
# partition this node holds) costs a process start and not an import of torch.
app = ClientApp()

STATE_KEY = "fedticket-mask"
MEMORY_KEY = "fedticket-residual"


def _partition(context: Context, num_clients: int) -> int:
    cfg = context.node_config
    if "partition-id" not in cfg:
        raise FedticketError("this SuperNode has no partition-id in its --node-config")
    pid, n = int(cfg["partition-id"]), int(cfg.get("num-partitions", num_clients))
    if n != num_clients or not 0 <= pid < n:
        raise FedticketError(
            f"node partition {pid} of {n} does not fit data.num_clients="
            f"{num_clients}; start one SuperNode per client partition"
        )
    return pid


def _num_clients(context: Context) -> int:
    """``data.num_clients`` of the run's spec, read from its JSON without building the
    spec (which checks every part against its registry, and so imports torch); a spec
    that cannot be read that way gets the full reading, and its one-line error."""
    try:
        n = json.loads(str(context.run_config["spec"]))["data"]["num_clients"]
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    except (KeyError, TypeError, ValueError, RecursionError):
        pass
    return _spec(context).data.num_clients


def _spec(context: Context) -> ExperimentSpec:
    spec = spec_from_run_config(dict(context.run_config))
    path = context.node_config.get("data-path")
    if path:
        spec = replace(spec, data=replace(spec.data, path=str(path)))
    return spec


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which client partition this node holds."""
    n = _num_clients(context)
    pid = _partition(context, n)
    reply = ConfigRecord({"partition-id": pid, "num-partitions": n})
    return Message(RecordDict({RECORD: reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Decode the global subnetwork, train it on this node's partition, send it back."""
    from fedticket.data import load_splits
    from fedticket.flower.common import set_threads
    from fedticket.stages import fresh_model

    set_threads(dict(context.node_config), dict(context.run_config))
    spec = _spec(context)
    pid = _partition(context, spec.data.num_clients)
    client = get(msg.content.config_records[RECORD], "client", int)
    if client != pid:
        raise FedticketError(f"instruction for client {client} sent to partition {pid}")
    splits = load_splits(spec.data, spec.seed)
    model = fresh_model(spec, splits, "init")
    return train_reply(msg, context, model, spec.federate, splits.input_shape,
                       splits.clients[pid], spec.prune.snip_batches)


def train_reply(msg: Message, context: Context, model: Classifier, federate: FederateSpec,
                input_shape: tuple[int, int, int], data: Labeled,
                saliency_batches: int = 1) -> Message:
    """The reply to a TRAIN message: :func:`~fedticket.federated.tasks.respond`, the
    simulator's client function, with the mask from this message (kept in
    ``context.state``) or from there, and what the node keeps between rounds in
    ``context.state``. Shared by this ClientApp and any ClientApp that holds its data in
    memory (:mod:`fedticket.flower.inprocess`)."""
    from fedticket.data import Labeled
    from fedticket.federated.tasks import client_for, respond
    from fedticket.flower.codec import read_instruction, reply_record

    ins = read_instruction(msg.content.config_records[RECORD])
    trainer, codec = client_for(ins.task, model, _mask(context, model, ins.mask), federate,
                                input_shape)
    trainer.saliency_batches = saliency_batches
    memory = _memory(context, ins.client, codec.size)
    # one untimed update first: this is a fresh process, so the timed update would
    # otherwise pay torch's one-off start-up costs (thread pool, allocator growth)
    received = codec.from_kept(memory.get(f"model-{ins.client}",
                                          np.zeros(codec.size, np.float32)))
    warm = min(len(data), trainer.spec.batch_size)
    trainer.warm_up(received, Labeled(data.x[:warm], data.y[:warm]))
    rep = respond(trainer, codec, ins, data, memory)
    kept = {what: Array(memory[f"{what}-{ins.client}"]) for what in KEPT
            if f"{what}-{ins.client}" in memory}
    if kept:
        context.state[MEMORY_KEY] = ArrayRecord(kept)
    return Message(RecordDict({RECORD: reply_record(rep)}), reply_to=msg)


KEPT = ("residual", "model")
"""What a node keeps in ``context.state`` between rounds: its error-feedback residual and
the model it last downloaded (``federate.download = change``)."""


def _memory(context: Context, client: int, size: int) -> dict[str, np.ndarray]:
    """What this node keeps (:data:`KEPT`), from ``context.state``: empty at first, and
    without what does not fit this run's payload."""
    if MEMORY_KEY not in context.state:
        return {}
    record = context.state.array_records[MEMORY_KEY]
    out = {}
    for what in KEPT:
        if what in record:
            value = record[what].numpy()
            if value.shape == (size,):
                out[f"{what}-{client}"] = value
    return out


def _mask(context: Context, model: Classifier, message: bytes) -> Mask:
    """The run's mask: from this message (and kept), from ``context.state``, or full when
    the run is dense (a dense run never sends one)."""
    from fedticket.accounting.wire import Codec
    from fedticket.pruning.mask import Mask

    full = Mask.full(model)
    if message:
        context.state[STATE_KEY] = ConfigRecord({"mask": message})
    elif STATE_KEY in context.state:
        message = get(context.state.config_records[STATE_KEY], "mask", bytes)
    if not message:
        return full
    return Codec(full).decode_mask(message)
