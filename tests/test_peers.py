"""The peers' methods: each algorithm on a case small enough to check by hand, and the
bytes of each preset's first two rounds against arithmetic."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedticket.accounting import layer_costs, maskcode, train_flops_per_sample
from fedticket.accounting.wire import (
    BITMAP,
    INDEX_LIST,
    QSGD_BUCKET,
    Codec,
    UpdateCode,
    qsgd_decode,
    qsgd_encode,
    topk_decode,
    topk_encode,
)
from fedticket.cli import main
from fedticket.data import Labeled, load_splits
from fedticket.errors import FedticketError
from fedticket.federated import LocalEngine, TicketStrategy
from fedticket.federated.client import LocalTrainer
from fedticket.federated.dst import alpha_at, merge, readjusted_mask
from fedticket.federated.saliency import snip_scores
from fedticket.flower.inprocess import InProcessFlower
from fedticket.pruning.mask import Mask
from fedticket.pruning.synflow import synflow_prune, synflow_scores
from fedticket.runner import fresh_model, pretrain_and_prune, starting_weights
from fedticket.spec import METHODS, FederateSpec, load_config
from shared import GOOD

# ------------------------------------------------------------------------- top-k + EF


def test_topk_sends_the_k_largest_and_error_feedback_keeps_the_rest():
    change = np.array([0.5, -3.0, 0.1, 2.0, -0.2, 0.05], dtype=np.float32)
    residual = np.array([0.0, 0.5, 0.0, -1.5, -1.0, 0.0], dtype=np.float32)
    code = UpdateCode("topk", n=6, density=0.5, error_feedback=True)  # k = 3
    payload, new_residual = code.encode(change, residual, np.random.default_rng(0))
    # change + residual = [0.5, -2.5, 0.1, 0.5, -1.2, 0.05]: the 3 largest are -2.5, -1.2
    # and one of the two 0.5s; the index list (1 + 12 bytes) loses to the bitmap (1 + 1)
    sent = code.decode(payload)
    assert payload[0] == BITMAP and len(payload) == 1 + 1 + 4 * 3
    assert sent[1] == -2.5 and sent[4] == pytest.approx(-1.2)
    assert np.count_nonzero(sent) == 3 and {0, 3} & set(np.flatnonzero(sent))
    # what was not sent is the new residual, exactly
    np.testing.assert_array_equal(new_residual, change + residual - sent)
    assert np.count_nonzero(new_residual) == 3


def test_topk_positions_are_an_index_list_when_that_is_cheaper():
    v = np.zeros(1000, dtype=np.float32)
    v[[7, 500, 999]] = [1.0, -2.0, 3.0]
    payload, idx = topk_encode(v, 3)
    assert payload[0] == INDEX_LIST and len(payload) == 1 + 12 + 12  # vs 1 + 125 bitmap
    assert list(idx) == [7, 500, 999]
    np.testing.assert_array_equal(topk_decode(payload, 1000, 3), v)
    with pytest.raises(FedticketError, match="bytes"):
        topk_decode(payload[:-1], 1000, 3)


def test_topk_without_error_feedback_forgets_what_it_did_not_send():
    code = UpdateCode("topk", n=4, density=0.25)
    _, residual = code.encode(np.array([1, 2, 3, 4], np.float32), None,
                              np.random.default_rng(0))
    assert residual is None


# ------------------------------------------------------------------------------- QSGD


@pytest.mark.parametrize("bits, levels", [(8, 127), (4, 7)])
def test_qsgd_is_unbiased_and_within_one_level(bits, levels):
    rng = np.random.default_rng(1)
    v = rng.standard_normal(1000).astype(np.float32)
    draws = np.stack([qsgd_decode(qsgd_encode(v, bits, np.random.default_rng(i)), 1000, bits)
                      for i in range(4000)])
    # one draw is within one level (scale / s) of v, the mean of many within 5 standard
    # errors of it: each value's rounding has variance at most (scale / s)^2 / 4
    norms = [np.abs(v[:QSGD_BUCKET]).max(), np.abs(v[QSGD_BUCKET:]).max()]
    step = np.repeat(np.array(norms) / levels, QSGD_BUCKET)[:1000]
    assert (np.abs(draws[0] - v) <= step * (1 + 1e-5)).all()
    assert (np.abs(draws.mean(0) - v) <= 5 * step / 2 / math.sqrt(4000)).all()
    # two scales (float32) and one code per value, two a byte at 4 bits
    assert len(qsgd_encode(v, bits, rng)) == 4 * 2 + (1000 if bits == 8 else 500)


def test_qsgd_rejects_levels_outside_its_range():
    payload = bytearray(qsgd_encode(np.ones(4, np.float32), 4, np.random.default_rng(0)))
    payload[-1] = 0xFF  # a nibble of 15 is level 8 > 7
    with pytest.raises(FedticketError, match="level outside"):
        qsgd_decode(bytes(payload), 4, 4)


# ------------------------------------------------------------------------------- SNIP


def test_snip_scores_are_grad_times_weight_summed_over_the_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    data = Labeled(torch.randn(8, 1, 1, 3), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1]))
    spec = FederateSpec(batch_size=4, compute="dense-masked")
    trainer = LocalTrainer(net, Mask.full(net), spec, (1, 1, 3))
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    scores, loss, seen = snip_scores(trainer, state, data, 2, g)
    # by hand: the same two batches, one backward each, |g * w| added up
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    ref = nn.Sequential(nn.Flatten(), nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ref.load_state_dict(state)
    ref.eval()
    want = {k: torch.zeros_like(v) for k, v in state.items()}
    losses = []
    for b in (perm[:4], perm[4:]):
        ref.zero_grad()
        batch_loss = F.cross_entropy(ref(data.x[b]), data.y[b])
        batch_loss.backward()
        losses.append(float(batch_loss.detach()))
        for k, p in ref.named_parameters():
            want[k] += (p.grad * p).abs()
    assert seen == 8 and loss == pytest.approx(sum(losses) / 2)
    for k in state:
        torch.testing.assert_close(scores[k], want[k], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- SynFlow


def chain():
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]]))
        net[1].weight.copy_(torch.tensor([[7.0, -8.0]]))
    return net


def test_synflow_scores_on_a_linear_chain():
    # R = 1' |W2| |W1| 1 = 7 (1 + 2 + 3) + 8 (4 + 5 + 6) = 162; the score of a weight is
    # |w| times the flow through the rest of the chain: W1[i, j] -> |w| |W2[0, i]|,
    # W2[0, i] -> |w| sum_j |W1[i, j]|
    scores = synflow_scores(chain(), Mask.full(chain()), ["0.weight", "1.weight"], (3,))
    assert scores["0.weight"].tolist() == [[7, 14, 21], [32, 40, 48]]
    assert scores["1.weight"].tolist() == [[42, 120]]


def test_synflow_prunes_iteratively_to_the_exact_count():
    mask = synflow_prune(chain(), ["0.weight", "1.weight"], 0.5, 10, (3,))
    assert mask.nnz == 4  # round(8 * 0.5)
    # layer collapse is what iterating avoids: the last layer keeps a path
    assert bool(mask["1.weight"].any()) and bool(mask["0.weight"].any())
    # one shot would keep the four largest scores, 48, 42, 40, 32, cutting W1's first
    # row to nothing but keeping W2[0, 0] that only it feeds; iterating re-scores
    one_shot = synflow_prune(chain(), ["0.weight", "1.weight"], 0.5, 1, (3,))
    assert one_shot["0.weight"][0].sum() == 0 and bool(one_shot["1.weight"][0, 0])
    assert mask["0.weight"][0].sum() == 0 or not bool(mask["1.weight"][0, 0])


# ----------------------------------------------------------------- bytes of each preset

TINY = (GOOD.replace('methods = ["fedavg"]', 'methods = ["{method}"]')
        .replace("rounds = 1", "rounds = 2") + "[prune]\nsparsity = 0.8\n")
# the MLP on 8x8 digits: 64*16 + 16 + 16*10 + 10 = 1210 values; prunable: the body's
# 1024 weights, of which 20% (205) are kept, so a ticket holds 205 + 16 + 160 + 10 = 391
NUMEL, KEPT = 1210, 391


def run_rows(tmp_path: Path, method: str) -> tuple[list[dict], list[dict], dict]:
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.format(method=method))
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet",
                 "--threads", "1"]) == 0
    [run] = [p for p in (tmp_path / "out").iterdir() if p.name.startswith(method)]
    clients = [json.loads(x) for x in (run / "clients.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return clients, metrics, json.loads((run / "mask_report.json").read_text())


def coded_mask(out: Path, method: str) -> int:
    """Length of the entropy code of the mask a run in ``out`` saved."""
    [run] = [p for p in out.iterdir() if p.name.startswith(method)]
    with np.load(run / "mask.npz") as m:
        return len(maskcode.encode([m[k] for k in m.files]))


def bitmap_or_list(k: int, n: int) -> int:
    return 1 + min(math.ceil(n / 8), 4 * k)


# A ticket's mask goes entropy-coded (fedticket.accounting.maskcode): the tag; a varint
# per tensor (2 bytes for the body's 2 * 205, 1 for its bias, 2 for the head's row and
# column counts, as a full tensor factors, 1 for its bias); then 24 32-bit ANS words
# for the body's 1024 bits at density 205/1024 (the bound 1024 * H(0.2) is 740 bits,
# 23.1 words). A bitmap would take 1 + 152 bytes.
MASK = 1 + 2 + 1 + 2 + 1 + 4 * 24


UPLOADS = {  # method: (values a download holds, bytes of one upload)
    "topk-ef": (NUMEL, bitmap_or_list(242, NUMEL) + 4 * 242),      # k = round(0.2 * 1210)
    "qsgd-8": (NUMEL, 4 * 3 + NUMEL),                              # 3 buckets of 512
    "qsgd-4": (NUMEL, 4 * 3 + NUMEL // 2),
    "qsgd-8-dae": (NUMEL, 4 * 3 + NUMEL),
    "dae-ticket-topk": (KEPT, bitmap_or_list(78, KEPT) + 4 * 78),  # k = round(0.2 * 391)
    "dae-ticket-qsgd": (KEPT, 4 * 1 + KEPT),
    "synflow-ticket": (KEPT, 4 * KEPT),
}


@pytest.mark.parametrize("method", sorted(UPLOADS))
def test_first_two_rounds_bytes_by_hand(tmp_path, method):
    values, up = UPLOADS[method]
    clients, metrics, report = run_rows(tmp_path, method)
    assert [r["round"] for r in clients] == [1, 1, 2, 2]  # 2 of the 4 clients a round
    mask = 0 if values == NUMEL else MASK
    if method == "synflow-ticket":  # its mask leaves whole rows of the body empty
        mask = coded_mask(tmp_path / "out", method)
        assert mask < MASK
    assert report["wire"]["mask_message_bytes"] == mask
    # a random start is the run's seed: its round-1 download is booked as those 8 bytes
    # (federate.init_bytes = seed); a DAE-pretrained start costs its values
    seeded = not method.startswith("dae") and not method.endswith("-dae")
    for r in clients:
        assert r["down_bytes"] == (8 if seeded and r["round"] == 1 else 4 * values)
        assert r["up_bytes"] == up
    first = {r["client"] for r in clients if r["round"] == 1}
    masks = sum(r["mask_bytes"] for r in clients)
    new_in_2 = sum(1 for r in clients if r["round"] == 2 and r["client"] not in first)
    assert masks == mask * (2 + new_in_2)  # the mask goes once to each client
    assert metrics[-1]["cum_up_bytes"] == 4 * up
    assert metrics[-1]["cum_down_bytes"] == (2 * 8 + 2 * 4 * values if seeded
                                             else 4 * 4 * values) + masks


def test_snip_ticket_books_the_clients_saliency_in_round_0(tmp_path):
    clients, metrics, report = run_rows(tmp_path, "snip-ticket")
    # round 0: every client (snip_fraction = 1) gets the dense init (its seed: 8 bytes,
    # federate.init_bytes = seed) and uploads a dense float32 score per value; then
    # training runs on the 391 kept values, from the same seeded init in round 1
    zero = [r for r in clients if r["round"] == 0]
    assert sorted(r["client"] for r in zero) == [0, 1, 2, 3]
    assert all(r["down_bytes"] == 8 and r["up_bytes"] == 4 * NUMEL for r in zero)
    assert metrics[0]["cum_up_bytes"] == 4 * 4 * NUMEL
    assert metrics[0]["cum_down_bytes"] == 4 * 8
    assert report["nnz"] == KEPT
    trained = [r for r in clients if r["round"] > 0]
    assert all(r["up_bytes"] == 4 * KEPT for r in trained)
    assert all(r["down_bytes"] == (8 if r["round"] == 1 else 4 * KEPT) for r in trained)
    mask = coded_mask(tmp_path / "out", "snip-ticket")  # SNIP's mask empties some rows
    assert mask <= MASK
    assert sum(r["mask_bytes"] for r in trained) == mask * len({r["client"] for r in trained})
    assert metrics[-1]["cum_up_bytes"] == 4 * 4 * NUMEL + 4 * 4 * KEPT


# ----------------------------------------------------------------------------- FedDST


def test_feddst_readjusts_on_the_authors_schedule_at_a_constant_rate():
    """bibikar/feddst's dst.py counts rounds from 0 (s = round - 1): s readjusts when
    (s - 1) % R == 0 and s < T_end, and swaps the constant --readjustment-ratio (the
    cosine decay only gates). R = 3, T_end = 15 of 30 rounds: s = 1, 4, 7, 10, 13."""
    spec = FederateSpec(rounds=30, readjust_every=3, readjust_alpha=0.05, readjust_end=0.5,
                        compute="dense-masked")
    assert [r for r in range(1, 31) if alpha_at(r, spec)] == [2, 5, 8, 11, 14]
    assert {alpha_at(r, spec) for r in (2, 5, 14)} == {0.05}
    # R = 1 (the preset: 15 of 400 rounds scaled to 30): from s = 0 ((0 - 1) % 1 == 0)
    # to s = 14, every round of the first half
    every = FederateSpec(rounds=30, readjust_every=1, compute="dense-masked")
    assert [r for r in range(1, 31) if alpha_at(r, every)] == list(range(1, 16))
    assert alpha_at(1, every) == 0.01  # the authors' README value is the default
    assert METHODS["feddst"]["federate.readjust_alpha"] == 0.01
    assert METHODS["feddst-0.5"]["federate.readjust_alpha"] == 0.5


def test_a_readjustment_drops_the_smallest_and_regrows_the_largest_gradients():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[0.5, 0.0, -0.1, 0.0], [0.0, 2.0, 0.0, -0.3]]))
    keep = torch.tensor([[True, False, True, False], [False, True, False, True]])
    mask = Mask({"1.weight": keep})
    x, y = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]]), torch.tensor([0])
    # by hand: logits = (0.5 - 0.3, 4 - 1.2) = (0.2, 2.8); dL/dlogits = softmax - onehot
    p = torch.softmax(torch.tensor([0.2, 2.8]), 0)
    grad = torch.outer(p - torch.tensor([1.0, 0.0]), x.flatten())
    new = readjusted_mask(net, mask, ["1.weight"], 0.5, x, y)  # swap 2 of the 4 kept
    assert int(new["1.weight"].sum()) == 4  # the density stays exact
    # dropped: the two kept weights of smallest magnitude, -0.1 and -0.3
    assert not new["1.weight"][0, 2] and not new["1.weight"][1, 3]
    # grown: the two pruned entries of largest |grad| (entries with x = 4 and x = 2 of
    # row 0, and of row 1: |grad| = |p - onehot| * x)
    pruned = (~keep).flatten().nonzero().flatten()
    want = set(pruned[torch.topk(grad.flatten()[pruned].abs(), 2).indices].tolist())
    got = set((new["1.weight"].flatten() & ~keep.flatten()).nonzero().flatten().tolist())
    assert got == want


def test_the_server_merges_masks_by_vote_and_prunes_back_by_magnitude():
    a = {"w": torch.tensor([1.0, 2.0, 0.0, 0.0])}
    b = {"w": torch.tensor([3.0, 0.0, -4.0, 0.0])}
    ma = Mask({"w": torch.tensor([True, True, False, False])})
    mb = Mask({"w": torch.tensor([True, False, True, False])})
    # entry 0: (1 * 1 + 3 * 3) / 4 = 2.5; entry 1: 2 (only a holds it); entry 2: -4
    state, mask = merge([(a, ma, 1), (b, mb, 3)], ["w"], keep=3)
    assert state["w"].tolist() == [2.5, 2.0, -4.0, 0.0] and mask["w"].tolist() == [
        True, True, True, False]
    state, mask = merge([(a, ma, 1), (b, mb, 3)], ["w"], keep=2)  # the union is too dense
    assert mask["w"].tolist() == [True, False, True, False] and state["w"][1] == 0


def test_feddst_bytes_of_its_first_two_rounds_by_hand(tmp_path):
    clients, metrics, report = run_rows(tmp_path, "feddst")
    # ERK on the one prunable tensor keeps round(0.2 * 1024) = 205 of it: 391 values
    assert report["nnz"] == KEPT
    mask = MASK
    one = [r for r in clients if r["round"] == 1]
    two = [r for r in clients if r["round"] == 2]
    # round 1 readjusts (the authors' first round with R_adj = 1; 1% of the 205 kept, 2
    # weights swapped): each client uploads a 4-byte header, its new mask and its 391
    # values; round 2 does not (T_end is half of the 2 rounds) and every client gets the
    # merged mask again, whether it held the old one or not
    # the round-1 download is the random init's seed (8 bytes, federate.init_bytes = seed)
    assert all(r["down_bytes"] == 8 and r["mask_bytes"] == mask for r in one)
    assert all(r["down_bytes"] == 4 * KEPT and r["mask_bytes"] == mask for r in two)
    assert all(r["up_bytes"] == 4 + mask + 4 * KEPT for r in one)
    assert all(r["up_bytes"] == 4 * KEPT for r in two)
    assert metrics[-1]["cum_mask_bytes"] == 4 * mask


def simulator_and_flower(tmp_path, method, overrides=None):
    """The same 3-round run of ``method`` on the simulator and on Flower's messages
    (InProcessFlower): each one's final weights, final mask and byte totals, and the
    server stage's mask."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.format(method=method).replace("rounds = 2", "rounds = 3"))
    [spec] = load_config(cfg).specs(overrides or {})
    splits = load_splits(spec.data, spec.seed)
    stages = pretrain_and_prune(spec, splits, tmp_path)
    state = starting_weights(spec, splits, stages)

    def run(engine_class):
        model = fresh_model(spec, splits, "init")
        trainer = LocalTrainer(model, stages.mask, spec.federate, splits.input_shape)
        codec = Codec.of(stages.mask, spec.federate)
        strategy = TicketStrategy(
            codec, state, spec.federate, 0, len(splits.clients),
            lambda s: trainer.evaluate(s, splits.test),
            client_sizes=[len(c) for c in splits.clients],
            flops_per_example=trainer.flops_per_sample, prunable=stages.prunable,
            flops_fn=lambda m: train_flops_per_sample(layer_costs(model, (1, 8, 8), m)),
            dense_flops_per_example=trainer.dense_flops_per_sample)
        final = strategy.start(engine_class(trainer, codec, splits.clients))
        return final, strategy.codec.mask, strategy.totals

    return run(LocalEngine), run(InProcessFlower), stages.mask


def test_feddst_on_flower_messages_ends_with_the_simulators_model_and_mask(tmp_path):
    sim, flower, start = simulator_and_flower(tmp_path, "feddst",
                                              {"federate.readjust_every": 1})
    assert sim[1] == flower[1] and sim[1] != start  # the mask moved, the same way
    for k in sim[0]:
        torch.testing.assert_close(sim[0][k], flower[0][k], rtol=0, atol=1e-6)
    assert sim[2].up_bytes == flower[2].up_bytes and sim[2].down_bytes == flower[2].down_bytes


@pytest.mark.parametrize("method", ["synflow-ticket", "qsgd-4", "dae-ticket-qsgd", "fedpm",
                                    "topk-ef-2way"])
def test_each_peer_on_flower_messages_ends_with_the_simulators_model_and_bytes(tmp_path,
                                                                           method):
    # the peers the real-SuperLink parity test (test_flower_deploy.py) does not run
    sim, flower, start = simulator_and_flower(tmp_path, method)
    assert sim[1] == flower[1] == start  # these masks stay put
    for k in sim[0]:
        torch.testing.assert_close(sim[0][k], flower[0][k], rtol=0, atol=1e-6)
    assert (sim[2].up_bytes, sim[2].down_bytes) == (flower[2].up_bytes, flower[2].down_bytes)
    assert sim[2].up_bytes > 0 and sim[2].down_bytes > 0
