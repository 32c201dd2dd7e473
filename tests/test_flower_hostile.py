"""Hostile replies on the Flower path: GridEngine turns Flower messages into replies,
and TicketStrategy rejects the bad ones; the global model is the honest clients' mean."""

import numpy as np
import pytest
import torch

flwr = pytest.importorskip("flwr", reason="Flower is not installed: pip install -e '.[flower]'")

from flwr.app import ConfigRecord, Message, RecordDict  # noqa: E402

from fedticket.accounting import Codec  # noqa: E402
from fedticket.federated import TicketStrategy  # noqa: E402
from fedticket.flower.common import RECORD  # noqa: E402
from fedticket.flower.server_app import GridEngine  # noqa: E402
from fedticket.pruning import Mask  # noqa: E402
from fedticket.spec import FederateSpec  # noqa: E402
from shared import Loopback  # noqa: E402

pytestmark = pytest.mark.usefixtures("flower_task_identity")




MASK = Mask({"w": torch.tensor([True, False, True, True])})
CODEC = Codec(MASK)


def honest(rec, value):
    return {"client": rec["client"], "payload": CODEC.encode({"w": torch.full((4,), value)}),
            "num-examples": 2, "train-loss": 0.5, "flops": 10, "wall-s": 0.1, "cpu-s": 0.1}


NAN = np.array([np.nan, 1, 1], dtype="<f4").tobytes()
ATTACKS = [  # what client 1 sends instead of its update, and how it is logged
    ({"payload": NAN}, "rejected: payload holds values that are not finite"),
    ({"payload": b"\x00" * 16}, "rejected: payload has 16 bytes, expected 12"),
    ({"num-examples": 10**6}, "rejected: reported sample count 1000000 differs"),
    ({"num-examples": 0}, "rejected: reported sample count 0 is not a positive integer"),
    ({"num-examples": "2"}, "malformed reply"),
    ({"train-loss": float("inf")}, "rejected: reported train loss inf"),
    ({"client": 2}, "malformed reply"),  # it claims to be another client
    # costs enter the ledger only if believable: FLOPs are known exactly (5 a sample here)
    ({"flops": -1}, "rejected: reported FLOPs -1 are not a non-negative integer"),
    ({"flops": 10**12}, "rejected: reported FLOPs 1000000000000 differ from the 10"),
    ({"wall-s": -1.0}, "rejected: reported wall time -1.0 is not a finite number"),
    ({"cpu-s": float("nan")}, "rejected: reported CPU time nan is not a finite number"),
    # absurd times: longer than the server waited, or more CPU than 4096 threads could
    ({"wall-s": 1e6}, "rejected: reported wall time 1e+06 s is longer than"),
    ({"cpu-s": 1e6}, "rejected: reported CPU time 1e+06 s is more than 4096 threads"),
]


@pytest.mark.parametrize("attack, logged", ATTACKS)
def test_a_hostile_flower_reply_is_rejected_and_the_rest_aggregated(attack, logged):
    def answer(msg):
        rec = msg.content.config_records[RECORD]
        out = honest(rec, 1.0 + 2 * rec["client"])  # client 0 sends 1.0, client 2 sends 5.0
        if rec["client"] == 1:
            out |= attack
        return Message(RecordDict({RECORD: ConfigRecord(out)}), reply_to=msg)

    spec = FederateSpec(rounds=1, client_fraction=1.0, local_epochs=1, batch_size=1)
    strat = TicketStrategy(CODEC, {"w": torch.zeros(4)}, spec, 0, 3, lambda s: (0.5, 1.0),
                           client_sizes=[2, 2, 2], flops_per_example=5)
    engine = GridEngine(Loopback(answer), {0: 10, 1: 11, 2: 12}, timeout_s=5)
    ins = strat.configure_round(1)
    replies, failures = engine.train_round(ins)
    log = strat.aggregate_round(1, ins, replies, failures)
    assert strat.global_state["w"].tolist() == [3.0, 0.0, 3.0, 3.0]  # (1 + 5) / 2
    assert strat.totals.client_flops == 2 * 10  # the two honest clients' 5 x 2 x 1
    [f] = log.failures
    assert f.client == 1 and f.reason.startswith(logged), f.reason


# ------------------------------------------------------- one huge update under fedavg

def huge_update_round(**bounds):
    """Client 1 sends a finite but huge update (1e38); clients 0 and 2 send 1 and 5."""
    def answer(msg):
        rec = msg.content.config_records[RECORD]
        value = 1e38 if rec["client"] == 1 else 1.0 + 2 * rec["client"]
        return Message(RecordDict({RECORD: ConfigRecord(honest(rec, value))}), reply_to=msg)

    spec = FederateSpec(rounds=1, client_fraction=1.0, local_epochs=1, batch_size=1, **bounds)
    strat = TicketStrategy(CODEC, {"w": torch.zeros(4)}, spec, 0, 3, lambda s: (0.5, 1.0),
                           client_sizes=[2, 2, 2], flops_per_example=5)
    engine = GridEngine(Loopback(answer), {0: 10, 1: 11, 2: 12}, timeout_s=5)
    ins = strat.configure_round(1)
    replies, failures = engine.train_round(ins)
    return strat, strat.aggregate_round(1, ins, replies, failures)


def test_one_huge_update_wrecks_fedavg_without_a_norm_bound():
    strat, log = huge_update_round()
    assert not log.failures
    assert strat.global_state["w"][0].item() == pytest.approx((1 + 1e38 + 5) / 3, rel=1e-6)


@pytest.mark.parametrize("bounds, why", [
    ({"max_update_norm": 100.0}, "is above 100 (federate.max_update_norm)"),
    ({"norm_factor": 10.0}, "x the round's median update norm"),
])
def test_a_norm_bound_rejects_the_huge_update_and_keeps_the_honest_mean(bounds, why):
    strat, log = huge_update_round(**bounds)
    assert strat.global_state["w"].tolist() == [3.0, 0.0, 3.0, 3.0]  # (1 + 5) / 2
    [f] = log.failures
    # the norm of (1e38, 0, 1e38, 1e38) is sqrt(3) x 1e38, computed without overflow
    assert f.client == 1 and f.reason.startswith("rejected: update norm 1.732e+38"), f.reason
    assert why in f.reason


def test_the_median_bound_keeps_honest_updates_of_different_sizes():
    # honest norms sqrt(3) x 1, 3, 5; the median is sqrt(3) x 3: a factor of 2 keeps all
    def answer(msg):
        rec = msg.content.config_records[RECORD]
        return Message(RecordDict({RECORD: ConfigRecord(honest(rec, 1.0 + 2 * rec["client"]))}),
                       reply_to=msg)

    spec = FederateSpec(rounds=1, client_fraction=1.0, local_epochs=1, batch_size=1,
                        norm_factor=2.0)
    strat = TicketStrategy(CODEC, {"w": torch.zeros(4)}, spec, 0, 3, lambda s: (0.5, 1.0),
                           client_sizes=[2, 2, 2], flops_per_example=5)
    engine = GridEngine(Loopback(answer), {0: 10, 1: 11, 2: 12}, timeout_s=5)
    ins = strat.configure_round(1)
    log = strat.aggregate_round(1, ins, *engine.train_round(ins))
    assert not log.failures and strat.global_state["w"].tolist() == [3.0, 0.0, 3.0, 3.0]


# ------------------------------------------------------------- partition claims

class Federation(Loopback):
    """A loopback grid whose nodes are online or not, and answer the partition query
    with a partition id (or, for a hostile one, with anything)."""

    def __init__(self, claims):
        super().__init__(self.said)
        self.claims = dict(claims)  # node -> what it answers to the query
        self.online = set(self.claims)

    def get_node_ids(self):
        return sorted(self.online)

    def said(self, m):
        claim = ConfigRecord(self.claims[m.metadata.dst_node_id])
        return Message(RecordDict({RECORD: claim}), reply_to=m)  # src: m's dst


def test_a_partition_held_by_a_live_node_is_not_taken_over():
    grid = Federation({10: {"partition-id": 0}, 11: {"partition-id": 1}})
    engine = GridEngine(grid, {0: 10, 1: 11}, timeout_s=5)
    # a stranger joins and claims partition 1 while its node is online: refused
    grid.claims[99] = {"partition-id": 1}
    grid.online.add(99)
    assert engine.lost_state() == set() and engine.nodes == {0: 10, 1: 11}
    # a node that answers the query with garbage is ignored, not a crash
    grid.claims[98] = {"partition-id": "one"}
    grid.online.add(98)
    assert engine.lost_state() == set() and engine.nodes == {0: 10, 1: 11}
    # node 11 goes (killed, its heartbeat expired): the waiting claim is honoured now,
    # as a restarted SuperNode's is
    grid.online.discard(11)
    assert engine.lost_state() == {1} and engine.nodes == {0: 10, 1: 99}
    assert engine.lost_state() == set()  # once


def test_a_claim_whose_node_left_first_is_dropped():
    grid = Federation({10: {"partition-id": 0}, 11: {"partition-id": 1}})
    engine = GridEngine(grid, {0: 10, 1: 11}, timeout_s=5)
    grid.claims[99] = {"partition-id": 1}
    grid.online.add(99)
    assert engine.lost_state() == set()
    grid.online.discard(99)  # the claimant leaves, then the holder
    grid.online.discard(11)
    assert engine.lost_state() == set() and engine.nodes == {0: 10, 1: 11}
