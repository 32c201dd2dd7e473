"""Bytes at their limit: the entropy-coded mask, values in 8 and 4 bits, uploads of the
quantized change with error feedback."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedticket.accounting import Codec, maskcode
from fedticket.accounting.wire import (
    VALUE_BLOCK,
    UpdateCode,
    value_blocks,
    values_bytes,
    values_decode,
    values_encode,
)
from fedticket.cli import main
from fedticket.errors import ConfigError, FedticketError
from fedticket.pruning import Mask
from fedticket.report.study_render import bits_cells, pareto, q3_line
from fedticket.spec import FederateSpec
from fedticket.study import load_study, q3_rows
from test_peers import KEPT, MASK, NUMEL, TINY, simulator_and_flower

# ------------------------------------------------------------------- the mask code


def test_binary_entropy_by_hand():
    assert maskcode.binary_entropy(0.5) == 1.0
    assert maskcode.binary_entropy(0.05) == pytest.approx(0.2864, abs=1e-4)
    assert maskcode.binary_entropy(0.10) == pytest.approx(0.4690, abs=1e-4)
    assert maskcode.binary_entropy(0.20) == pytest.approx(0.7219, abs=1e-4)
    assert maskcode.binary_entropy(0.0) == maskcode.binary_entropy(1.0) == 0.0


def header_bytes(msg: bytes, shapes) -> int:
    """The tag and the varints: everything before the ANS words."""
    pos = 1
    for _ in shapes:
        h, pos = maskcode._read_varint(msg, pos)
        if h & 1:
            _, pos = maskcode._read_varint(msg, pos)
    return pos


FEDAVG_CNN = [(32, 1, 5, 5), (32,), (64, 32, 5, 5), (64,), (512, 3136), (512,), (10, 512),
              (10,)]


@pytest.mark.parametrize("density", [0.001, 0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 0.95,
                                     0.999])
def test_a_random_mask_of_the_fedavg_cnn_codes_within_3_percent_of_its_entropy(density):
    rng = np.random.default_rng(int(density * 1000))
    tensors = [rng.random(s) < density for s in FEDAVG_CNN]
    msg = maskcode.encode(tensors)
    flat = np.concatenate([t.reshape(-1) for t in tensors])
    bound = maskcode.entropy_bits(flat)  # n * H(d), n = 1,663,370
    head = header_bytes(msg, FEDAVG_CNN)
    assert head <= 1 + 3 * len(FEDAVG_CNN)  # the tag and at most 3 bytes a tensor
    # ANS words: within 3% of the bound, plus the coder's final state (<= 2 words)
    assert 8 * (len(msg) - head) <= 1.03 * bound + 64
    assert all(np.array_equal(a, b) for a, b in
               zip(tensors, maskcode.decode(msg, FEDAVG_CNN), strict=True))


def test_a_fast_ticket_codes_its_channels_then_the_weights_inside_them():
    # as dae-ticket-fast prunes: 16 of conv2's 64 output channels and 8 of its 32 inputs
    # kept, then 40% of the weights inside them by magnitude (here at random)
    rng = np.random.default_rng(3)
    rows, cols = np.arange(64) % 4 == 0, np.arange(32) % 4 == 0
    m = np.zeros((64, 32, 5, 5), bool)
    m[np.ix_(rows, cols)] = rng.random((16, 8, 5, 5)) < 0.4
    k, inside = int(m.sum()), 16 * 8 * 25
    msg = maskcode.encode([m])
    bound = 64 + 32 + inside * maskcode.binary_entropy(k / inside)  # row and column bits
    assert 8 * (len(msg) - header_bytes(msg, [m.shape])) <= 1.03 * bound + 64
    assert 8 * len(msg) < 0.4 * maskcode.entropy_bits(m.reshape(-1))  # n * H(d): 8,809 bits
    assert np.array_equal(maskcode.decode(msg, [m.shape])[0], m)


def test_whole_channels_removed_cost_their_rows_and_columns_only():
    # conv2 keeps 16 of its 64 output channels and 8 of its 32 inputs; fc1 keeps the
    # 16 * 7 * 7 = 784 input features of those channels and 128 of its 512 rows
    conv = np.zeros((64, 32, 5, 5), bool)
    rows, cols = np.arange(64) % 4 == 0, np.arange(32) % 4 == 0
    conv[np.ix_(rows, cols)] = True
    fc = np.zeros((512, 3136), bool)
    fc[np.ix_(np.arange(512) % 4 == 0, np.repeat(rows, 49))] = True
    tensors = [conv, np.ones(64, bool), fc]
    msg = maskcode.encode(tensors)
    flat = np.concatenate([t.reshape(-1) for t in tensors])
    # the coded bits are 64 + 32 + 512 + 3136 row and column bits: at most one bit each,
    # far below n * H(d) of the 1,657,920 entries
    assert 8 * len(msg) <= 1 + 3 * 3 + (64 + 32 + 512 + 3136) / 8 * 8 + 64
    assert 8 * len(msg) < 0.01 * maskcode.entropy_bits(flat)
    back = maskcode.decode(msg, [t.shape for t in tensors])
    assert all(np.array_equal(a, b) for a, b in zip(tensors, back, strict=True))


masks = st.lists(
    st.tuples(
        st.lists(st.integers(0, 6), min_size=1, max_size=4),   # a shape (0 allowed)
        st.sampled_from(["empty", "full", "random", "rows", "cols", "channels"]),
        st.floats(0.0, 1.0),
        st.integers(0, 2**31),
    ),
    min_size=1, max_size=5,
)


def build(spec):
    out = []
    for shape, kind, d, seed in spec:
        rng = np.random.default_rng(seed)
        if kind in ("empty", "full"):
            out.append(np.full(shape, kind == "full"))
        elif kind == "random" or len(shape) < 2:
            out.append(rng.random(shape) < d)
        else:
            keep = rng.random(shape[0] if kind == "rows" else shape[1]) < d
            m = np.zeros(shape, bool)
            if kind == "rows":
                m[keep] = True
            else:
                m[:, keep] = True
            if kind == "channels":  # rows and columns removed, then entries inside
                m[rng.random(shape[0]) < 0.5] = False
                m &= rng.random(shape) < d
            out.append(m)
    return out


@settings(max_examples=200, deadline=None)
@given(masks)
def test_the_mask_code_round_trips_bit_for_bit(spec):
    tensors = build(spec)
    shapes = [t.shape for t in tensors]
    back = maskcode.decode(maskcode.encode(tensors), shapes)
    assert all(a.dtype == bool and a.shape == b.shape and np.array_equal(a, b)
               for a, b in zip(back, tensors, strict=True))


@settings(max_examples=100, deadline=None)
@given(masks)
def test_the_codec_sends_the_cheapest_mask_message_and_reads_it_back(spec):
    tensors = [t for t in build(spec) if t.size]
    if not tensors:
        return
    mask = Mask({f"t{i}": torch.from_numpy(t) for i, t in enumerate(tensors)})
    codec = Codec(mask)
    msg = codec.encode_mask()
    if mask.is_full:
        assert msg == b""
        return
    n, k = codec.numel, codec.nnz
    assert len(msg) == min(1 + (n + 7) // 8, 1 + 4 * k, len(maskcode.encode(tensors)))
    assert codec.decode_mask(msg) == mask


def test_a_broken_mask_message_is_refused_in_one_line():
    rng = np.random.default_rng(0)
    t = [rng.random((40, 40)) < 0.1]
    msg = maskcode.encode(t)
    with pytest.raises(FedticketError, match="truncated header"):
        maskcode.decode(msg[:1], [(40, 40)])
    head = header_bytes(msg, [(40, 40)])
    for extra in (msg[:head] + b"\x01\0\0\0" + msg[head:], msg + b"\x01\0\0\0"):
        with pytest.raises(FedticketError, match="left over|another count|not valid"):
            maskcode.decode(extra, [(40, 40)])
    with pytest.raises(FedticketError, match="whole number of words"):
        maskcode.decode(msg[:-1], [(40, 40)])
    with pytest.raises(FedticketError, match="more entries"):
        maskcode.decode(bytes([maskcode.ENTROPY]) + maskcode._varint(2 * 1601), [(40, 40)])
    other = bytearray(msg)
    other[1:3] = maskcode._varint(2 * (int(t[0].sum()) + 1))  # claims one more kept entry
    with pytest.raises(FedticketError):
        maskcode.decode(bytes(other), [(40, 40)])


# ------------------------------------------------------------------------ values


def blocks_of(*sizes):
    return value_blocks(np.cumsum([0, *sizes]))


def test_blocks_hold_256_values_and_never_span_two_tensors():
    b = blocks_of(600, 3, 0, 256)
    assert b.tolist() == [0, 256, 512, 600, 603, 859]
    assert values_bytes("q8", b) == 8 * 5 + 859 and values_bytes("q4", b) == 8 * 5 + 430
    assert values_bytes("f16", b) == 2 * 859 and VALUE_BLOCK == 256


@pytest.mark.parametrize("code, levels", [("q8", 255), ("q4", 15)])
def test_nearest_rounding_is_within_half_a_step_of_each_block(code, levels):
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(0, 0.05, 700), rng.normal(3, 1, 90)]).astype(np.float32)
    b = blocks_of(700, 90)
    back = values_decode(values_encode(v, code, b), code, b)
    for a, z in zip(b[:-1], b[1:], strict=True):
        step = (v[a:z].max() - v[a:z].min()) / levels
        assert np.abs(back[a:z] - v[a:z]).max() <= step / 2 * (1 + 1e-5) + 1e-7
        assert back[a:z].min() == pytest.approx(v[a:z].min(), abs=1e-6)  # the ends are exact


def test_stochastic_rounding_is_unbiased_and_within_one_step():
    # a block from 0 to 15 (q4: step 1) and values at 0.25 of a step: up 1 time in 4
    v = np.array([0.0, 15.0] + [7.25] * 254, np.float32)
    b = blocks_of(256)
    draws = np.stack([values_decode(values_encode(v, "q4", b, np.random.default_rng(s)),
                                    "q4", b) for s in range(400)])
    assert set(np.unique(draws[:, 2:])) == {7.0, 8.0}
    assert draws[:, 2:].mean() == pytest.approx(7.25, abs=0.01)  # 0.25 * 8 + 0.75 * 7
    assert (draws[:, :2] == [0.0, 15.0]).all()


def test_a_constant_block_costs_its_scale_and_comes_back_exactly():
    v = np.full(300, -0.125, np.float32)
    b = blocks_of(300)
    for code in ("q8", "q4"):
        assert (values_decode(values_encode(v, code, b), code, b) == v).all()


def test_a_block_scale_that_is_not_finite_is_refused():
    b = blocks_of(4)
    bad = np.array([np.nan, 1.0], "<f4").tobytes() + bytes(4)
    with pytest.raises(FedticketError, match="block scale"):
        values_decode(bad, "q8", b)


# --------------------------------------------------------------- change uploads


def test_error_feedback_keeps_what_the_upload_did_not_carry():
    b = blocks_of(500, 12)
    code = UpdateCode("change", 512, values="q4", error_feedback=True, blocks=b)
    rng = np.random.default_rng(0)
    changes = [rng.normal(0, 0.01, 512).astype(np.float32) for _ in range(3)]
    residual, sent_total = None, np.zeros(512, np.float32)
    for c in changes:
        payload, new = code.encode(c, residual, rng)
        assert len(payload) == code.payload_bytes() == 8 * 3 + 256
        sent = code.decode(payload)
        # what was meant (the change plus the residual) = what was sent + the new residual
        meant = c if residual is None else c + residual
        np.testing.assert_allclose(sent + new, meant, atol=1e-7)
        step = max((meant[a:z].max() - meant[a:z].min()) / 15 for a, z in
                   zip(b[:-1], b[1:], strict=True))
        assert np.abs(new).max() <= step / 2 * (1 + 1e-5)  # nearest rounding
        residual, sent_total = new, sent_total + sent
    # over the rounds nothing is lost but the last residual
    np.testing.assert_allclose(sent_total + residual, sum(changes), atol=1e-6)


def test_without_error_feedback_the_change_is_rounded_stochastically_and_nothing_kept():
    b = blocks_of(256)
    code = UpdateCode("change", 256, values="q8", blocks=b)
    c = np.linspace(-1, 1, 256).astype(np.float32)
    c[5] = -1 + 2 / 255 * 0.5  # halfway between two levels
    ups = [code.decode(code.encode(c, None, np.random.default_rng(s))[0]) for s in range(200)]
    assert code.encode(c, None, np.random.default_rng(0))[1] is None
    assert {round(float(u[5]) * 255 / 2 + 127.5) for u in ups} == {0, 1}


def test_error_feedback_on_a_change_in_f32_is_refused():
    with pytest.raises(ConfigError, match="values that lose something"):
        FederateSpec(upload="change", error_feedback=True)
    with pytest.raises(ConfigError, match="stateless"):
        FederateSpec(upload="change", values="q8", error_feedback=True, mask_once=False)


def run(tmp_path, method, federate):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.format(method=method).replace("rounds = 2", "rounds = 2\n" + federate))
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet",
                 "--threads", "1"]) == 0
    [folder] = [p for p in (tmp_path / "out").iterdir() if p.name.startswith(method)]
    clients = [json.loads(x) for x in (folder / "clients.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return clients, metrics


@pytest.mark.parametrize("values, up_ef", [("q4", True), ("q8", False)])
def test_a_ticket_in_4_and_8_bits_books_its_bytes_by_hand(tmp_path, values, up_ef):
    federate = f'values = "{values}"\nupload = "change"\nerror_feedback = {str(up_ef).lower()}'
    clients, metrics = run(tmp_path, "dae-ticket", federate)
    # the ticket's 391 values sit in 4 tensors of 205, 16, 160 and 10 kept values:
    # 4 blocks of 256 or fewer, each a float32 minimum and step
    nbytes = 8 * 4 + (KEPT if values == "q8" else math.ceil(KEPT / 2))
    assert all(r["down_bytes"] == r["up_bytes"] == nbytes for r in clients)
    first = {r["client"] for r in clients if r["round"] == 1}
    again = sum(1 for r in clients if r["round"] == 2 and r["client"] in first)
    assert sum(r["mask_bytes"] for r in clients) == MASK * (len(clients) - again)
    assert metrics[-1]["cum_up_bytes"] == 4 * nbytes
    assert metrics[-1]["cum_down_bytes"] == 4 * nbytes + MASK * (len(clients) - again)
    assert metrics[-1]["test_accuracy"] > 0.1  # it learns (10 classes: 0.1 is chance)
    assert nbytes < 4 * KEPT < 4 * NUMEL


# ------------------------------------------------------------------ the bits study


def stat(values):
    seeds = {str(i): v for i, v in enumerate(values)}
    got = [v for v in values if v is not None]
    return {"mean": sum(got) / len(got) if got else None, "n": len(got), "seeds": seeds,
            "std": 0.0}


def fields(acc, traffic, cpu, run=None, mask=None):
    return {"final_accuracy": stat(acc), "traffic_bytes_to_target": stat(traffic),
            "client_cpu_s_to_target": stat(cpu),
            "traffic_bytes_run": stat(run or traffic), "mask_bytes_run": stat(mask or [0] * 3)}


BITS_STUDY = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "bits.toml"
FEDAVG = fields([0.85, 0.86, 0.84], [1000.0, 1100.0, 900.0], [100.0, 110.0, 90.0])


def test_q3_asks_100x_less_traffic_10x_less_cpu_and_half_a_point_of_accuracy():
    # 200x less traffic and 20x less CPU on every seed, 0.3 points below fedavg: yes
    good = fields([0.847, 0.857, 0.837], [5.0, 5.5, 4.5], [5.0, 5.5, 4.5])
    # 50x less traffic: the traffic bar binds; 1 point below: so does accuracy
    short = fields([0.84, 0.85, 0.83], [20.0, 22.0, 18.0], [5.0, 5.5, 4.5])
    # one seed never reaches 0.80: rounds bind, the answer is no
    late = fields([0.80, 0.79, 0.80], [5.0, None, 4.5], [5.0, None, 4.5])
    results = {"95% q4-ef": {"0.80": {"methods": {"fedavg": FEDAVG, "dae-ticket-fast": good,
                                                  "dae-ticket": late}}},
               # a run in other values is labelled with them: still dae-ticket-fast's row
               "90% q8": {"0.80": {"methods": {"fedavg": FEDAVG,
                                               "dae-ticket-fast+q8": short}}}}
    for by_target in results.values():
        by_target["0.80"]["baseline"] = "fedavg"
    questions = load_study(BITS_STUDY).questions
    rows = {(r["variant"], r["method"]): r for r in q3_rows(results, questions)}
    yes = rows[("95% q4-ef", "dae-ticket-fast")]
    assert yes["answer"] == "yes" and yes["binds"] == []
    assert yes["traffic_x"] == pytest.approx(200.0) and yes["cpu_x"] == pytest.approx(20.0)
    assert yes["accuracy"]["mean"] == pytest.approx(-0.003)
    assert rows[("90% q8", "dae-ticket-fast")]["binds"] == ["accuracy", "traffic"]
    assert rows[("95% q4-ef", "dae-ticket")]["answer"] == "no"
    assert rows[("95% q4-ef", "dae-ticket")]["binds"] == ["rounds"]
    line = q3_line("iid", results, questions)
    assert line.startswith("- Q3 (iid): **yes** (95% q4-ef `dae-ticket-fast`: 200.0x")
    assert "Of 3 settings, 2 reach 0.80 on every seed; 1 clear the traffic bar" in line


def test_the_pareto_front_keeps_what_nothing_beats_on_both_bytes_and_accuracy():
    # (bytes, accuracy): the second is beaten by the first (fewer bytes, higher accuracy),
    # the fourth ties the third's accuracy with more bytes
    pts = [(10.0, 0.84), (20.0, 0.83), (30.0, 0.86), (40.0, 0.86), (5.0, 0.70)]
    assert pareto(pts) == [True, False, True, False, True]


def test_the_mask_share_is_the_masks_part_of_the_whole_runs_traffic():
    ticket = fields([0.84] * 3, [5.0] * 3, [5.0] * 3, run=[200.0] * 3, mask=[50.0] * 3)
    summary = {"partitions": ["iid"], "results": {"iid": {
        "95% q4": {"0.80": {"methods": {"fedavg": FEDAVG, "dae-ticket-fast": ticket}}}}}}
    cells = {c["method"]: c for c in bits_cells(summary, "iid")}
    assert cells["dae-ticket-fast"]["mask_share"] == 0.25
    assert cells["fedavg"]["variant"] == "base" and cells["fedavg"]["mask_share"] == 0.0
    assert cells["dae-ticket-fast"]["front"] and cells["fedavg"]["front"]  # cheaper / better


def test_a_ticket_in_4_bits_with_error_feedback_on_flower_messages_ends_as_simulated(tmp_path):
    # the residual lives in each node's context.state on Flower, in the engine's memory
    # in the simulator: the same three rounds end with the same model and bytes
    sim, flower, start = simulator_and_flower(
        tmp_path, "dae-ticket-fast", {"federate.values": "q4", "federate.upload": "change",
                                      "federate.error_feedback": True})
    assert sim[1] == flower[1] == start
    for k in sim[0]:
        torch.testing.assert_close(sim[0][k], flower[0][k], rtol=0, atol=1e-6)
    assert (sim[2].up_bytes, sim[2].down_bytes) == (flower[2].up_bytes, flower[2].down_bytes)
    assert sim[2].up_bytes > 0


def test_the_bits_sweep_is_the_grid_the_question_needs():
    from fedticket.study import BASE, variant_cells

    study = load_study(BITS_STUDY)
    grid = variant_cells(study)
    assert list(grid) == ["iid", "dirichlet-0.3"] and study.targets == (0.70, 0.80)
    for by_variant in grid.values():
        assert [s.method for s in by_variant[BASE]] == ["fedavg"] * 3
        assert {s.federate.values for s in by_variant[BASE]} == {"f32"}
        cells = {(s.prune.sparsity, s.federate.values, s.federate.upload,
                  s.federate.error_feedback, s.method, s.seed)
                 for v, specs in by_variant.items() if v != BASE for s in specs}
        # 3 sparsities x (f32, f16 models; q8, q4 changes with and without error
        # feedback) x 2 tickets x 3 seeds
        assert len(cells) == 3 * 6 * 2 * 3
        assert {c[:4] for c in cells} == {
            (sp, v, up, ef) for sp in (0.8, 0.9, 0.95)
            for v, up, ef in [("f32", "model", False), ("f16", "model", False),
                              ("q8", "change", False), ("q8", "change", True),
                              ("q4", "change", False), ("q4", "change", True)]}
        assert {c[4] for c in cells} == {"dae-ticket", "dae-ticket-fast"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([[(40, 40)], [(3, 4, 2, 2), (7,)], [(0, 5)]]))
def test_any_entropy_mask_message_decodes_to_those_shapes_or_is_refused(junk, shapes):
    try:
        back = maskcode.decode(bytes([maskcode.ENTROPY]) + junk, shapes)
    except FedticketError:
        return
    assert [b.shape for b in back] == [tuple(s) for s in shapes]
    assert all(b.dtype == bool for b in back)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120), st.sampled_from(["q8", "q4"]))
def test_any_quantized_payload_decodes_to_finite_values_or_is_refused(junk, code):
    b = blocks_of(70, 3)
    try:
        back = values_decode(junk, code, b)
    except FedticketError:
        return
    assert back.shape == (73,) and back.dtype == np.float32


# ------------------------------------------------------------ delta downloads

DELTA = {"federate.values": "q4", "federate.upload": "change",
         "federate.error_feedback": True, "federate.download": "change"}


def test_a_delta_download_on_flower_messages_ends_as_simulated(tmp_path):
    sim, flower, start = simulator_and_flower(tmp_path, "dae-ticket-fast", DELTA)
    for k in sim[0]:
        torch.testing.assert_close(sim[0][k], flower[0][k], rtol=0, atol=1e-6)
    assert (sim[2].up_bytes, sim[2].down_bytes) == (flower[2].up_bytes, flower[2].down_bytes)


def test_a_delta_download_costs_the_models_bytes_and_errs_less(tmp_path):
    from fedticket.data import load_splits
    from fedticket.federated import LocalEngine, TicketStrategy
    from fedticket.federated.client import LocalTrainer
    from fedticket.runner import fresh_model, pretrain_and_prune, starting_weights
    from fedticket.spec import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.format(method="dae-ticket").replace("rounds = 2", "rounds = 4"))
    seen: dict[str, list] = {}
    for how in ("model", "change"):
        [spec] = load_config(cfg).specs(DELTA | {"federate.download": how})
        splits = load_splits(spec.data, spec.seed)
        stages = pretrain_and_prune(spec, splits, tmp_path)
        model = fresh_model(spec, splits, "init")
        trainer = LocalTrainer(model, stages.mask, spec.federate, splits.input_shape)
        codec = Codec.of(stages.mask, spec.federate)
        strategy = TicketStrategy(codec, starting_weights(spec, splits, stages),
                                  spec.federate, 0, len(splits.clients),
                                  lambda s, t=trainer, d=splits.test: t.evaluate(s, d))
        engine = LocalEngine(trainer, codec, splits.clients)
        errors, sizes, deltas = [], [], 0
        for r in range(1, 5):
            ins = strategy.configure_round(r)
            sizes += [len(i.payload) for i in ins]
            deltas += sum(i.delta for i in ins)
            replies, failures = engine.train_round(ins)
            for i in ins:  # what the client trained from, against the server's model
                held = engine.memory.get(f"model-{i.client}", codec.decode_values(i.payload))
                if how == "model" or i.delta:
                    errors.append(float(np.abs(held - strategy._global_kept).max()))
            strategy.aggregate_round(r, ins, replies, failures)
        seen[how] = [sizes, deltas, errors]
        if how == "change":
            # every client holds exactly what the server thinks it holds
            for key, value in strategy.holds.items():
                assert np.array_equal(engine.memory[f"model-{key.split('-')[1]}"], value)
    # the same bytes: a change in q4 is as long as the model in q4 (8 * 4 + 196)
    assert seen["model"][0] == seen["change"][0] and set(seen["change"][0]) == {8 * 4 + 196}
    assert seen["model"][1] == 0 and seen["change"][1] > 0  # clients sampled again
    # after a delta a client's model errs by half a step of the change's range, not of
    # the weights'
    assert max(seen["change"][2]) < 0.2 * max(seen["model"][2])


def test_a_delta_download_needs_state_and_values_that_round():
    with pytest.raises(ConfigError, match="stateless"):
        FederateSpec(values="q4", download="change", mask_once=False)
    with pytest.raises(ConfigError, match="values that round"):
        FederateSpec(download="change")


def test_cpu_per_gflop_gives_the_machines_speed_between_two_sets_of_the_same_runs(tmp_path):
    import subprocess
    import sys

    script = BITS_STUDY.parents[2] / "scripts" / "cpu_per_gflop.py"

    def run(folder, name, cpu, gflop):
        path = tmp_path / folder / name
        path.mkdir(parents=True)
        rows = [{"round": 0, "cum_client_cpu_s": 0.0, "cum_client_flops": 0},
                {"round": 30, "cum_client_cpu_s": cpu, "cum_client_flops": gflop * 1e9}]
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (path / "summary.json").write_text("{}")

    # 2.0 s over 100 GFLOP (20 ms/GFLOP) then 3.0 s: 1.5x; 1.0 s over 10 then 2.0: 2x
    run("a", "x_s0_1", 2.0, 100)
    run("b", "x_s0_1", 3.0, 100)
    run("a", "y_s0_2", 1.0, 10)
    run("b", "y_s0_2", 2.0, 10)
    run("a", "only-in-a_s0_3", 1.0, 10)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "a"), str(tmp_path / "b")],
                         capture_output=True, text=True, check=True).stdout
    assert "x_s0_1: 20.0 -> 30.0 ms/GFLOP, 1.50x" in out
    assert "y_s0_2: 100.0 -> 200.0 ms/GFLOP, 2.00x" in out
    assert out.splitlines()[-1] == ("2 runs in both: second over first, median 1.75x "
                                    "(from 1.50x to 2.00x)")
    run("b", "only-in-a_s0_3", 1.0, 20)  # other work: refused, one line, exit 1
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "a"), str(tmp_path / "b")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "only-in-a_s0_3 did other work" in bad.stderr
