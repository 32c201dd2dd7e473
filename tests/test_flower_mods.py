"""The sparse-update mod and SparseGrid: the explicit mask (never a bias, a BatchNorm
tensor or a buffer), the codec, the mask sent until a node holds it, replies that do not
decode, Flower's FedAvg in process, and a BatchNorm app on a real local deployment."""

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

flwr = pytest.importorskip("flwr", reason="Flower is not installed: pip install -e '.[flower]'")

from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from fedticket.errors import FedticketError  # noqa: E402
from fedticket.flower.common import framework_bytes  # noqa: E402
from fedticket.flower.deploy import LocalDeployment  # noqa: E402
from fedticket.flower.mods import (  # noqa: E402
    ACK,
    META,
    PAYLOAD,
    STATE,
    STYPE,
    SparseCodec,
    SparseGrid,
    mask_from_arrays,
    mask_from_model,
    sparse_update_mod,
)

pytestmark = pytest.mark.usefixtures("flower_task_identity")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sparse-mod"


# ------------------------------------------------------------------------- the mask
def bn_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(),
                        nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(28, 4))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear | nn.Conv1d):
                m.weight.mul_(torch.rand_like(m.weight) > 0.7)
    return net


def test_mask_from_model_takes_linear_and_conv_weights_only():
    net = bn_net()
    assert torch.all(net[1].bias == 0) and torch.all(net[1].running_mean == 0)
    mask = mask_from_model(net)
    assert list(mask) == ["0.weight", "3.weight", "5.weight"]  # no bias, BN tensor, buffer
    for k, m in mask.items():
        assert m.dtype == np.bool_
        np.testing.assert_array_equal(m, net.state_dict()[k].numpy() != 0)
    assert 0.2 < mask["0.weight"].mean() < 0.4
    assert list(mask_from_model(net, ["5.weight"])) == ["5.weight"]


@pytest.mark.parametrize("name, message", [
    ("0.bias", "is a bias"),
    ("1.weight", "belongs to a BatchNorm1d"),
    ("1.bias", "is a bias"),
    ("1.running_mean", "is a buffer"),
    ("1.num_batches_tracked", "is a buffer"),
    ("9.weight", "not a parameter"),
])
def test_mask_from_model_refuses_biases_batchnorm_and_buffers(name, message):
    with pytest.raises(FedticketError, match=message):
        mask_from_model(bn_net(), [name])


def test_mask_from_model_needs_a_weight_to_mask():
    with pytest.raises(FedticketError, match="no nn.Linear"):
        mask_from_model(nn.Sequential(nn.BatchNorm1d(4)))
    with pytest.raises(FedticketError, match="no tensors named"):
        mask_from_model(bn_net(), [])


def model(rng, density=0.25):
    """A pruned weight, a bias, a BatchNorm-like bias and running mean that start at 0,
    and an int64 counter."""
    w = rng.standard_normal((40, 50)).astype(np.float32)
    w[rng.random(w.shape) > density] = 0.0
    b = rng.standard_normal(50).astype(np.float32)
    zeros = np.zeros(50, dtype=np.float32)
    steps = np.array([7], dtype=np.int64)
    return ArrayRecord({"w": Array(w), "b": Array(b), "bn.bias": Array(zeros),
                        "bn.running_mean": Array(zeros.copy()), "steps": Array(steps)})


def test_mask_from_arrays_masks_only_the_named_arrays():
    rec = model(np.random.default_rng(0))
    mask = mask_from_arrays(rec, ["w"])
    assert list(mask) == ["w"]
    np.testing.assert_array_equal(mask["w"], rec["w"].numpy() != 0)
    assert list(mask_from_arrays(rec, "w")) == ["w"]  # one name, as a string
    with pytest.raises(TypeError):
        mask_from_arrays(rec)  # type: ignore[call-arg]  # no more "every zero of every array"
    with pytest.raises(FedticketError, match="no array 'nope'"):
        mask_from_arrays(rec, ["nope"])
    with pytest.raises(FedticketError, match="not a float32"):
        mask_from_arrays(rec, ["steps"])
    with pytest.raises(FedticketError, match="no tensors named"):
        mask_from_arrays(rec, [])


def test_the_mask_must_be_bool_and_not_empty():
    rec = model(np.random.default_rng(0))
    with pytest.raises(FedticketError, match="not a bool array"):
        SparseCodec({"w": rec["w"].numpy()})  # the weights themselves, by mistake
    with pytest.raises(FedticketError, match="empty"):
        SparseCodec({})
    assert SparseCodec({"w": (rec["w"].numpy() != 0).astype(np.uint8)}).mask["w"].dtype == bool


def test_codec_round_trip_and_size():
    rec = model(np.random.default_rng(0))
    mask = mask_from_arrays(rec, ["w"])
    codec = SparseCodec(mask)
    enc = codec.encode(rec)
    # the payload holds the kept weights only; everything else travels unchanged
    assert len(enc[PAYLOAD].data) == 4 * int(mask["w"].sum())
    assert list(enc) == [PAYLOAD, "b", "bn.bias", "bn.running_mean", "steps"]
    for k in ("b", "bn.bias", "bn.running_mean", "steps"):
        assert enc[k] is rec[k]
    order = list(rec)
    back = codec.decode(enc, order=order)
    assert list(back.keys()) == order
    for k in rec:
        np.testing.assert_array_equal(back[k].numpy(), rec[k].numpy())
    # the mask message rebuilds the same codec on the other side
    again = SparseCodec.from_mask_message(codec.mask_message())
    np.testing.assert_array_equal(again.mask["w"], mask["w"])
    assert again.mask_id == codec.mask_id
    assert SparseCodec({"w": ~mask["w"]}).mask_id != codec.mask_id


# ------------------------------------------------------------- in process, with FedAvg
class LoopbackGrid(Grid):
    """Delivers each message to a ClientApp function in this process, through the mod.
    A message whose (node, round) is in ``lose`` is pushed but never answered."""

    def __init__(self, nodes, train, lose=()):
        self.nodes, self.train, self.inbox, self.lose = nodes, train, {}, set(lose)
        self.contexts = {n: Context(1, n, {"partition-id": i}, RecordDict(), {})
                         for i, n in enumerate(nodes)}
        self.sent_bytes = []
        self.pushed = []  # (node, round, carries the mask)

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
            node, rnd = m.metadata.dst_node_id, m.content["config"]["server-round"]
            meta = m.content.config_records.get(META)
            self.pushed.append((node, rnd, meta is not None and "mask" in meta))
            if (node, rnd) in self.lose:
                continue
            self.inbox[m.metadata.message_id] = sparse_update_mod(m, self.contexts[node],
                                                                  self.train)
        return ids

    def pull_messages(self, message_ids):
        return [self.inbox.pop(i) for i in list(message_ids) if i in self.inbox]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


seen: list = []


def client_train(msg, context):
    """A user's training step: adds 1 to every float array, pruned weights included."""
    rec = msg.content["arrays"]
    state = {k: rec[k].numpy() + (1 if k != "steps" else 0) for k in rec}
    seen.append((META in msg.content.config_records, {k: rec[k].numpy().copy() for k in rec}))
    out = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in state.items()}),
                      "metrics": MetricRecord({"num-examples": 10})})
    return Message(out, reply_to=msg)


def run(grid, rec, rounds=2, timeout=3600.0):
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2,
                      weighted_by_key="num-examples")
    return strategy.start(grid=grid, initial_arrays=rec, num_rounds=rounds, timeout=timeout)


def test_sparse_grid_with_flowers_fedavg_sends_less_and_trains_the_zero_started_tensors():
    rng = np.random.default_rng(1)
    rec = model(rng)
    mask = mask_from_arrays(rec, ["w"])
    seen.clear()
    dense_grid = LoopbackGrid([11, 22], client_train)
    dense = run(dense_grid, rec).arrays
    seen.clear()
    inner = LoopbackGrid([11, 22], client_train)
    sparse = run(SparseGrid(inner, mask), rec).arrays
    # the clients saw ordinary dense records, with exact zeros where the mask prunes
    _, first = seen[0]
    assert not any(m for m, _ in seen)  # the mod decoded before the user's code ran
    assert list(first) == list(rec) and np.all(first["w"][~mask["w"]] == 0)
    # every round adds 1 to the kept weights; pruned ones are never sent, so stay 0
    w = sparse["w"].numpy()
    np.testing.assert_array_equal(w[~mask["w"]], 0.0)
    np.testing.assert_allclose(w[mask["w"]], rec["w"].numpy()[mask["w"]] + 2, rtol=1e-6)
    assert np.all(dense["w"].numpy()[~mask["w"]] == 2.0)  # without the mod they drift
    # the tensors outside the mask train as without the mod, the zero-started ones too
    for k in ("b", "bn.bias", "bn.running_mean", "steps"):
        np.testing.assert_array_equal(sparse[k].numpy(), dense[k].numpy())
    np.testing.assert_array_equal(sparse["bn.running_mean"].numpy(), 2.0)
    # bytes: 2 rounds x 2 nodes; the mask goes with each node's first message only
    assert [p[2] for p in inner.pushed] == [True, True, False, False]
    kept = int(mask["w"].sum())
    assert inner.sent_bytes[0] > inner.sent_bytes[2]  # round 1 carries the mask
    assert sum(inner.sent_bytes) < 0.5 * sum(dense_grid.sent_bytes)
    dense_rest = 4 * (3 * 50) + 8
    assert 4 * kept + dense_rest < inner.sent_bytes[2] < 4 * kept + dense_rest + 2500


def test_a_node_whose_first_message_was_lost_gets_the_mask_again():
    """Round 1's message to node 22 (with the mask) is never answered: round 2's carries
    the mask again, the node decodes it, and from round 3 on it gets values only."""
    rec = model(np.random.default_rng(3))
    mask = mask_from_arrays(rec, ["w"])
    seen.clear()
    inner = LoopbackGrid([11, 22], client_train, lose={(22, 1)})
    grid = SparseGrid(inner, mask, poll_s=0.01)
    result = run(grid, rec, rounds=3, timeout=0.2)
    assert sorted(inner.pushed, key=lambda p: (p[1], p[0])) == [
        (11, 1, True), (22, 1, True), (11, 2, False), (22, 2, True), (11, 3, False),
        (22, 3, False)]
    assert STATE in inner.contexts[22].state.config_records
    assert grid.has_mask == {11, 22}
    w = result.arrays["w"].numpy()  # round 1 had one reply, rounds 2 and 3 two
    np.testing.assert_array_equal(w[~mask["w"]], 0.0)
    np.testing.assert_allclose(w[mask["w"]], rec["w"].numpy()[mask["w"]] + 3, rtol=1e-6)


def test_a_node_that_answers_with_an_error_gets_the_mask_again():
    """Node 22's ClientApp fails on its first message (Flower then keeps no state from
    it): the node is not taken as holding the mask, so the next message carries it."""
    rec = model(np.random.default_rng(4))
    calls = []

    def flaky(msg, context):
        calls.append(context.node_id)
        if context.node_id == 22 and calls.count(22) == 1:
            context.state.config_records.pop(STATE)  # as Flower, which drops the state
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "boom"), reply_to=msg)
        return client_train(msg, context)

    inner = LoopbackGrid([11, 22], flaky)
    run(SparseGrid(inner, mask_from_arrays(rec, ["w"])), rec, rounds=3)
    assert sorted(inner.pushed, key=lambda p: (p[1], p[0])) == [
        (11, 1, True), (22, 1, True), (11, 2, False), (22, 2, True), (11, 3, False),
        (22, 3, False)]


def test_the_mod_answers_a_sparse_message_without_a_mask_with_an_error():
    rec = model(np.random.default_rng(5))
    codec = SparseCodec(mask_from_arrays(rec, ["w"]))
    msg = Message(RecordDict({"arrays": codec.encode(rec),
                              META: ConfigRecord({"record": "arrays",
                                                  "order": '["w", "b", "bn.bias", '
                                                           '"bn.running_mean", "steps"]'})}),
                  dst_node_id=3, message_type="train")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    ctx = Context(1, 3, {}, RecordDict(), {})
    ran = []
    reply = sparse_update_mod(msg, ctx, lambda m, c: ran.append(m))
    assert not ran and reply.has_error()
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "holds no mask" in reply.error.reason
    # a garbage mask message gets an error reply too, and leaves no mask behind
    msg.content.config_records[META]["layout"] = "[[1, 2"
    msg.content.config_records[META]["mask"] = b"\x01"
    reply = sparse_update_mod(msg, ctx, lambda m, c: ran.append(m))
    assert not ran and reply.has_error() and "could not be decoded" in reply.error.reason
    assert STATE not in ctx.state.config_records


# ----------------------------------------------------------- replies that do not decode
class CannedGrid(LoopbackGrid):
    """Answers each pushed message with ``reply(msg)``, built by hand."""

    def __init__(self, nodes, reply):
        super().__init__(nodes, None)
        self.reply = reply

    def push_messages(self, messages):
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            ids.append(m.metadata.message_id)
            self.inbox[m.metadata.message_id] = self.reply(m)
        return ids


def sparse_reply(msg, codec, rec, **change):
    """A well-formed reply from the mod, then ``change`` applied to it."""
    arrays = codec.encode(rec)
    meta = ConfigRecord({"record": "arrays", "order": '["w", "b", "bn.bias", '
                                                       '"bn.running_mean", "steps"]',
                         ACK: codec.mask_id})
    if "payload" in change:
        arrays[PAYLOAD] = Array(dtype="float32", shape=(3,), stype=STYPE,
                                data=change["payload"])
    for k in change.get("drop", ()):
        del meta[k]
    if "ack" in change:
        meta[ACK] = change["ack"]
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10}),
                               META: meta}), reply_to=msg)


@pytest.mark.parametrize("change, why", [
    ({"payload": b"garbage!!!!!"}, "payload has 12 bytes"),
    ({"payload": b""}, "payload has 0 bytes"),
    ({"drop": ["order"]}, "no 'order'"),
    ({"drop": ["record", ACK]}, "names neither"),
    ({"ack": "0123456789abcdef"}, "another mask"),
])
def test_a_reply_that_does_not_decode_is_a_failed_reply(change, why):
    """Node 22's replies are broken: SparseGrid turns each into an error reply, FedAvg
    counts it as a failure and aggregates node 11's alone; nothing raises."""
    rec = model(np.random.default_rng(6))
    mask = mask_from_arrays(rec, ["w"])
    codec = SparseCodec(mask)
    good = {k: Array(v.numpy() + 1) if k != "steps" else v for k, v in rec.items()}
    good["w"] = Array(np.where(mask["w"], good["w"].numpy(), 0).astype(np.float32))
    good_rec = ArrayRecord(good)

    def reply(msg):
        if msg.metadata.dst_node_id == 22:
            return sparse_reply(msg, codec, good_rec, **change)
        return sparse_reply(msg, codec, good_rec)

    grid = SparseGrid(CannedGrid([11, 22], reply), mask)
    msgs = [Message(RecordDict({"arrays": rec}), dst_node_id=n, message_type="train",
                    group_id="1") for n in (11, 22)]
    replies = list(grid.send_and_receive(msgs, timeout=5))
    bad = [r for r in replies if r.has_error()]
    assert len(replies) == 2 and len(bad) == 1
    [err] = bad
    assert err.metadata.src_node_id == 22 and err.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "reply from node 22 could not be decoded" in err.error.reason and why in err.error.reason
    assert err.metadata.reply_to_message_id == msgs[1].metadata.message_id
    assert grid.has_mask == {11}  # node 22 will be sent the mask again
    arrays, _ = FedAvg(weighted_by_key="num-examples").aggregate_train(1, replies)
    for k in good_rec:
        np.testing.assert_array_equal(arrays[k].numpy(), good_rec[k].numpy())


def test_mod_passes_dense_messages_through():
    msg = Message(RecordDict({"arrays": model(np.random.default_rng(2))}), dst_node_id=3,
                  message_type="train")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    ctx = Context(1, 3, {}, RecordDict(), {})
    got = []
    sparse_update_mod(msg, ctx, lambda m, c: got.append(m) or Message(RecordDict(), reply_to=m))
    assert got[0] is msg and STATE not in ctx.state


# ------------------------------------------------------------- on a real deployment
def example_task():
    spec = importlib.util.spec_from_file_location("sparse_example_task",
                                                  EXAMPLE / "sparse_example" / "task.py")
    task = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task)
    return task


def test_batchnorm_app_ends_with_the_same_weights_with_and_without_the_mod(tmp_path):
    """The example app (an MLP with a BatchNorm1d layer on the 8x8 digits, 80% of the
    Linear weights pruned at init, pruned gradients masked, Flower's FedAvg, torch 1
    thread) on one local deployment with 2 SuperNodes, 2 rounds, run twice: with the mod
    and SparseGrid, and with SparseGrid off (the mod then passes every message through
    untouched). Every final array is the same, BatchNorm's included."""
    task = example_task()
    net = task.model()
    task.prune(net, 0.8)
    mask = mask_from_model(net)
    assert list(mask) == ["0.weight", "3.weight"]
    nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    traffic, final, took = {}, {}, {}
    with LocalDeployment(tmp_path / "work", nodes) as dep:
        for sparse in (True, False):
            out = tmp_path / f"final-{sparse}.npz"
            cfg = tmp_path / f"run-{sparse}.toml"
            cfg.write_text(f'sparse = {str(sparse).lower()}\nout = "{out}"\nnum-rounds = 2\n')
            start = time.monotonic()
            run_id = dep.submit(EXAMPLE, cfg)
            status = dep.wait(run_id, 300, done=Path(str(out) + ".json"))
            took[sparse] = time.monotonic() - start
            assert status["status"] == "finished:completed", dep.server_log(run_id)
            traffic[sparse] = status["network-traffic"]
            with np.load(out) as f:
                final[sparse] = {k: f[k] for k in f.files}
    assert set(final[True]) == set(net.state_dict())
    for k in final[True]:  # the mod only leaves the zeros out
        np.testing.assert_allclose(final[True][k], final[False][k], atol=1e-6, err_msg=k)
    for k, m in mask.items():  # the pruned entries are exactly 0; the kept ones trained
        assert np.all(final[True][k][~m] == 0) and np.all(final[False][k][~m] == 0)
        assert np.all(final[True][k][m] != 0)
        assert not np.allclose(final[True][k][m], net.state_dict()[k].numpy()[m])
    # BatchNorm's bias and running mean start at 0 and trained (the bug kept them at 0):
    # every unit's running mean moved, and the bias of every unit with an output weight
    # left (a unit whose column of 3.weight is all pruned gets no gradient)
    start = net.state_dict()
    assert np.all(start["1.bias"].numpy() == 0) and np.all(start["1.running_mean"].numpy() == 0)
    assert np.all(final[True]["1.running_mean"] != 0)
    connected = mask["3.weight"].any(axis=0)
    assert 100 < connected.sum() < 128
    np.testing.assert_array_equal(final[True]["1.bias"] != 0, connected)
    assert final[True]["1.num_batches_tracked"] == 2 * 2 * 24  # rounds x epochs x batches
    np.testing.assert_array_equal(final[True]["1.weight"][~connected], 1.0)
    # the mod moved fewer bytes, each way
    for way in ("inbound-bytes", "outbound-bytes", "total-bytes"):
        assert traffic[True][way] < 0.45 * traffic[False][way], (way, traffic)
    print(f"\ntraffic with the mod {traffic[True]}, without {traffic[False]}; "
          f"runs took {took[True]:.1f} s and {took[False]:.1f} s")
