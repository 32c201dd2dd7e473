"""Property-based tests of what arrives from other machines on the Flower path: random
records in a client's reply (the ServerApp's checks), and random mask and sparse-payload
records (the sparse mod's decoder on the node, SparseGrid's on the server). Whatever
arrives, the reply is used or refused; no exception escapes."""

import json

import numpy as np
import pytest
import torch

flwr = pytest.importorskip("flwr", reason="Flower is not installed: pip install -e '.[flower]'")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fedticket.accounting import Codec  # noqa: E402
from fedticket.federated import TicketStrategy  # noqa: E402
from fedticket.flower.common import RECORD  # noqa: E402
from fedticket.flower.mods import (  # noqa: E402,E501
    ACK,
    META,
    PAYLOAD,
    STYPE,
    SparseCodec,
    SparseGrid,
    sparse_update_mod,
)
from fedticket.flower.server_app import GridEngine  # noqa: E402
from fedticket.pruning import Mask  # noqa: E402
from fedticket.spec import FederateSpec  # noqa: E402
from shared import Loopback  # noqa: E402

pytestmark = pytest.mark.usefixtures("flower_task_identity")
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

MASK = Mask({"w": torch.tensor([True, False, True, True])})
CODEC = Codec(MASK)
KEYS = ["client", "payload", "num-examples", "train-loss", "flops", "wall-s", "cpu-s"]

# the values a ConfigRecord may hold: scalars of four kinds, bytes, lists of one kind
scalars = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True),
                    st.text(max_size=20), st.binary(max_size=40), st.booleans())
values = st.one_of(scalars, st.lists(st.integers(-10, 10), max_size=4),
                   st.lists(st.floats(), max_size=4), st.lists(st.text(max_size=4), max_size=3))


def honest(client, value):
    return {"client": client, "payload": CODEC.encode({"w": torch.full((4,), value)}),
            "num-examples": 2, "train-loss": 0.5, "flops": 10, "wall-s": 0.1, "cpu-s": 0.1}




@FUZZ
@given(record=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values,
                              max_size=9),
       base=st.booleans())
def test_a_random_reply_record_is_used_or_refused_never_raised(record, base):
    """Client 1's reply is a random record (on top of an honest one, or alone); clients
    0 and 2 are honest. The round always ends, client 1 is either booked or refused."""
    def answer(msg):
        rec = msg.content.config_records[RECORD]
        cid = rec["client"]
        out = honest(cid, 1.0 + 2 * cid)
        if cid == 1:
            out = (out | record) if base else record
        return Message(RecordDict({RECORD: ConfigRecord(out)}), reply_to=msg)

    spec = FederateSpec(rounds=1, client_fraction=1.0, local_epochs=1, batch_size=1,
                        norm_factor=10.0)
    strat = TicketStrategy(CODEC, {"w": torch.zeros(4)}, spec, 0, 3, lambda s: (0.5, 1.0),
                           client_sizes=[2, 2, 2], flops_per_example=5)
    engine = GridEngine(Loopback(answer), {0: 10, 1: 11, 2: 12}, timeout_s=5)
    ins = strat.configure_round(1)
    log = strat.aggregate_round(1, ins, *engine.train_round(ins))
    booked = {r.client for r in log.clients}
    refused = {f.client for f in log.failures}
    assert {0, 2} <= booked and (1 in booked) != (1 in refused)
    assert all(bool(torch.isfinite(t).all()) for t in strat.global_state.values())


# ------------------------------------------------------------- the sparse mod's decoder
layouts = st.one_of(
    st.text(max_size=30),
    st.lists(st.tuples(st.text(max_size=3),
                       st.lists(st.integers(-2, 6), max_size=3)), max_size=3)
    .map(lambda entries: json.dumps([[k, s] for k, s in entries])),
    st.just(json.dumps([["w", [4]]])),
    st.just(json.dumps([["w", [10**12]]])),  # a hostile size: refused before allocating
)
meta_records = st.fixed_dictionaries({}, optional={
    "layout": st.one_of(layouts, values), "mask": st.one_of(st.binary(max_size=16), values),
    "record": st.one_of(st.just("arrays"), values), "order": st.one_of(
        st.just('["w"]'), st.text(max_size=10), values), ACK: values})
payloads = st.one_of(st.binary(max_size=24), st.just(np.ones(3, "<f4").tobytes()))


def sparse_message(meta, payload, stype):
    arrays = ArrayRecord()
    arrays[PAYLOAD] = Array(dtype="float32", shape=(len(payload) // 4,), stype=stype,
                            data=payload)
    msg = Message(RecordDict({"arrays": arrays, META: ConfigRecord(meta)}), dst_node_id=3,
                  message_type="train")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


@FUZZ
@given(meta=meta_records, payload=payloads, stype=st.sampled_from([STYPE, "numpy.ndarray"]))
def test_the_mod_answers_any_record_with_a_reply_or_an_error(meta, payload, stype):
    ran = []

    def app(msg, context):
        ran.append(msg)
        return Message(RecordDict(), reply_to=msg)

    reply = sparse_update_mod(sparse_message(meta, payload, stype),
                              Context(1, 3, {}, RecordDict(), {}), app)
    assert isinstance(reply, Message)
    assert reply.has_error() or len(ran) == 1  # refused, or decoded and handed on


@FUZZ
@given(meta=meta_records, payload=payloads, stype=st.sampled_from([STYPE, "numpy.ndarray"]))
def test_sparse_grid_drops_any_undecodable_reply(meta, payload, stype):
    grid = SparseGrid(None, {"w": np.array([True, False, True, True])})
    msg = sparse_message(meta, payload, stype)
    reply = Message(msg.content, reply_to=msg)
    out = grid._receive(reply)
    assert isinstance(out, Message)
    if not out.has_error():  # decoded: then it is the dense model again
        assert tuple(out.content.array_records["arrays"]["w"].shape) == (4,)


def test_a_hostile_layout_size_is_refused_before_any_allocation():
    from fedticket.errors import FedticketError

    rec = ConfigRecord({"layout": json.dumps([["w", [10**12]]]), "mask": b"\x01"})
    with pytest.raises(FedticketError, match="elements"):
        SparseCodec.from_mask_message(rec)
