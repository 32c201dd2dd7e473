"""The FLOP ledger counts any module: PyTorch's counter per module, scaled by the kept
fraction of the weights the module holds; the counts of the registry's models are those
of the hand-written formulas it replaced."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fedticket.errors import ConfigError
from fedticket.flops import layer_costs, train_flops_per_sample
from fedticket.models import build, prunable_names
from fedticket.models.registry import REGISTRY
from fedticket.spec import ModelSpec

PINNED = json.loads((Path(__file__).parent / "data" / "flops.json").read_text())
"""Every registry model's costs per layer (name, forward MACs, forward FLOPs, backward
FLOPs) and in all, dense and under a seeded random mask of 30% density, recorded with
the hand-written per-layer formulas the ledger had before it used PyTorch's counter
(``fedticket.flops`` of commit f2b0c80)."""


def test_the_registry_models_cost_what_they_cost_before():
    for key, (total, layers) in PINNED.items():
        name, rest = key.split(" ", 1)
        shape = tuple(int(x) for x in rest[1:rest.index(")")].split(", "))
        model = build(ModelSpec(name=name), shape, 10)
        g = torch.Generator().manual_seed(0)
        mask = {n: torch.rand(p.shape, generator=g) < 0.3 for n, p in model.named_parameters()
                if n in prunable_names(model)}
        costs = layer_costs(model, shape, mask if key.endswith("masked") else None)
        assert train_flops_per_sample(costs) == total, key
        assert [[c.name, c.forward_macs, c.forward_flops, c.backward_flops]
                for c in costs] == layers, key
    assert {k.split(" ")[0] for k in PINNED} == set(REGISTRY.names())


def test_a_grouped_and_a_depthwise_convolution_by_hand():
    # grouped: 8 -> 12 channels in 4 groups, 3x3, stride 1, padding 1, on 8x8, no bias.
    # Each output channel reads 8/4 = 2 input channels: weight (12, 2, 3, 3) = 216
    # entries, each used at 64 positions -> 13,824 MACs; forward 27,648 FLOPs; backward
    # twice that (weight and input gradients) except for the first layer: 27,648.
    grouped = nn.Conv2d(8, 12, 3, padding=1, groups=4, bias=False)
    (c,) = layer_costs(grouped, (8, 8, 8))
    assert (c.weights, c.positions, c.forward_macs) == (216, 64, 13_824)
    assert (c.forward_flops, c.backward_flops) == (27_648, 27_648)
    # depthwise 6 channels, 3x3, stride 2, padding 1 on 6x10 -> 3x5 outputs, with bias:
    # weight (6, 1, 3, 3) = 54 entries x 15 positions = 810 MACs; the bias adds 6 x 15.
    # After a 1x1 conv 2 -> 6 on 6x10 (12 weights x 60 = 720 MACs), it is not the first
    # layer: backward = 2 x 810 (weight) + 90 (bias) + 2 x 810 (input) = 3,330.
    net = nn.Sequential(nn.Conv2d(2, 6, 1, bias=False),
                        nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6))
    first, dw = layer_costs(net, (2, 6, 10))
    assert (first.forward_macs, first.backward_flops) == (720, 1_440)
    assert (dw.weights, dw.positions, dw.forward_macs) == (54, 15, 810)
    assert (dw.forward_flops, dw.backward_flops) == (1_710, 3_330)
    # keeping 18 of the depthwise weights (and every bias) scales its MACs to 18 x 15
    mask = {"1.weight": torch.zeros(6, 1, 3, 3, dtype=torch.bool)}
    mask["1.weight"].view(-1)[:18] = True
    _, dw = layer_costs(net, (2, 6, 10), mask)
    assert (dw.nnz_weights, dw.forward_macs, dw.forward_flops) == (18, 270, 630)


class Attention(nn.Module):
    """Two heads over 5 tokens of width 4: qkv, q k^T, (q k^T) v, proj."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(4, 12, bias=False), nn.Linear(4, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(1, 5, 3, 2, 2).permute(2, 0, 3, 1, 4)
        return self.proj((q @ k.transpose(-1, -2)).softmax(-1).matmul(v)
                         .transpose(1, 2).reshape(1, 5, 4))


def test_products_between_activations_count_in_full_and_unknown_layers_need_no_code():
    (qkv, proj, attn) = layer_costs(Attention(), (5, 4))
    # qkv: 48 weights at 5 tokens = 240 MACs; proj: 16 x 5 = 80
    assert (qkv.name, qkv.forward_macs, proj.forward_macs) == ("qkv", 240, 80)
    # the module itself: q k^T is 2 heads x 5 x 5 x 2 = 100 MACs, times v another 100;
    # no weight, so no mask scales it, and its backward is twice its forward
    assert (attn.name, attn.kind, attn.weights, attn.forward_macs) == ("", "attention", 0, 200)
    assert (attn.forward_flops, attn.backward_flops) == (400, 800)


def test_a_module_that_cannot_run_on_the_shape_is_named_in_one_line():
    with pytest.raises(ConfigError, match=r"cannot count the FLOPs of Linear on inputs of "
                                          r"shape \(3,\)"):
        layer_costs(nn.Linear(4, 2), (3,))
