"""The sparse-update mod and SparseGrid, in process: the codec, the once-per-node mask,
the bytes, and that a Flower strategy's aggregate keeps pruned entries at exactly 0."""

import numpy as np
import pytest

flwr = pytest.importorskip("flwr", reason="Flower is not installed: pip install -e '.[flower]'")

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from fedticket.flower.common import framework_bytes  # noqa: E402
from fedticket.flower.mods import (  # noqa: E402
    META,
    PAYLOAD,
    SparseCodec,
    SparseGrid,
    mask_from_arrays,
    sparse_update_mod,
)

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def model(rng, density=0.25):
    w = rng.standard_normal((40, 50)).astype(np.float32)
    w[rng.random(w.shape) > density] = 0.0
    b = rng.standard_normal(50).astype(np.float32)
    steps = np.array([7], dtype=np.int64)
    return ArrayRecord({"w": Array(w), "b": Array(b), "steps": Array(steps)})


def test_codec_round_trip_and_size():
    rng = np.random.default_rng(0)
    rec = model(rng)
    mask = mask_from_arrays(rec)
    assert set(mask) == {"w", "b"}  # the int64 array is not masked
    codec = SparseCodec(mask)
    nnz = int(mask["w"].sum()) + 50
    enc = codec.encode(rec)
    assert len(enc[PAYLOAD].data) == 4 * nnz and enc["steps"].numpy().tolist() == [7]
    back = codec.decode(enc, order=["w", "b", "steps"])
    assert list(back.keys()) == ["w", "b", "steps"]
    for k in rec:
        np.testing.assert_array_equal(back[k].numpy(), rec[k].numpy())
    # the mask message rebuilds the same codec on the other side
    again = SparseCodec.from_mask_message(codec.mask_message())
    np.testing.assert_array_equal(again.mask["w"], mask["w"])


class LoopbackGrid(Grid):
    """Delivers each message to a ClientApp function in this process, through the mod."""

    def __init__(self, nodes, train):
        self.nodes, self.train, self.inbox = nodes, train, {}
        self.contexts = {n: Context(1, n, {"partition-id": i}, RecordDict(), {})
                         for i, n in enumerate(nodes)}
        self.sent_bytes = []

    def set_run(self, run):
        pass

    @property
    def run(self):
        return None

    def create_message(self, *a, **k):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.nodes)

    def get_nodes(self):
        return []

    def push_messages(self, messages):
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            self.sent_bytes.append(framework_bytes(m))
            ids.append(m.metadata.message_id)
            ctx = self.contexts[m.metadata.dst_node_id]
            self.inbox[m.metadata.message_id] = sparse_update_mod(m, ctx, self.train)
        return ids

    def pull_messages(self, message_ids):
        return [self.inbox.pop(i) for i in list(message_ids) if i in self.inbox]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def client_train(msg, context):
    """A user's training step: adds 1 to every weight, pruned ones included."""
    rec = msg.content["arrays"]
    state = {k: rec[k].numpy() + (1 if k != "steps" else 0) for k in rec}
    seen.append((META in msg.content.config_records, {k: rec[k].numpy().copy() for k in rec}))
    out = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in state.items()}),
                      "metrics": MetricRecord({"num-examples": 10})})
    return Message(out, reply_to=msg)


seen: list = []


def run(grid, rec, rounds=2):
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2,
                      weighted_by_key="num-examples")
    return strategy.start(grid=grid, initial_arrays=rec, num_rounds=rounds)


def test_sparse_grid_with_flowers_fedavg_sends_less_and_keeps_zeros():
    rng = np.random.default_rng(1)
    rec = model(rng)
    mask = mask_from_arrays(rec)
    seen.clear()
    dense_grid = LoopbackGrid([11, 22], client_train)
    dense = run(dense_grid, rec).arrays
    seen.clear()
    inner = LoopbackGrid([11, 22], client_train)
    sparse = run(SparseGrid(inner, mask), rec).arrays
    # the clients saw ordinary dense records, with exact zeros where the mask prunes
    meta_seen, first = seen[0]
    assert not any(m for m, _ in seen)  # the mod decoded before the user's code ran
    assert set(first) == {"w", "b", "steps"} and np.all(first["w"][~mask["w"]] == 0)
    # every round adds 1 to the kept weights; pruned ones are never sent, so stay 0
    w = sparse["w"].numpy()
    np.testing.assert_array_equal(w[~mask["w"]], 0.0)
    np.testing.assert_allclose(w[mask["w"]], rec["w"].numpy()[mask["w"]] + 2, rtol=1e-6)
    assert np.all(dense["w"].numpy()[~mask["w"]] == 2.0)  # without the mod they drift
    # bytes: 2 rounds x 2 nodes; the mask goes with each node's first message only
    kept = int(mask["w"].sum()) + 50
    assert inner.sent_bytes[0] > inner.sent_bytes[2]  # round 1 carries the mask
    assert sum(inner.sent_bytes) < 0.45 * sum(dense_grid.sent_bytes)
    assert 4 * kept < inner.sent_bytes[2] < 4 * kept + 2000  # payload + Flower metadata


def test_mod_passes_dense_messages_through():
    msg = Message(RecordDict({"arrays": model(np.random.default_rng(2))}), dst_node_id=3,
                  message_type="train")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    ctx = Context(1, 3, {}, RecordDict(), {})
    got = []
    sparse_update_mod(msg, ctx, lambda m, c: got.append(m) or Message(RecordDict(), reply_to=m))
    assert got[0] is msg and "fedticket.sparse-mod" not in ctx.state
