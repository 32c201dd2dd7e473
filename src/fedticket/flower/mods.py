"""A sparse-update encoding for any Flower app: only surviving weights cross the network.

Flower ships no compression or sparsification mod. With a fixed mask (a pruned model,
a lottery ticket), every model message can carry only the weights the mask keeps:

* client side, one line: ``ClientApp(mods=[sparse_update_mod])``;
* server side, one line: ``grid = SparseGrid(grid, mask_from_arrays(initial_arrays))``
  before handing the grid to any strategy (``strategy.start(grid=grid, ...)``).

On the wire a model ``ArrayRecord`` becomes fedticket's codec payload: the float32
values the mask keeps, in the record's key order, as one ``Array`` with
``stype="fedticket.sparse"``; float32 arrays that are not in the mask and arrays of
other dtypes travel unchanged. The mask (the cheaper of a bitmap and an index list)
and the record's layout go to each node once, with its first message, and the node
keeps them in ``context.state``. The other side decodes back to an ordinary dense
``ArrayRecord`` with exact zeros outside the mask, so the user's training code and
Flower's own strategies (``FedAvg`` and friends) see what they always see.

What the mod cannot do is stop the user's optimizer from moving pruned weights during
local training: those values are simply not sent, and come back as zeros. To train
only the subnetwork, zero the pruned gradients (:func:`mask_gradients`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid

from fedticket.accounting.wire import Codec
from fedticket.errors import FedticketError
from fedticket.flower.common import get
from fedticket.pruning.mask import Mask

META = "fedticket.sparse"
"""Key of the ConfigRecord that says which ArrayRecord is sparse (and, once, the mask)."""
STYPE = "fedticket.sparse"
PAYLOAD = "fedticket.sparse"
STATE = "fedticket.sparse-mod"

MaskArrays = Mapping[str, np.ndarray]


def mask_from_arrays(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """The mask of a masked model: every float32 array's non-zero entries."""
    out = {}
    for name, arr in arrays.items():
        if arr.stype == "numpy.ndarray" and np.dtype(arr.dtype) == np.float32:
            out[name] = arr.numpy() != 0
    if not out:
        raise FedticketError("the record has no float32 arrays to mask")
    return out


class SparseCodec:
    """Encode and decode one model's ``ArrayRecord`` under a fixed mask."""

    def __init__(self, mask: MaskArrays):
        self.mask = {k: np.asarray(v, dtype=bool) for k, v in mask.items()}
        self.codec = Codec(Mask({k: torch.from_numpy(v) for k, v in self.mask.items()}))

    # the mask message: layout + the codec's mask code
    def mask_message(self) -> ConfigRecord:
        layout = [[k, list(v.shape)] for k, v in self.mask.items()]
        return ConfigRecord({"layout": json.dumps(layout), "mask": self.codec.encode_mask()})

    @classmethod
    def from_mask_message(cls, rec: ConfigRecord) -> SparseCodec:
        layout = json.loads(get(rec, "layout", str))
        full = {str(k): np.ones(tuple(shape), dtype=bool) for k, shape in layout}
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
        """The sparse record: one payload Array + the arrays the mask does not cover."""
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
        """The dense record again (exact zeros outside the mask)."""
        if PAYLOAD not in record or record[PAYLOAD].stype != STYPE:
            raise FedticketError("record holds no fedticket sparse payload")
        state = self.codec.decode(bytes(record[PAYLOAD].data))
        dense = {k: v.numpy() for k, v in state.items()}
        rest = {k: a for k, a in record.items() if k != PAYLOAD}
        out = ArrayRecord()
        for k in order or [*dense, *rest]:
            if k in dense:
                out[k] = Array(dense[k])
            elif k in rest:
                out[k] = rest[k]
        return out


def _sparse_key(content: RecordDict, codec: SparseCodec) -> str | None:
    for key, rec in content.array_records.items():
        if codec.fits(rec):
            return key
    return None


# ------------------------------------------------------------------------ client side
def sparse_update_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod: decode a sparse model download, encode the model in the reply."""
    if not msg.has_content() or META not in msg.content.config_records:
        return call_next(msg, context)
    meta = msg.content.config_records[META]
    if "mask" in meta:
        context.state[STATE] = ConfigRecord({"layout": meta["layout"], "mask": meta["mask"]})
    if STATE not in context.state.config_records:
        raise FedticketError("sparse model received but this node holds no mask; "
                             "was it restarted under the same node id?")
    codec = SparseCodec.from_mask_message(context.state.config_records[STATE])
    key = get(meta, "record", str)
    order = json.loads(get(meta, "order", str))
    content = RecordDict({k: v for k, v in msg.content.items() if k != META})
    content[key] = codec.decode(msg.content.array_records[key], order)
    msg.content = content
    reply = call_next(msg, context)
    if reply.has_content():
        rkey = _sparse_key(reply.content, codec)
        if rkey is not None:
            _encode_into(reply, codec, rkey)
    return reply


def _encode_into(msg: Message, codec: SparseCodec, key: str, first: bool = False) -> None:
    record = msg.content.array_records[key]
    meta = ConfigRecord({"record": key, "order": json.dumps(list(record.keys()))})
    if first:
        for k, v in codec.mask_message().items():
            meta[k] = v
    content = RecordDict({k: v for k, v in msg.content.items()})
    content[key] = codec.encode(record)
    content[META] = meta
    msg.content = content


# ------------------------------------------------------------------------ server side
class SparseGrid(Grid):
    """A Grid that sends and receives models in the sparse encoding; give it to any
    strategy in place of the ServerApp's grid.

    Every outgoing message with an ``ArrayRecord`` that fits the mask is encoded (the
    mask goes along the first time a node is addressed); every reply with a sparse
    payload is decoded back to a dense ``ArrayRecord``.
    """

    def __init__(self, grid: Grid, mask: MaskArrays, poll_s: float = 0.5):
        self.grid, self.codec, self.poll_s = grid, SparseCodec(mask), poll_s
        self.has_mask: set[int] = set()
        self.sent_bytes = 0
        self.received_bytes = 0

    # the parts that change the messages
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        from fedticket.flower.common import framework_bytes

        out = []
        for msg in messages:
            if msg.has_content():
                key = _sparse_key(msg.content, self.codec)
                if key is not None:
                    node = msg.metadata.dst_node_id
                    _encode_into(msg, self.codec, key, first=node not in self.has_mask)
                    self.has_mask.add(node)
            self.sent_bytes += framework_bytes(msg)
            out.append(msg)
        return self.grid.push_messages(out)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        from fedticket.flower.common import framework_bytes

        out = []
        for msg in self.grid.pull_messages(message_ids):
            self.received_bytes += framework_bytes(msg)
            if msg.has_content() and META in msg.content.config_records:
                meta = msg.content.config_records[META]
                key = get(meta, "record", str)
                order = json.loads(get(meta, "order", str))
                content = RecordDict({k: v for k, v in msg.content.items() if k != META})
                content[key] = self.codec.decode(msg.content.array_records[key], order)
                msg.content = content
            out.append(msg)
        return out

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
