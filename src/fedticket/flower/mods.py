"""A sparse-update encoding for any Flower app: only surviving weights cross the network.

Flower ships no compression or sparsification mod. With a fixed mask (a pruned model,
a lottery ticket), every model message can carry only the weights the mask keeps:

* client side, one line: ``ClientApp(mods=[sparse_update_mod])``;
* server side, one line: ``grid = SparseGrid(grid, mask_from_model(pruned_model))``
  before handing the grid to any strategy (``strategy.start(grid=grid, ...)``).

The mask is explicit: ``{name: bool array}`` for the weight tensors that are pruned, and
nothing else. :func:`mask_from_model` builds it from the ``.weight`` of every
``nn.Linear`` and ``nn.Conv1d/2d/3d`` (or the weights you name) and never looks at
biases, normalization layers (BatchNorm and the like) or buffers: those start at zero
(a BatchNorm bias, a running mean) or are not weights at all, and a zero there is not a
pruned entry. :func:`mask_from_arrays` does the same for an ``ArrayRecord`` and the names
you give it. Arrays the mask does not name travel unchanged (dense).

On the wire a model ``ArrayRecord`` becomes fedticket's codec payload: the float32
values the mask keeps, in the mask's key order, as one ``Array`` with
``stype="fedticket.sparse"``, plus every array the mask does not name, unchanged. The
mask (the cheapest of a bitmap, an index list and an entropy code) and its layout go to
a node with each message until a reply from that node proves it holds them (it decoded,
or it carries the node's acknowledgement of this mask); the node keeps them in
``context.state``.
The other side decodes back to an ordinary dense ``ArrayRecord`` with exact zeros at
the pruned entries, so the user's training code and Flower's own strategies (``FedAvg``
and friends) see what they always see. A message that does not decode becomes an error
reply (``ErrorCode.MOD_FAILED_PRECONDITION``), which Flower's strategies count as a
failure; it is never an exception in the ServerApp.

What the mod cannot do is stop the user's optimizer from moving pruned weights during
local training: those values are simply not sent, and come back as zeros. To train
only the subnetwork, zero the pruned gradients (:func:`mask_gradients`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from torch import nn

from fedticket.accounting.wire import Codec
from fedticket.errors import FedticketError
from fedticket.flower.common import framework_bytes, get
from fedticket.pruning.mask import Mask

META = "fedticket.sparse"
"""Key of the ConfigRecord that says which ArrayRecord is sparse (and carries the mask
until the node holds it, or the node's acknowledgement in a reply)."""
STYPE = "fedticket.sparse"
PAYLOAD = "fedticket.sparse"
STATE = "fedticket.sparse-mod"
ACK = "mask-id"
"""Key, in a reply's META record, of the id of the mask the node holds."""
DECODE_ERROR = ErrorCode.MOD_FAILED_PRECONDITION
"""Error code of the error reply that replaces a message that does not decode."""

PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Modules whose ``.weight`` :func:`mask_from_model` masks by default."""
NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, SyncBatchNorm, InstanceNorm*d
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
"""Normalization modules: their tensors are never masked."""

MaskArrays = Mapping[str, np.ndarray]


# ------------------------------------------------------------------------- the mask
def _names(names: Iterable[str]) -> list[str]:
    out = [names] if isinstance(names, str) else list(dict.fromkeys(names))
    if not out:
        raise FedticketError("no tensors named to mask")
    if not all(isinstance(n, str) for n in out):
        raise FedticketError("the names to mask must be strings")
    return out


def mask_from_model(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The mask of a pruned model: the non-zero entries of its weight tensors.

    ``names`` are the pruned weights (as in ``model.state_dict()``); by default the
    ``.weight`` of every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` module. Biases, the
    tensors of normalization layers (BatchNorm, LayerNorm, ...) and buffers (running
    statistics) are never masked: naming one is an error. Every other tensor of the
    model travels dense.
    """
    params = dict(model.named_parameters())
    if names is None:
        chosen = [f"{prefix}.weight" if prefix else "weight"
                  for prefix, m in model.named_modules()
                  if isinstance(m, PRUNABLE) and isinstance(getattr(m, "weight", None),
                                                             nn.Parameter)]
        if not chosen:
            raise FedticketError("the model has no nn.Linear or nn.Conv1d/2d/3d weight to mask; "
                                 "name the pruned weights")
    else:
        chosen = _names(names)
    buffers = dict(model.named_buffers())
    out = {}
    for name in chosen:
        if name not in params:
            what = "a buffer" if name in buffers else "not a parameter of the model"
            raise FedticketError(f"{name!r} is {what}; only weight tensors are masked")
        prefix, _, leaf = name.rpartition(".")
        if leaf == "bias":
            raise FedticketError(f"{name!r} is a bias; biases are never masked")
        owner = model.get_submodule(prefix)
        if isinstance(owner, NORMS):
            raise FedticketError(f"{name!r} belongs to a {type(owner).__name__}; the tensors of "
                                 "normalization layers are never masked")
        p = params[name]
        if p.dtype != torch.float32:
            raise FedticketError(f"{name!r} is {p.dtype}; only float32 weights are masked")
        out[name] = p.detach().cpu().numpy() != 0
    return out


def mask_from_arrays(arrays: ArrayRecord, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The mask of the named float32 arrays of ``arrays``: their non-zero entries.

    Name only pruned weight tensors: a bias or a BatchNorm tensor can be all zeros and
    still be trained, and a masked zero is never sent. :func:`mask_from_model` picks
    the weights for you when you have the model.
    """
    out = {}
    for name in _names(names):
        if name not in arrays:
            raise FedticketError(f"the record has no array {name!r}")
        a = arrays[name]
        if a.stype != "numpy.ndarray" or np.dtype(a.dtype) != np.float32:
            raise FedticketError(f"array {name!r} is not a float32 numpy array; only float32 "
                                 "weights are masked")
        out[name] = a.numpy() != 0
    return out


def _checked_mask(mask: MaskArrays) -> dict[str, np.ndarray]:
    if not mask:
        raise FedticketError("the mask is empty: name the pruned weights")
    out = {}
    for k, v in mask.items():
        a = np.asarray(v)
        if a.dtype != np.bool_:
            if not np.isin(a, (0, 1)).all():
                raise FedticketError(f"mask entry {k!r} is not a bool array (a {a.dtype} array "
                                     "with values other than 0 and 1)")
            a = a.astype(bool)
        out[str(k)] = a
    return out


def _mask_id(rec: ConfigRecord) -> str:
    """Id of a mask message: equal on both sides exactly when they hold the same mask."""
    h = hashlib.sha256(get(rec, "layout", str).encode())
    h.update(get(rec, "mask", bytes))
    return h.hexdigest()[:16]


MAX_ELEMENTS = 2**31
"""The most weights a mask message may describe: a layout comes from another machine,
and its shapes are checked before any array is made."""


class SparseCodec:
    """Encode and decode one model's ``ArrayRecord`` under a fixed mask."""

    def __init__(self, mask: MaskArrays):
        self.mask = _checked_mask(mask)
        self.codec = Codec(Mask({k: torch.from_numpy(v) for k, v in self.mask.items()}))
        self.mask_id = _mask_id(self.mask_message())

    # the mask message: layout + the codec's mask code
    def mask_message(self) -> ConfigRecord:
        layout = [[k, list(v.shape)] for k, v in self.mask.items()]
        return ConfigRecord({"layout": json.dumps(layout), "mask": self.codec.encode_mask()})

    @classmethod
    def from_mask_message(cls, rec: ConfigRecord) -> SparseCodec:
        layout = json.loads(get(rec, "layout", str))
        if not isinstance(layout, list) or not layout:
            raise FedticketError("the mask layout is not a non-empty list")
        full, total = {}, 0
        for entry in layout:
            if not (isinstance(entry, list) and len(entry) == 2
                    and isinstance(entry[0], str) and isinstance(entry[1], list)
                    and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                            for d in entry[1])):
                raise FedticketError(f"bad mask layout entry {entry!r}")
            k, shape = entry
            total += math.prod(shape)
            if total > MAX_ELEMENTS:  # checked before anything is allocated
                raise FedticketError(f"the mask layout names more than {MAX_ELEMENTS:,} "
                                     "elements")
            full[k] = np.ones(tuple(shape), dtype=bool)
        mask_code = get(rec, "mask", bytes)
        if not mask_code:  # a full mask is never sent
            return cls(full)
        full_codec = Codec(Mask({k: torch.from_numpy(v) for k, v in full.items()}))
        mask = full_codec.decode_mask(mask_code)
        return cls({k: mask[k].numpy() for k in full})

    def fits(self, record: ArrayRecord) -> bool:
        """Whether ``record`` holds every masked array, as float32 of the mask's shape."""
        for k, m in self.mask.items():
            a = record.get(k)
            if a is None or a.stype != "numpy.ndarray" or np.dtype(a.dtype) != np.float32 \
                    or tuple(a.shape) != m.shape:
                return False
        return True

    def encode(self, record: ArrayRecord) -> ArrayRecord:
        """The sparse record: one payload Array + the arrays the mask does not name."""
        state = {k: torch.from_numpy(record[k].numpy()) for k in self.mask}
        payload = self.codec.encode(state)
        nnz = len(payload) // 4
        out = ArrayRecord()
        out[PAYLOAD] = Array(dtype="float32", shape=(nnz,), stype=STYPE, data=payload)
        for k, a in record.items():
            if k not in self.mask:
                out[k] = a
        return out

    def decode(self, record: ArrayRecord, order: Iterable[str] | None = None) -> ArrayRecord:
        """The dense record again (exact zeros outside the mask), its keys in ``order``
        (which must name each of them once)."""
        if PAYLOAD not in record or record[PAYLOAD].stype != STYPE:
            raise FedticketError("record holds no fedticket sparse payload")
        state = self.codec.decode(bytes(record[PAYLOAD].data))
        dense = {k: Array(v.numpy()) for k, v in state.items()}
        rest = {k: a for k, a in record.items() if k != PAYLOAD}
        if set(dense) & set(rest):
            raise FedticketError("record holds a masked array next to the sparse payload")
        every = {**dense, **rest}
        keys = list(every) if order is None else list(order)
        if len(set(keys)) != len(keys) or set(keys) != set(every):
            raise FedticketError("the record's key order does not match its arrays")
        out = ArrayRecord()
        for k in keys:
            out[k] = every[k]
        return out


def _sparse_key(content: RecordDict, codec: SparseCodec) -> str | None:
    for key, rec in content.array_records.items():
        if codec.fits(rec):
            return key
    return None


def _order(meta: ConfigRecord) -> list[str]:
    order = json.loads(get(meta, "order", str))
    if not isinstance(order, list) or not all(isinstance(k, str) for k in order):
        raise FedticketError("'order' is not a list of names")
    return order


def _decoded(content: RecordDict, codec: SparseCodec) -> RecordDict:
    """``content`` without its META record, the sparse ArrayRecord it names made dense."""
    meta = content.config_records[META]
    out = RecordDict({k: v for k, v in content.items() if k != META})
    if "record" in meta:
        key = get(meta, "record", str)
        if key not in content.array_records:
            raise FedticketError(f"no ArrayRecord {key!r} in the message")
        out[key] = codec.decode(content.array_records[key], _order(meta))
    elif ACK not in meta:
        raise FedticketError("the sparse record names neither a record nor a mask")
    return out


def _encode_into(msg: Message, codec: SparseCodec, key: str | None, mask: bool = False,
                 ack: str | None = None) -> None:
    """Put META into ``msg`` and encode its ArrayRecord ``key`` (if any); with the mask
    message if ``mask``, with the acknowledgement ``ack`` if given."""
    content = RecordDict({k: v for k, v in msg.content.items()})
    meta = ConfigRecord()
    if key is not None:
        record = msg.content.array_records[key]
        meta["record"] = key
        meta["order"] = json.dumps(list(record.keys()))
        content[key] = codec.encode(record)
    if mask:
        for k, v in codec.mask_message().items():
            meta[k] = v
    if ack is not None:
        meta[ACK] = ack
    content[META] = meta
    msg.content = content


def _error(msg: Message, reason: str) -> Message:
    """``msg`` (a reply) replaced by an error reply with the same metadata."""
    log(WARNING, "%s", reason)
    # Flower builds messages from received metadata the same way (its grid, its serde)
    return Message(Error(code=DECODE_ERROR, reason=reason),  # type: ignore[call-overload]
                   metadata=msg.metadata)


# ------------------------------------------------------------------------ client side
def sparse_update_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod: decode a sparse model download, encode the model in the reply, and
    acknowledge the mask the node holds. A download that does not decode (or arrives
    before the node holds a mask) gets an error reply; the user's code does not run."""
    if not msg.has_content() or META not in msg.content.config_records:
        return call_next(msg, context)
    try:
        meta = msg.content.config_records[META]
        if "mask" in meta or "layout" in meta:
            held = ConfigRecord({"layout": get(meta, "layout", str),
                                 "mask": get(meta, "mask", bytes)})
            codec = SparseCodec.from_mask_message(held)
            context.state[STATE] = held
        elif STATE in context.state.config_records:
            held = context.state.config_records[STATE]
            codec = SparseCodec.from_mask_message(held)
        else:
            reason = ("fedticket.sparse: a sparse model arrived but this node holds no mask "
                      "(its first message was lost, or its state was)")
            log(WARNING, "%s", reason)
            return Message(Error(code=DECODE_ERROR, reason=reason), reply_to=msg)
        content = _decoded(msg.content, codec)
    except Exception as e:  # anything wrong with what arrived: an error reply, as Flower's mods
        reason = f"fedticket.sparse: the message could not be decoded ({type(e).__name__}: {e})"
        log(WARNING, "%s", reason)
        return Message(Error(code=DECODE_ERROR, reason=reason), reply_to=msg)
    msg.content = content
    reply = call_next(msg, context)
    if reply.has_content():
        _encode_into(reply, codec, _sparse_key(reply.content, codec), ack=_mask_id(held))
    return reply


# ------------------------------------------------------------------------ server side
class SparseGrid(Grid):
    """A Grid that sends and receives models in the sparse encoding; give it to any
    strategy in place of the ServerApp's grid.

    ``mask`` is ``{name: bool array}`` for the pruned weight tensors (see
    :func:`mask_from_model`); arrays it does not name travel dense. Every outgoing
    message with an ``ArrayRecord`` that holds the masked arrays is encoded; the mask
    goes along until a reply from the node shows it holds it. Every reply with a sparse
    payload is decoded back to a dense ``ArrayRecord``; one that does not decode
    becomes an error reply, which strategies count as a failure.
    """

    def __init__(self, grid: Grid, mask: MaskArrays, poll_s: float = 0.5):
        self.grid, self.codec, self.poll_s = grid, SparseCodec(mask), poll_s
        self.has_mask: set[int] = set()
        self.sent_bytes = 0
        self.received_bytes = 0

    # the parts that change the messages
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        out = []
        for msg in messages:
            if msg.has_content():
                key = _sparse_key(msg.content, self.codec)
                if key is not None:
                    node = msg.metadata.dst_node_id
                    _encode_into(msg, self.codec, key, mask=node not in self.has_mask)
            self.sent_bytes += framework_bytes(msg)
            out.append(msg)
        return self.grid.push_messages(out)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for msg in self.grid.pull_messages(message_ids):
            self.received_bytes += framework_bytes(msg)
            out.append(self._receive(msg))
        return out

    def _receive(self, msg: Message) -> Message:
        node = msg.metadata.src_node_id
        if msg.has_error():  # the node may have lost the mask with it: send it again
            self.has_mask.discard(node)
            return msg
        if not msg.has_content() or META not in msg.content.config_records:
            return msg
        try:
            meta = msg.content.config_records[META]
            ack = meta.get(ACK)
            if ack is not None and ack != self.codec.mask_id:
                raise FedticketError(f"the node holds another mask (id {ack!r})")
            content = _decoded(msg.content, self.codec)
        except Exception as e:  # a reply from another machine: dropped, never raised
            self.has_mask.discard(node)
            return _error(msg, f"fedticket.sparse: the reply from node {node} could not be "
                               f"decoded ({type(e).__name__}: {e}); dropped")
        msg.content = content
        self.has_mask.add(node)
        return msg

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = set(self.push_messages(messages))
        end = time.time() + (timeout if timeout is not None else float("inf"))
        replies: list[Message] = []
        while ids and time.time() < end:
            got = list(self.pull_messages(ids))
            replies.extend(got)
            ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if ids:
                time.sleep(self.poll_s)
        return replies

    # everything else is the wrapped grid's
    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # type: ignore[override]
        return self.grid.create_message(*args, **kwargs)  # (deprecated in Flower; delegated)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Any:
        return self.grid.get_nodes()


def mask_gradients(model: torch.nn.Module, mask: MaskArrays) -> None:
    """Register hooks that zero the gradient of every pruned weight of ``model`` (names as
    in ``model.state_dict()``), so local training moves only the subnetwork."""
    params = dict(model.named_parameters())
    for name, m in mask.items():
        if name in params:
            keep = torch.from_numpy(np.asarray(m, dtype=bool)).to(params[name].dtype)
            params[name].register_hook(lambda g, keep=keep: g * keep)
