"""The engine-free strategy: sampling, mask bookkeeping, failures, aggregation."""

import pytest
import torch

from fedticket.accounting import Codec
from fedticket.errors import FedticketError
from fedticket.federated import Failure, Reply, TicketStrategy, fedavg
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
