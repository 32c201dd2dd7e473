"""Structured (channel) pruning, the compact training path, and the FLOP formulas
against torch's own FLOP counter."""

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fedticket.data import Labeled
from fedticket.federated import LocalTrainer
from fedticket.flops import layer_costs
from fedticket.models import build, prunable_names
from fedticket.pruning import STRATEGIES, Mask, prune_lowest
from fedticket.pruning.compact import Compact
from fedticket.pruning.mask import load_tensors, model_tensors
from fedticket.pruning.structured import (
    channel_graph,
    fraction_to_reach,
    structured_prune,
    unit_alive,
)
from fedticket.spec import FederateSpec, ModelSpec


def digits_cnn(seed=0):
    torch.manual_seed(seed)
    return build(ModelSpec(name="cnn-digits"), (1, 8, 8), 10)  # conv 16, conv 32, fc 64


def fast_mask(m, flops=0.3, sparsity=0.8, shape=(1, 8, 8), floor=0.25):
    graph = channel_graph(m, shape)
    mask, report = structured_prune(dict(m.named_parameters()), Mask.full(m), graph, flops,
                                    floor)
    names = prunable_names(m)
    scores = STRATEGIES["magnitude"](dict(m.named_parameters()), names, torch.Generator())
    mask = prune_lowest(scores, mask, names, fraction_to_reach(mask, names, sparsity), "global")
    return mask, report, graph


def both_paths(m, fresh, mask, spec, n, shape):
    """One client update from ``m``'s masked state on ``n`` random images, with dense
    kernels under the mask and on the compact model: (state, dense update, compact one)."""
    state = {k: v * mask.float(k) for k, v in model_tensors(m).items()}
    g = torch.Generator().manual_seed(1)
    data = Labeled(torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))
    out = {}
    for path in ("dense-masked", "structured"):
        t = LocalTrainer(fresh(), mask, replace(spec, compute=path), shape)
        assert t.compute == path
        out[path] = t.update(state, data, torch.Generator().manual_seed(0))
    return state, out["dense-masked"], out["structured"]


def test_the_graph_knows_how_each_layer_feeds_the_next():
    graph = channel_graph(digits_cnn(), (1, 8, 8))
    got = [(g.name, g.units, g.feeds_head,
            sorted((s.tensor, s.dim, tuple(s.index.shape), s.positions) for s in g.slices))
           for g in graph.groups]
    assert got == [
        ("body.conv1", 16, False, [("body.conv1.bias", 0, (16, 1), 0),
                                   ("body.conv1.weight", 0, (16, 1), 64),
                                   ("body.conv2.weight", 1, (16, 1), 16)]),
        # 32 channels x 2x2 positions -> fc1 reads 4 inputs of each channel
        ("body.conv2", 32, False, [("body.conv2.bias", 0, (32, 1), 0),
                                   ("body.conv2.weight", 0, (32, 1), 16),
                                   ("body.fc1.weight", 1, (32, 4), 1)]),
        ("body.fc1", 64, True, [("body.fc1.bias", 0, (64, 1), 0),
                                ("body.fc1.weight", 0, (64, 1), 1),
                                ("head.weight", 1, (64, 1), 1)]),
    ]
    fc1 = next(s for s in graph.groups[1].slices if s.tensor == "body.fc1.weight")
    assert fc1.index[3].tolist() == [12, 13, 14, 15]  # channel 3's 2x2 map, flattened


def test_structured_prune_removes_whole_units_within_the_budget():
    m = digits_cnn()
    mask, report, graph = fast_mask(m, flops=0.3)
    dense = sum(mask[n].numel() * p for n, p in graph.positions.items())
    # conv1 and conv2 are structured, fc1 (it feeds the head) and the head are not
    assert set(report["kept_units"]) == {"body.conv1", "body.conv2"}
    for g in graph.groups[:2]:
        kept = unit_alive(mask, g)
        assert int(kept.sum()) == report["kept_units"][g.name] >= 0.25 * g.units
        assert not bool(mask[f"{g.name}.bias"][~kept].any())  # removed units lose the bias
    # a removed conv2 channel feeds none of fc1's 4 inputs of that channel
    gone = (~unit_alive(mask, graph.groups[1])).nonzero().flatten()
    assert len(gone) > 0
    fc1 = mask["body.fc1.weight"].view(64, 32, 4)
    assert not bool(fc1[:, gone].any())
    # the budget is met: conv1 ends at its floor of a quarter (4 of 16 units), conv2
    # keeps 29 of 32, and no group goes below its floor
    assert report["forward_macs_fraction"] <= 0.3
    assert report["kept_units"] == {"body.conv1": 4, "body.conv2": 29}
    assert all(report["kept_units"][n] >= max(1, round(0.25 * report["units"][n]))
               for n in report["units"])
    assert graph.macs(mask) / dense < report["forward_macs_fraction"] + 1e-9  # fc1 pruned after
    # and the unstructured step reached the weight sparsity over the prunable tensors
    names = prunable_names(m)
    kept = sum(int(mask[n].sum()) for n in names) / sum(mask[n].numel() for n in names)
    assert kept == pytest.approx(0.2, abs=1e-3)


def test_a_budget_below_the_floor_stops_at_the_floor():
    # 1% of the MACs cannot be reached by removing units: every group ends at its floor
    # (a quarter of its units), and the report shows the MACs it did reach
    m = digits_cnn()
    _, report, _ = fast_mask(m, flops=0.01)
    assert report["kept_units"] == {n: max(1, round(0.25 * u))
                                    for n, u in report["units"].items()}
    assert report["forward_macs_fraction"] > 0.01


def test_the_channel_floor_is_a_setting():
    """At a FLOP budget of 0 every structured group stops at its floor: round(f * units)."""
    m = digits_cnn()
    for floor, kept in ((0.25, {"body.conv1": 4, "body.conv2": 8}),
                        (0.5, {"body.conv1": 8, "body.conv2": 16}),
                        (0.1, {"body.conv1": 2, "body.conv2": 3})):
        _, report, _ = fast_mask(m, flops=0.0, floor=floor)
        assert report["kept_units"] == kept and report["channel_floor"] == floor


def test_compact_round_trip_and_smaller_layers():
    m = digits_cnn()
    mask, report, _ = fast_mask(m)
    compact = Compact(m, mask, (1, 8, 8))
    c1, c2 = report["kept_units"]["body.conv1"], report["kept_units"]["body.conv2"]
    net = compact.net
    assert net.body.conv1.weight.shape == (c1, 1, 3, 3)
    assert net.body.conv2.weight.shape == (c2, c1, 3, 3)
    assert net.body.fc1.weight.shape == (64, 4 * c2)
    state = {k: v * mask.float(k) for k, v in m.state_dict().items()}
    back = compact.expand(compact.compact(state))
    for k in state:
        assert torch.equal(back[k], state[k]), k
    # the same function: the compact net computes what the masked full model computes
    x = torch.rand(5, 1, 8, 8)
    m.load_state_dict(state)
    net.load_state_dict(compact.compact(state))
    torch.testing.assert_close(net(x), m(x), rtol=1e-5, atol=1e-6)


def test_structured_path_trains_the_same_model_as_dense_masked_kernels():
    m = digits_cnn()
    mask, _, _ = fast_mask(m)
    spec = FederateSpec(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.01)
    state, a, b = both_paths(m, digits_cnn, mask, spec, 40, (1, 8, 8))
    assert a.flops == b.flops and a.steps == b.steps == 10
    for k in a.state:
        torch.testing.assert_close(a.state[k], b.state[k], rtol=1e-4, atol=1e-5)
        assert bool((b.state[k][~mask[k]] == 0).all()), k
    # auto picks structured here, and dense-masked for an unstructured mask
    assert LocalTrainer(digits_cnn(), mask, spec, (1, 8, 8)).compute == "structured"
    names = prunable_names(m)
    plain = prune_lowest(STRATEGIES["magnitude"](dict(m.named_parameters()), names,
                                                 torch.Generator()), Mask.full(m), names, 0.8,
                         "global")
    assert LocalTrainer(digits_cnn(), plain, spec, (1, 8, 8)).compute == "dense-masked"


@pytest.mark.parametrize("name, shape", [("cnn-fedavg", (1, 28, 28)), ("mlp", (1, 28, 28)),
                                         ("resnet8", (1, 28, 28)),
                                         ("cnn-digits", (1, 8, 8))])
def test_dense_flops_match_torchs_flop_counter(name, shape):
    """torch counts 2 FLOPs per multiply-add of convolutions and matmuls, forward and
    backward; ours adds one FLOP per bias add (forward) and per bias-gradient sum."""
    torch.manual_seed(0)
    m = build(ModelSpec(name=name), shape, 10)
    x = torch.rand(3, *shape)
    with FlopCounterMode(display=False) as counter:
        m(x).sum().backward()
    costs = layer_costs(m, shape)
    bias = sum(2 * (c.forward_flops - 2 * c.forward_macs) for c in costs)  # fwd add + bwd sum
    ours = sum(c.train_flops for c in costs) - bias
    assert counter.get_total_flops() == 3 * ours


def test_sparse_kernels_train_the_same_model_as_dense_masked_ones():
    """A masked MLP (fc1 784->300 at 5% density, over the 65,536-weight floor of auto)."""
    torch.manual_seed(0)
    m = build(ModelSpec(name="mlp"), (1, 28, 28), 10)
    names = prunable_names(m)
    scores = STRATEGIES["magnitude"](dict(m.named_parameters()), names, torch.Generator())
    mask = prune_lowest(scores, Mask.full(m), names, 0.95, "layer")
    state = {k: v * mask.float(k) for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    data = Labeled(torch.rand(30, 1, 28, 28, generator=g),
                   torch.randint(0, 10, (30,), generator=g))
    spec = FederateSpec(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.01)
    out = {}
    for path in ("dense-masked", "sparse", "auto"):
        torch.manual_seed(1)
        t = LocalTrainer(build(ModelSpec(name="mlp"), (1, 28, 28), 10), mask,
                         replace(spec, compute=path), (1, 28, 28))
        out[path] = (t, t.update(state, data, torch.Generator().manual_seed(0)))
    assert out["dense-masked"][0].compute == "dense-masked"
    assert out["sparse"][0].compute == "sparse"
    assert set(out["sparse"][0].sparse) == {"body.fc1", "body.fc2"}  # every masked linear
    assert set(out["auto"][0].sparse) == {"body.fc1"}  # fc2 (300x100) is under the floor
    a = out["dense-masked"][1].state
    for path in ("sparse", "auto"):
        b = out[path][1].state
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
            assert bool((b[k][~mask[k]] == 0).all()), k
    # the trainer's own model is left as it was built: the sparse layers live in a copy
    assert isinstance(out["sparse"][0].model.body.fc1, torch.nn.Linear)


def resnet(seed=0):
    torch.manual_seed(seed)
    m = build(ModelSpec(name="resnet8"), (1, 28, 28), 10)
    with torch.no_grad():  # running statistics and BatchNorm affine values that are not 0 / 1
        m.train()
        m(torch.rand(32, 1, 28, 28))
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m


def test_residual_channels_are_one_group():
    """The stem, stage 1's second conv (both write the residual stream that stage 1 adds
    to) and their BatchNorms go together; so do stage 2's conv2 and its shortcut."""
    graph = channel_graph(resnet(), (1, 28, 28))
    by_name = {g.name: g for g in graph.groups}
    stem = {(s.tensor, s.dim) for s in by_name["body.stem"].slices}
    assert {("body.stem.weight", 0), ("body.bn.weight", 0), ("body.bn.running_var", 0),
            ("body.stages.0.conv2.weight", 0), ("body.stages.0.bn2.running_mean", 0),
            ("body.stages.0.conv1.weight", 1), ("body.stages.1.conv1.weight", 1),
            ("body.stages.1.shortcut.0.weight", 1)} <= stem
    stage2 = {(s.tensor, s.dim) for s in by_name["body.stages.1.conv2"].slices}
    assert {("body.stages.1.shortcut.0.weight", 0), ("body.stages.1.conv2.weight", 0),
            ("body.stages.1.bn2.bias", 0), ("body.stages.2.conv1.weight", 1)} <= stage2
    # the last stage's stream feeds the head: left to unstructured pruning
    assert [g.name for g in graph.groups if g.feeds_head] == ["body.stages.2.conv2"]


@pytest.mark.parametrize("flops", [0.1, 0.4])
def test_compact_resnet_computes_what_the_masked_model_computes(flops):
    m = resnet()
    mask, report, graph = fast_mask(m, flops=flops, shape=(1, 28, 28))
    compact = Compact(m, mask, (1, 28, 28))
    assert compact.removed == sum(report["units"][n] - report["kept_units"][n]
                                  for n in report["units"])
    kept_stem = report["kept_units"]["body.stem"]
    net = compact.net
    assert net.body.stem.weight.shape == (kept_stem, 1, 3, 3)
    assert net.body.bn.running_mean.shape == (kept_stem,)
    assert net.body.stages[0].conv2.weight.shape[0] == kept_stem  # the residual stream
    state = {k: v * mask.float(k) for k, v in model_tensors(m).items()}
    load_tensors(m, state)
    load_tensors(net, compact.compact(state))
    x = torch.rand(6, 1, 28, 28)
    for train in (False, True):
        m.train(train)
        net.train(train)
        torch.testing.assert_close(net(x), m(x), rtol=1e-5, atol=1e-5)
    back = compact.expand(compact.compact(state))
    for k in state:
        assert torch.equal(back[k], state[k]), k


def test_structured_resnet_trains_the_same_model_as_dense_masked_kernels():
    m = resnet()
    mask, _, _ = fast_mask(m, flops=0.2, shape=(1, 28, 28))
    spec = FederateSpec(local_epochs=1, batch_size=8, lr=0.05, momentum=0.9)
    state, a, b = both_paths(m, resnet, mask, spec, 24, (1, 28, 28))
    assert set(a.state) == set(b.state) == set(state)  # running statistics travel
    for k in a.state:
        torch.testing.assert_close(a.state[k], b.state[k], rtol=1e-4, atol=1e-5)
        assert bool((b.state[k][~mask[k]] == 0).all()), k
        assert bool((a.state[k][~mask[k]] == 0).all()), k
    # the running statistics moved during training
    assert not torch.equal(b.state["body.bn.running_mean"], state["body.bn.running_mean"])
