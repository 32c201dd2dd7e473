"""The engine-free strategy: sampling, mask bookkeeping, failures, aggregation."""

import numpy as np
import pytest
import torch

from fedticket.accounting import Codec
from fedticket.errors import FedticketError
from fedticket.federated import Failure, Reply, TicketStrategy, fedavg
from fedticket.federated.aggregate import coordinate_median, trimmed_mean
from fedticket.federated.validate import check_state
from fedticket.pruning import Mask
from fedticket.spec import FederateSpec
from test_federated import Recorder


def setup(fraction=1.0, min_replies=1):
    mask = Mask({"w": torch.tensor([True, False, True, True])})
    codec = Codec(mask)
    state = {"w": torch.tensor([1.0, 0.0, 2.0, 3.0])}
    spec = FederateSpec(rounds=2, client_fraction=fraction, local_epochs=1, batch_size=1)
    evals = []

    def evaluate_fn(s):
        evals.append(s["w"].clone())
        return 0.5, 1.0

    return codec, TicketStrategy(codec, state, spec, 0, 3, evaluate_fn, min_replies), evals


def reply(codec, cid, values, n):
    return Reply(cid, codec.encode({"w": torch.tensor(values)}), n, 0.5, 100, 0.1, 0.1)


def test_mask_goes_once_to_each_client_that_replied():
    codec, strat, _ = setup()
    first = strat.configure_round(1)
    assert [i.client for i in first] == [0, 1, 2]
    assert all(len(i.mask) == len(codec.encode_mask()) > 0 for i in first)
    assert len(first[0].payload) == 4 * 3  # three kept float32 values
    log = strat.aggregate_round(1, first, [reply(codec, 0, [1, 0, 1, 1], 1),
                                           reply(codec, 1, [3, 0, 3, 3], 3)],
                                [Failure(1, 2, "no reply")])
    # (1*1 + 3*3) / 4 = 2.5 on kept entries; the pruned one stays exactly 0
    assert strat.global_state["w"].tolist() == [2.5, 0.0, 2.5, 2.5]
    assert log.train_loss == 0.5 and len(log.clients) == 2 and log.totals.failures == 1
    # client 2 never replied: it is charged its download but still lacks the mask
    second = strat.configure_round(2)
    assert {i.client: len(i.mask) > 0 for i in second} == {0: False, 1: False, 2: True}
    t = log.totals
    assert t.down_bytes == 3 * (12 + len(codec.encode_mask())) and t.up_bytes == 2 * 12


def test_a_client_whose_engine_lost_its_state_is_sent_the_mask_again():
    """A restarted SuperNode (the engine says so) gets the mask in the next round, and the
    ledger books it: one more mask message than with every client keeping its state."""
    codec, strat, _ = setup()
    mask_len = len(codec.encode_mask())

    class Restarts:  # client 1's node comes back empty before round 2
        name = "restarts"

        def __init__(self):
            self.masks = []

        def train_round(self, instructions):
            self.masks.append({i.client: len(i.mask) for i in instructions})
            return [reply(codec, i.client, [1.0, 0.0, 1.0, 1.0], 1) for i in instructions], []

        def lost_state(self):
            return {1} if len(self.masks) == 1 else set()

    recorder = Recorder()
    engine = Restarts()
    strat.start(engine, [recorder])
    assert engine.masks == [{0: mask_len, 1: mask_len, 2: mask_len}, {0: 0, 1: mask_len, 2: 0}]
    assert recorder.logs[-1].totals.mask_bytes == 4 * mask_len


def test_bad_payloads_are_failures_and_the_rest_is_averaged():
    codec, strat, _ = setup()
    ins = strat.configure_round(1)
    good = reply(codec, 0, [4, 0, 4, 4], 2)
    short = Reply(1, b"\x00" * 5, 1, 0.1, 1, 0.1, 0.1)
    stranger = Reply(7, good.payload, 1, 0.1, 1, 0.1, 0.1)
    again = reply(codec, 0, [100, 0, 100, 100], 50)  # client 0 once more
    log = strat.aggregate_round(1, ins, [good, short, stranger, again])
    assert strat.global_state["w"].tolist() == [4.0, 0.0, 4.0, 4.0]
    reasons = [(f.client, f.reason) for f in log.failures]
    assert [c for c, _ in reasons] == [1, 7, 0] and "expected 12" in reasons[0][1]
    assert reasons[2][1] == "a second reply"


def test_too_few_replies_stop_the_run():
    codec, strat, _ = setup(min_replies=2)
    ins = strat.configure_round(1)
    with pytest.raises(FedticketError, match="1 usable replies, fewer than the minimum 2"):
        strat.aggregate_round(1, ins, [reply(codec, 0, [1, 0, 1, 1], 1)])


def test_start_evaluates_round_zero_and_every_round_through_any_engine():
    codec, strat, evals = setup()

    class Echo:  # every client sends back the global model plus one
        name = "echo"

        def train_round(self, instructions):
            out = []
            for i in instructions:
                w = codec.decode(i.payload)["w"] + torch.tensor([1.0, 0.0, 1.0, 1.0])
                out.append(reply(codec, i.client, w.tolist(), 1))
            return out, []

        def lost_state(self):
            return set()

    rounds = []
    final = strat.start(Echo(), [type("CB", (), {"on_round": lambda s, log: rounds.append(
        (log.round, log.test_accuracy))})()])
    assert rounds == [(0, 0.5), (1, 0.5), (2, 0.5)]
    assert final["w"].tolist() == [3.0, 0.0, 4.0, 5.0]
    assert [e.tolist() for e in evals] == [[1, 0, 2, 3], [2, 0, 3, 4], [3, 0, 4, 5]]
    assert fedavg([(final, 1)])["w"].tolist() == final["w"].tolist()


def test_sparse_evaluation_scores_every_round_until_the_declared_targets_are_reached():
    """Accuracy per round is scripted: 0.1, 0.2, 0.6, 0.3, 0.8, 0.9, 0.95 (rounds 0-6).
    With eval_every=3 only rounds 0, 3 and 6 are scored, unless targets are declared:
    then every round is scored until each target has been reached."""
    accs = [0.1, 0.2, 0.6, 0.3, 0.8, 0.9, 0.95]
    codec = Codec(Mask({"w": torch.tensor([True])}))
    for targets, scored in [((), [0, 3, 6]), ((0.5,), [0, 1, 2, 3, 6]),
                            ((0.5, 0.85), [0, 1, 2, 3, 4, 5, 6]), ((0.99,), list(range(7)))]:
        spec = FederateSpec(rounds=6, client_fraction=1.0, local_epochs=1, batch_size=1,
                            eval_every=3, targets=targets)

        def evaluate_fn(s):  # the model's one weight is its round number
            return accs[int(s["w"][0])], 0.0

        strat = TicketStrategy(codec, {"w": torch.tensor([0.0])}, spec, 0, 1, evaluate_fn)

        class Count:
            name = "count"

            def train_round(self, instructions):
                return [reply(codec, i.client, [float(i.round)], 1) for i in instructions], []

            def lost_state(self):
                return set()

        recorder = Recorder()
        strat.start(Count(), [recorder])
        logs = recorder.logs
        assert [log.round for log in logs] == list(range(7))
        assert [log.round for log in logs if log.test_accuracy is not None] == scored, targets
        first = {t: next(log.round for log in logs if (log.test_accuracy or 0) >= t)
                 for t in targets if t <= max(accs)}
        assert first == {t: {0.5: 2, 0.85: 5}[t] for t in first}  # exact first rounds



def test_stateless_clients_get_the_mask_with_every_download():
    from dataclasses import replace

    codec, strat, _ = setup()
    strat.spec = replace(strat.spec, mask_once=False)
    size = len(codec.encode_mask())
    for r in (1, 2):
        ins = strat.configure_round(r)
        assert [len(i.mask) for i in ins] == [size] * 3
        log = strat.aggregate_round(r, ins, [reply(codec, i.client, [1, 0, 1, 1], 1)
                                             for i in ins])
    # 2 rounds x 3 clients x (12 B of values + the mask)
    assert log.totals.mask_bytes == 6 * size and log.totals.down_bytes == 6 * (12 + size)


def raw_reply(cid, values, n=3, loss=0.5):
    payload = np.asarray(values, dtype="<f4").tobytes()
    return Reply(cid, payload, n, loss, 100, 0.1, 0.1)


HOSTILE = [  # (reply from client 1, the reason it is rejected)
    (lambda c: raw_reply(1, [np.nan, 1, 1]), "not finite"),
    (lambda c: raw_reply(1, [np.inf, 1, 1]), "not finite"),
    (lambda c: raw_reply(1, [-np.inf, 1, 1]), "not finite"),
    (lambda c: raw_reply(1, [1, 1, 1, 1]), "expected 12"),  # a dense update: wrong shape
    (lambda c: raw_reply(1, [1, 1]), "expected 12"),
    (lambda c: raw_reply(1, [1, 1, 1], n=0), "not a positive integer"),
    (lambda c: raw_reply(1, [1, 1, 1], n=-4), "not a positive integer"),
    (lambda c: raw_reply(1, [1, 1, 1], n=2.5), "not a positive integer"),
    (lambda c: raw_reply(1, [1, 1, 1], n=True), "not a positive integer"),
    (lambda c: raw_reply(1, [1, 1, 1], n=10**9), "differs from the client's partition size 3"),
    (lambda c: raw_reply(1, [1, 1, 1], loss=float("nan")), "train loss"),
]


@pytest.mark.parametrize("make, reason", HOSTILE)
def test_a_hostile_reply_is_rejected_and_the_rest_aggregated(make, reason):
    mask = Mask({"w": torch.tensor([True, False, True, True])})
    codec = Codec(mask)
    spec = FederateSpec(rounds=1, client_fraction=1.0, local_epochs=1, batch_size=1)
    strat = TicketStrategy(codec, {"w": torch.tensor([1.0, 0.0, 2.0, 3.0])}, spec, 0, 3,
                           lambda s: (0.5, 1.0), client_sizes=[2, 3, 2])
    ins = strat.configure_round(1)
    log = strat.aggregate_round(1, ins, [reply(codec, 0, [4, 0, 4, 4], 2), make(codec),
                                         reply(codec, 2, [2, 0, 2, 2], 2)])
    # (2*4 + 2*2) / 4 = 3 on kept entries; the hostile reply left no trace
    assert strat.global_state["w"].tolist() == [3.0, 0.0, 3.0, 3.0]
    [failure] = log.failures
    assert failure.client == 1 and failure.reason.startswith("rejected: ")
    assert reason in failure.reason
    assert log.totals.up_bytes == 2 * 12 and log.totals.failures == 1


def test_an_update_with_weights_outside_the_mask_is_rejected(monkeypatch):
    """The codec cannot carry values outside the mask; the check holds whatever decoded
    the update (here a decoder that fills the pruned entry)."""
    codec, strat, _ = setup()
    ins = strat.configure_round(1)
    real = codec.decode

    def leaky(payload):
        s = real(payload)
        if s["w"][0] == 9:
            s["w"][1] = 5.0
        return s

    monkeypatch.setattr(codec, "decode", leaky)
    log = strat.aggregate_round(1, ins, [reply(codec, 0, [9, 0, 9, 9], 1),
                                         reply(codec, 1, [1, 0, 1, 1], 1)])
    assert strat.global_state["w"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert "non-zero values outside the mask" in log.failures[0].reason


def test_check_state_names_wrong_tensors_shapes_and_dtypes():
    mask = Mask({"w": torch.tensor([True, False])})
    ref = {"w": torch.zeros(2), "b": torch.zeros(1)}
    assert check_state({"w": torch.zeros(2)}, ref, mask).startswith("update has other tensors")
    assert "shape (3,)" in check_state({"w": torch.zeros(3), "b": torch.zeros(1)}, ref, mask)
    assert "dtype torch.int64" in check_state(
        {"w": torch.zeros(2, dtype=torch.long), "b": torch.zeros(1)}, ref, mask)
    assert check_state({"w": torch.tensor([7.0, 0.0]), "b": torch.ones(1)}, ref, mask) is None


def test_median_and_trimmed_mean_by_hand():
    ups = [{"w": torch.tensor([1.0, 0.0, -3.0])}, {"w": torch.tensor([2.0, 0.0, 5.0])},
           {"w": torch.tensor([1e6, 0.0, 4.0])}, {"w": torch.tensor([3.0, 0.0, 1.0])}]
    # even count: mean of the two middle values; pruned entry stays 0
    assert coordinate_median(ups)["w"].tolist() == [2.5, 0.0, 2.5]
    assert coordinate_median(ups[:3])["w"].tolist() == [2.0, 0.0, 4.0]
    # trim 0.25 of 4: drop one at each end -> mean of the middle two
    assert trimmed_mean(ups, 0.25)["w"].tolist() == [2.5, 0.0, 2.5]
    assert trimmed_mean(ups, 0.0)["w"][2].item() == pytest.approx(7 / 4)


@pytest.mark.parametrize("aggregation, expected", [
    ("fedavg", (4 + 1 + 1e4) / 3), ("median", 4.0), ("trimmed-mean", 4.0)])
def test_robust_aggregation_resists_one_large_finite_update(aggregation, expected):
    """A finite but huge update passes every check; only a robust rule contains it."""
    mask = Mask({"w": torch.tensor([True, False, True, True])})
    codec = Codec(mask)
    spec = FederateSpec(rounds=1, client_fraction=1.0, local_epochs=1, batch_size=1,
                        aggregation=aggregation, trim_fraction=0.34)
    strat = TicketStrategy(codec, {"w": torch.zeros(4)}, spec, 0, 3, lambda s: (0.5, 1.0))
    ins = strat.configure_round(1)
    strat.aggregate_round(1, ins, [reply(codec, 0, [4, 0, 4, 4], 1),
                                   reply(codec, 1, [1, 0, 1, 1], 1),
                                   reply(codec, 2, [1e4, 0, 1e4, 1e4], 1)])
    assert strat.global_state["w"][0].item() == pytest.approx(expected)
    assert strat.global_state["w"][1].item() == 0.0


def test_a_global_model_that_is_not_finite_stops_the_run(monkeypatch):
    from fedticket.errors import DivergenceError

    codec, strat, _ = setup()
    ins = strat.configure_round(1)
    monkeypatch.setattr(strat, "aggregate", lambda ups: {"w": torch.tensor([1.0, 0, 1, 1e39])})
    with pytest.raises(DivergenceError, match="round 1: the aggregated model"):
        strat.aggregate_round(1, ins, [reply(codec, 0, [1, 0, 1, 1], 1)])
