"""The controls dae-ticket-fast's compute saving needs: a dense network narrowed by one
width factor to about its training FLOPs (fedavg-thin), and its own compact architecture
and mask with fresh weights (random-ticket-fast). Both train physically smaller models."""

import json
from pathlib import Path

import pytest
import torch

from fedticket.data import load_splits
from fedticket.federated import LocalTrainer
from fedticket.flops import layer_costs, train_flops_per_sample
from fedticket.models import build, prunable_names
from fedticket.pruning import Mask
from fedticket.pruning.structured import channel_graph, uniform_prune
from fedticket.spec import METHODS, THIN_FLOPS, ExperimentSpec, ModelSpec, apply_overrides
from fedticket.stages import pretrain_and_prune, starting_weights

ROOT = Path(__file__).resolve().parents[1]


def cnn_fedavg():
    torch.manual_seed(0)
    return build(ModelSpec(name="cnn-fedavg"), (1, 28, 28), 10)


def test_one_width_factor_narrows_every_group_to_the_budget():
    """cnn-fedavg (conv 32 and 64 channels of 5x5, fc 512, the head) narrowed to 10% of
    its forward multiply-adds: every group but the one that feeds the head (the fc
    layer's units, as in the channel step) keeps round(w * units) of its units for one
    w, the largest that fits."""
    m = cnn_fedavg()
    graph = channel_graph(m, (1, 28, 28))
    mask, report = uniform_prune(Mask.full(m), graph, 0.10)
    w = report["width"]
    units = report["units"]
    assert report["kept_units"] == {g: max(1, round(w * n)) for g, n in units.items()}
    assert report["forward_macs_fraction"] <= 0.10
    # one step wider would pass the budget (to the bisection's 1e-4)
    wider, more = uniform_prune(Mask.full(m), graph, 1.0)
    assert more["width"] == 1.0 and wider.density == 1.0
    bump = {g: max(1, round((w + 2e-4) * n)) for g, n in units.items()}
    assert bump == report["kept_units"] or report["forward_macs_fraction"] > 0.09


def test_the_thin_control_trains_about_the_fast_tickets_flops_on_a_smaller_model():
    """fedavg-thin's budget (THIN_FLOPS) gives training FLOPs per sample within 5% of
    what the committed peer grid's dae-ticket-fast spent per round relative to fedavg
    (same clients, same samples: the ratio of the FLOPs of one round), and its clients
    train a compact dense model; the head stays whole."""
    grid = json.loads((ROOT / "docs" / "results" / "peers.json").read_text())["curves"]["iid"]
    fast = grid["dae-ticket-fast"]["client_gflops"][1]
    dense = grid["fedavg"]["client_gflops"][1]
    m = cnn_fedavg()
    spec = apply_overrides(ExperimentSpec(), {**METHODS["fedavg-thin"]})
    mask, _ = uniform_prune(Mask.full(m), channel_graph(m, (1, 28, 28)),
                            spec.prune.flops_fraction)
    thin = train_flops_per_sample(layer_costs(m, (1, 28, 28), mask))
    full = train_flops_per_sample(layer_costs(m, (1, 28, 28), None))
    assert spec.prune.flops_fraction == THIN_FLOPS
    assert thin / full == pytest.approx(fast / dense, rel=0.05)
    trainer = LocalTrainer(m, mask, spec.federate, (1, 28, 28))
    assert trainer.compute.startswith("structured")
    kept = sum(p.numel() for p in trainer.net.parameters())
    # conv 7 and 15 channels, fc 15*7*7 -> 512 (it feeds the head), the head: 23% of the
    # parameters (the fc layer's inputs are most of them)
    assert kept == 7 * 25 + 7 + 15 * 7 * 25 + 15 + 735 * 512 + 512 + 512 * 10 + 10
    assert kept < 0.25 * sum(p.numel() for p in m.parameters())
    assert bool(mask["head.weight"].all())  # the head and its inputs stay whole


def test_the_structured_random_control_is_the_fast_tickets_mask_with_fresh_weights(tmp_path):
    """random-ticket-fast shares dae-ticket-fast's server stages (one DAE, one mask) and
    starts from fresh weights scaled to each unit's kept fan-in; both train the same
    compact model."""
    base = ExperimentSpec()
    small = {"data.dataset": "digits", "data.pool_size": 300, "data.num_clients": 3,
             "model.name": "cnn-digits", "pretrain.epochs": 1}
    specs = {m: apply_overrides(base, {**METHODS[m], **small})
             for m in ("dae-ticket-fast", "random-ticket-fast", "fedavg-thin")}
    splits = load_splits(specs["dae-ticket-fast"].data, 0)
    stages = {m: pretrain_and_prune(s, splits, tmp_path) for m, s in specs.items()}
    fast, rnd = stages["dae-ticket-fast"], stages["random-ticket-fast"]
    assert rnd.log["cached"] and dict(rnd.mask).keys() == dict(fast.mask).keys()
    assert all(torch.equal(rnd.mask[k], fast.mask[k]) for k in fast.mask)
    a = starting_weights(specs["dae-ticket-fast"], splits, fast)
    b = starting_weights(specs["random-ticket-fast"], splits, rnd)
    names = prunable_names(build(ModelSpec(name="cnn-digits"), (1, 8, 8), 10))
    assert all(not torch.equal(a[n], b[n]) for n in names)
    for m in specs:
        model = build(ModelSpec(name="cnn-digits"), (1, 8, 8), 10)
        t = LocalTrainer(model, stages[m].mask, specs[m].federate, (1, 8, 8))
        assert t.compute.startswith("structured"), m
    # the thin control needs no pretraining: its stage ran no DAE
    assert "pretrain" not in stages["fedavg-thin"].log
