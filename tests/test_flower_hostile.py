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

pytestmark = pytest.mark.usefixtures("flower_task_identity")


class Loopback:
    """A grid whose nodes answer at once, each with its own reply function."""

    def __init__(self, answer):
        self.answer, self.inbox = answer, {}

    def push_messages(self, messages):
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            ids.append(m.object_id)
            self.inbox[m.object_id] = self.answer(m)
        return ids

    def pull_messages(self, ids):
        return [self.inbox.pop(i) for i in list(ids) if i in self.inbox]


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
