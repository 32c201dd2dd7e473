"""The rivals the peer grid added for a fair verdict: FedPM (its aggregation, its bytes in
both directions), top-k both ways with the server's error feedback, and one booking
convention for the start of training (docs/PEERS.md)."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import needs_fmnist
from fedticket.accounting import maskcode
from fedticket.accounting.wire import positions_bytes
from fedticket.federated import fedpm
from fedticket.federated.messages import Instruction
from fedticket.federated.simulate import threads
from fedticket.federated.tasks import client_for, respond
from fedticket.models import build
from fedticket.pruning.mask import Mask
from fedticket.runner import run_one
from fedticket.spec import ModelSpec, apply_overrides
from preset_runs import preset_spec


# ------------------------------------------------------------------------- FedPM
def test_fedpm_aggregates_three_clients_masks_as_the_beta_posteriors_mode():
    # three clients' masks over four entries: kept by 0, 1, 2 and 3 of them
    masks = [{"w": torch.tensor([False, True, True, True])},
             {"w": torch.tensor([False, False, True, True])},
             {"w": torch.tensor([False, False, False, True])}]
    counts, clients = fedpm.aggregate_masks(masks)
    assert clients == 3 and counts["w"].tolist() == [0, 1, 2, 3]
    theta = fedpm.theta_of(counts, clients)["w"]
    # Beta(1, 1) prior, bits smoothed to 0.01 / 0.99: alpha = 1 + sum(v), beta = 1 + sum(1 - v),
    # mode (alpha - 1) / (alpha + beta - 2) = sum(v) / 3
    by_hand = [0.03 / 3, (0.99 + 0.02) / 3, (1.98 + 0.01) / 3, 2.97 / 3]
    assert theta.tolist() == pytest.approx(by_hand, abs=1e-7)
    assert by_hand == pytest.approx([0.01, 0.336667, 0.663333, 0.99], abs=1e-6)


def test_fedpm_counts_travel_exactly_and_near_their_entropy():
    rng = np.random.default_rng(0)
    counts = [rng.binomial(10, 0.1, size=20_000), rng.binomial(10, 0.7, size=(50, 40)),
              np.zeros(7, dtype=np.int64)]
    msg = fedpm.encode_counts(counts, 10)
    back, clients = fedpm.decode_counts(msg, [20_000, 2_000, 7])
    assert clients == 10
    assert all(np.array_equal(a.reshape(-1), b) for a, b in zip(counts, back, strict=True))
    bound = 0.0  # each tensor's n * H(its counts' histogram), in bytes
    for c in counts:
        p = np.bincount(c.reshape(-1), minlength=11) / c.size
        bound += c.size * -sum(q * math.log2(q) for q in p if q > 0) / 8
    header = 1 + 1 + 3 * 11 * 2  # tag, K, per tensor 11 varints of up to 2 bytes
    assert len(msg) <= 1.01 * bound + header + 8
    with pytest.raises(Exception, match="counts"):
        fedpm.decode_counts(msg[:-4], [20_000, 2_000, 7])


@pytest.fixture(scope="module")
def fedpm_client():
    spec = apply_overrides(preset_spec("peers", "fedpm"), {})
    model = build(ModelSpec(name="cnn-fedavg"), (1, 28, 28), 10)
    trainer, codec = client_for(fedpm.FEDPM, model, Mask.full(model), spec.federate,
                                (1, 28, 28))
    return trainer, codec, model


def test_a_fedpm_upload_costs_within_5_percent_of_n_h_p_of_the_mask_it_sends(fedpm_client):
    from fedticket.data import Labeled

    trainer, codec, model = fedpm_client
    names = fedpm.scored_names(codec.names, model.state_dict())
    # a download of counts from K = 4 clients, skewed per tensor as after a few rounds
    rng = np.random.default_rng(1)
    counts = [rng.binomial(4, p, size=codec.shapes[n]) for n, p in
              zip(names, np.linspace(0.1, 0.9, len(names)), strict=True)]
    payload = fedpm.encode_counts(counts, 4)
    g = torch.Generator().manual_seed(0)
    data = Labeled(torch.randn(20, 1, 28, 28, generator=g), torch.arange(20) % 10)
    rep = respond(trainer, codec, Instruction(2, 0, payload, b"", 7, fedpm.FEDPM), data)
    sent = maskcode.decode(rep.payload, [codec.shapes[n] for n in names])
    per_tensor = sum(maskcode.entropy_bits(m.reshape(-1)) for m in sent) / 8
    whole = maskcode.entropy_bits(np.concatenate([m.reshape(-1) for m in sent])) / 8
    assert abs(len(rep.payload) / per_tensor - 1) < 0.05
    assert len(rep.payload) <= 1.05 * whole
    assert rep.flops == trainer.flops_per_sample * 20  # one epoch of dense training


def test_fedpm_frozen_weights_are_the_authors_signed_constants():
    init = {"fc.weight": torch.tensor([[0.3, -0.2, 0.0, 1.0]]), "fc.bias": torch.tensor([-1.0])}
    frozen = fedpm.frozen_weights(init, ["fc.weight", "fc.bias"])
    c = math.e * math.sqrt(1 / 4)
    assert frozen["fc.weight"][0].tolist() == pytest.approx([c, -c, c, c])
    assert frozen["fc.bias"].tolist() == pytest.approx([-c])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Short runs (tests/preset_runs.py's shrunk peers settings: 5 clients, 2 a round,
    2 rounds) of the rivals, each under both booking conventions where it matters."""
    out = tmp_path_factory.mktemp("rivals")
    got = {}
    with threads(1):
        for method, init_bytes in [("fedpm", "seed"), ("topk-ef-2way", "seed"),
                                   ("snip-ticket", "seed"), ("snip-ticket", "weights"),
                                   ("fedavg", "weights")]:
            spec = apply_overrides(preset_spec("peers", method),
                                   {"federate.init_bytes": init_bytes})
            folder = run_one(spec, out, stream=None)
            got[method, init_bytes] = [json.loads(line) for line in
                                       (folder / "metrics.jsonl").read_text().splitlines()]
    return got


N = 1_663_370
"""Entries of the FedAvg CNN."""


@needs_fmnist
def test_fedpm_books_the_seed_then_its_counts_down_and_its_masks_up(runs):
    rows = runs["fedpm", "seed"]
    assert rows[1]["cum_down_bytes"] == 2 * 8  # round 1: the scores' seed, 8 bytes of 9
    down2 = rows[2]["cum_down_bytes"] - rows[1]["cum_down_bytes"]
    # round 2: K = 2 clients' counts, at most log2(3) bits an entry, and far below float32
    assert 2 * 50 < down2 < 2 * N * math.log2(3) / 8 + 200
    up = rows[1]["cum_up_bytes"]
    assert 2 * N / 8 * 0.5 < up < 2 * (N / 8 + 100)  # two masks near 1 bit an entry
    assert rows[-1]["test_accuracy"] is not None


@needs_fmnist
def test_two_way_topk_sends_k_values_down_to_a_client_that_holds_the_start(runs):
    rows = runs["topk-ef-2way", "seed"]
    k = round(0.2 * N)
    topk = positions_bytes(k, N) + 4 * k  # a bitmap of positions (1 + N/8) and k floats
    assert topk == 1 + (N + 7) // 8 + 4 * k
    assert rows[1]["cum_down_bytes"] == 2 * 8  # round 1: the seeded start
    assert rows[2]["cum_down_bytes"] == 2 * 8 + 2 * topk  # round 2: top-k of a change
    assert rows[2]["cum_up_bytes"] == 4 * topk
    fedavg = runs["fedavg", "weights"]
    assert fedavg[1]["cum_down_bytes"] == 2 * 4 * N  # the old convention: the weights


@needs_fmnist
def test_snip_ticket_under_both_conventions_differs_by_the_start_it_sends(runs):
    seed, weights = runs["snip-ticket", "seed"], runs["snip-ticket", "weights"]
    # the prelude asks all 5 clients (dense model down, float32 scores up); round 1 sends
    # the start under the mask (its kept values) to 2 clients: 5 downloads of 4 N bytes
    # and 2 of the kept values' become 7 of 8 bytes
    assert weights[0]["cum_up_bytes"] == seed[0]["cum_up_bytes"] == 5 * 4 * N
    assert weights[0]["cum_down_bytes"] - seed[0]["cum_down_bytes"] == 5 * (4 * N - 8)
    kept = (weights[2]["cum_down_bytes"] - weights[1]["cum_down_bytes"]  # round 2's payloads
            - (weights[2]["cum_mask_bytes"] - weights[1]["cum_mask_bytes"])) // 2
    assert 0.15 * N < kept / 4 < 0.25 * N  # 80% sparsity over the body, a dense head
    diff = weights[-1]["cum_down_bytes"] - seed[-1]["cum_down_bytes"]
    assert diff == 5 * (4 * N - 8) + 2 * (kept - 8)
    assert [r["test_accuracy"] for r in seed] == [r["test_accuracy"] for r in weights]
