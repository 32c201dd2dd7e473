import pytest
import torch
import torch.nn.utils.prune as tprune

from fedticket.errors import FedticketError
from fedticket.models import build, prunable_names
from fedticket.pruning import STRATEGIES, Mask, level_fraction, prune_lowest
from fedticket.spec import ModelSpec


def model(seed=0):
    torch.manual_seed(seed)
    return build(ModelSpec(name="cnn-digits"), (1, 8, 8), 10)


def magnitude(m, mask, fraction, scope):
    names = prunable_names(m)
    scores = STRATEGIES["magnitude"](dict(m.named_parameters()), names, torch.Generator())
    return prune_lowest(scores, mask, names, fraction, scope)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8, 0.95])
def test_global_magnitude_equals_torch_global_unstructured(fraction):
    m = model()
    ours = magnitude(m, Mask.full(m), fraction, "global")
    ref = model()
    params = [(dict(ref.named_modules())[n.rsplit(".", 1)[0]], "weight") for n in prunable_names(m)]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=fraction)
    for n in prunable_names(m):
        module = dict(ref.named_modules())[n.rsplit(".", 1)[0]]
        assert torch.equal(ours[n], module.weight_mask.bool()), n


def test_iterative_global_equals_torch_applied_twice():
    m = model(1)
    ours = magnitude(m, magnitude(m, Mask.full(m), 0.5, "global"), 0.5, "global")
    ref = model(1)
    params = [(dict(ref.named_modules())[n.rsplit(".", 1)[0]], "weight") for n in prunable_names(m)]
    for _ in range(2):
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=0.5)
    for n in prunable_names(m):
        module = dict(ref.named_modules())[n.rsplit(".", 1)[0]]
        assert torch.equal(ours[n], module.weight_mask.bool()), n


def test_layer_scope_equals_torch_l1_unstructured_per_tensor():
    m = model(2)
    ours = magnitude(m, Mask.full(m), 0.7, "layer")
    ref = model(2)
    for n in prunable_names(m):
        module = dict(ref.named_modules())[n.rsplit(".", 1)[0]]
        tprune.l1_unstructured(module, "weight", amount=0.7)
        assert torch.equal(ours[n], module.weight_mask.bool()), n
        assert ours[n].sum() == module.weight.numel() - round(0.7 * module.weight.numel())


def test_non_prunable_tensors_stay_full_and_counts_are_exact():
    m = model()
    mask = magnitude(m, Mask.full(m), 0.8, "global")
    names = prunable_names(m)
    total = sum(mask[n].numel() for n in names)  # 144 + 4608 + 8192 = 12,944 weights
    assert total == 12944
    assert sum(int(mask[n].sum()) for n in names) == total - round(0.8 * total)  # 2,589 kept
    for n in mask:
        if n not in names:
            assert bool(mask[n].all()), n


def test_level_fraction_reaches_target_density():
    p = level_fraction(0.8, 3)
    assert (1 - p) ** 3 == pytest.approx(0.2)
    m = model()
    mask = Mask.full(m)
    for _ in range(3):
        mask = magnitude(m, mask, p, "global")
    names = prunable_names(m)
    kept = sum(int(mask[n].sum()) for n in names)
    assert abs(kept / 12944 - 0.2) < 1e-3


def test_random_strategy_prunes_the_same_number_of_weights():
    m = model()
    names = prunable_names(m)
    g = torch.Generator().manual_seed(0)
    scores = STRATEGIES["random"](dict(m.named_parameters()), names, g)
    rnd = prune_lowest(scores, Mask.full(m), names, 0.8, "global")
    mag = magnitude(m, Mask.full(m), 0.8, "global")
    assert rnd.nnz == mag.nnz and rnd != mag


def test_mask_validates_values_keys_and_shapes(tmp_path):
    m = model()
    with pytest.raises(FedticketError, match="values other than 0 and 1"):
        Mask({"a": torch.tensor([0.0, 0.5])})
    bad = dict(Mask.full(m))
    bad["body.fc1.weight"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(FedticketError, match="shape"):
        Mask(bad).check_matches(m)
    del bad["body.fc1.weight"]
    with pytest.raises(FedticketError, match="missing"):
        Mask(bad).check_matches(m)
    mask = magnitude(m, Mask.full(m), 0.5, "global")
    mask.save(tmp_path / "mask.npz")
    assert Mask.load(tmp_path / "mask.npz") == mask


def test_report_numbers():
    mask = Mask({"w": torch.tensor([[1, 0], [0, 0]]), "b": torch.tensor([1, 1])})
    r = mask.report(["w"])
    assert r["numel"] == 6 and r["nnz"] == 3 and r["density"] == 0.5
    assert r["layers"]["w"]["density"] == 0.25 and r["prunable_density"] == 0.25


def test_global_magnitude_pruning_never_empties_a_layer():
    from fedticket.pruning.strategies import floor_of, magnitude_scores, prune_lowest

    # a thin layer of tiny weights beside a wide one of large weights: at 90% global
    # sparsity every weight of the thin one would go
    g = torch.Generator().manual_seed(0)
    w = {"wide": 1.0 + torch.rand(40, 10, generator=g),
         "thin": 0.01 * torch.rand(3, 4, generator=g)}
    names = ["wide", "thin"]
    full = Mask({n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()})
    scores = magnitude_scores(w, names, g)
    new = prune_lowest(scores, full, names, 0.9, "global")
    # 412 weights, round(0.9 * 412) = 371 go, 41 stay: the thin layer keeps its 3 (one
    # per output unit) largest, and the wide one the 38 largest of its own
    assert floor_of(w["thin"].shape) == 3
    assert int(new["thin"].sum()) == 3 and int(new["wide"].sum()) == 38
    kept = w["thin"][new["thin"]]
    assert bool(kept.min() >= w["thin"][~new["thin"]].max())
    assert bool(w["wide"][new["wide"]].min() >= w["wide"][~new["wide"]].max())


def test_batchnorm_is_recalibrated_on_the_pool_for_the_pruned_weights():
    """A Linear(1 -> 2) with weights 1 and 2 feeds a BatchNorm1d; the mask removes the
    second unit's weight. On x = 1, 2, 3, 4 the units output x and 0: the running mean
    becomes (2.5, 0) and the running variance the unbiased (1.667, 0), replacing the
    statistics of the unpruned network; momentum and mode are as before."""
    from fedticket.pruning.masked import apply_mask, recalibrate_batchnorm
    from fedticket.stages import recalibrate

    net = torch.nn.Sequential(torch.nn.Linear(1, 2, bias=False), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [2.0]]))
        net[1].running_mean.fill_(7.0)
    net.eval()
    mask = Mask({"0.weight": torch.tensor([[True], [False]])})
    apply_mask(net, mask)
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    assert recalibrate_batchnorm(net, x) == 1
    assert net[1].running_mean.tolist() == [2.5, 0.0]
    assert net[1].running_var.tolist() == pytest.approx([5 / 3, 0.0])
    assert net[1].momentum == 0.1 and not net.training
    assert recalibrate_batchnorm(torch.nn.Linear(1, 1), x) == 0  # nothing to do
    # the stage's entry books the forward passes: 2 multiply-adds a sample on the kept
    # weight (1 MAC, 2 FLOPs), 4 images, and BatchNorm's own arithmetic counts nothing
    log = recalibrate(net, mask, x, (1,))
    assert (log["layers"], log["images"]) == (1, 4) and log["flops"] == 4 * 2
