import numpy as np
import pytest
import torch
from torch import nn

from fedticket.accounting import Codec, layer_costs, maskcode, train_flops_per_sample
from fedticket.accounting.maskcode import ENTROPY
from fedticket.accounting.wire import BITMAP, INDEX_LIST
from fedticket.errors import FedticketError
from fedticket.models import build
from fedticket.pruning import Mask
from fedticket.spec import ModelSpec


def mask_with(nnz, numel=100):
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[torch.randperm(numel, generator=torch.Generator().manual_seed(0))[:nnz]] = True
    return Mask({"w": flat.view(10, numel // 10)})


def test_dense_payload_is_4_bytes_per_parameter_and_round_trips():
    codec = Codec(Mask({"w": torch.ones(10, 10, dtype=torch.bool), "b": torch.ones(10)}))
    state = {"w": torch.randn(10, 10), "b": torch.randn(10)}
    payload = codec.encode(state)
    assert len(payload) == 4 * 110 and codec.encode_mask() == b""
    back = codec.decode(payload)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_sparse_payload_is_4_bytes_per_kept_weight_and_zero_elsewhere():
    mask = mask_with(30)
    codec = Codec(mask)
    state = {"w": torch.randn(10, 10)}
    payload = codec.encode(state)
    assert len(payload) == 4 * 30
    back = codec.decode(payload)["w"]
    assert torch.equal(back[mask["w"]], state["w"][mask["w"]])
    assert bool((back[~mask["w"]] == 0).all())


@pytest.mark.parametrize(
    "nnz, tag",
    [
        (30, BITMAP),       # bitmap 1 + ceil(100/8) = 14 bytes; ANS: 1 + 1 + 16 (4 words)
        (3, ENTROPY),       # 3 of 100: 1 + 1 + 8 (2 words) beats 1 + 4 * 3 indices
        (0, INDEX_LIST),    # nothing kept: an empty index list (1 byte; ANS needs 3)
        (50, BITMAP),       # H(0.5) = 1 bit a weight: nothing beats the bitmap
    ],
)
def test_mask_message_is_the_cheapest_encoding(nnz, tag):
    mask = mask_with(nnz)
    codec = Codec(mask)
    msg = codec.encode_mask()
    sizes = {BITMAP: 1 + 13, INDEX_LIST: 1 + 4 * nnz,
             ENTROPY: len(maskcode.encode([mask["w"].numpy()]))}
    assert msg[0] == tag and len(msg) == min(sizes.values()) == sizes[tag]
    assert codec.decode_mask(msg) == mask


def test_fedavg_cnn_mask_at_80_percent_sparsity_costs_its_entropy():
    # 1,663,370 parameters at density 0.2: a bitmap would be 1 + 207,922 bytes; the bound
    # n * H(0.2) = 1,663,370 * 0.72193 bits = 150,104 bytes
    m = build(ModelSpec(), (1, 28, 28), 10)
    flat = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.2
            for n, p in m.named_parameters()}
    codec = Codec(Mask(flat))
    msg = codec.encode_mask()
    bound = maskcode.entropy_bits(codec._flat_mask) / 8
    assert 150_000 < bound < 150_250
    assert msg[0] == ENTROPY and bound < len(msg) < 1.001 * bound + 64
    assert codec.decode_mask(msg) == Mask(flat)


def test_decode_rejects_wrong_length_and_bad_mask_messages():
    codec = Codec(mask_with(30))
    with pytest.raises(FedticketError, match="expected 120"):
        codec.decode(b"\0" * 119)
    with pytest.raises(FedticketError, match="unknown mask encoding"):
        codec.decode_mask(b"\x07abc")
    with pytest.raises(FedticketError, match="past the model size"):
        codec.decode_mask(bytes([INDEX_LIST]) + np.array([100], "<u4").tobytes())


def test_fedavg_cnn_forward_macs_match_the_design_table():
    m = build(ModelSpec(), (1, 28, 28), 10)
    costs = {c.name: c for c in layer_costs(m, (1, 28, 28))}
    assert costs["body.conv1"].forward_macs == 627_200     # 800 weights * 28*28 positions
    assert costs["body.conv2"].forward_macs == 10_035_200  # 51,200 * 14*14
    assert costs["body.fc1"].forward_macs == 1_605_632
    assert costs["head"].forward_macs == 5_120


def test_linear_flops_by_hand_with_and_without_mask():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    dense = layer_costs(net, (4,))
    # layer 0: fwd 2*12 + 3 = 27; bwd (first layer, no input grad) 2*12 + 3 = 27
    # layer 1: fwd 2*6 + 2 = 14;  bwd 2*6 + 2*6 + 2 = 26
    assert [(c.forward_flops, c.backward_flops) for c in dense] == [(27, 27), (14, 26)]
    assert train_flops_per_sample(dense) == 27 + 27 + 14 + 26
    w0 = torch.zeros(3, 4, dtype=torch.bool)
    w0[0, :2] = True  # 2 of 12 weights kept
    sparse = layer_costs(net, (4,), {"0.weight": w0})
    assert (sparse[0].forward_flops, sparse[0].backward_flops) == (2 * 2 + 3, 2 * 2 + 3)


def test_conv_flops_by_hand():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))  # 18 weights, 4x4 output positions
    (c,) = layer_costs(net, (1, 4, 4))
    assert c.positions == 16 and c.forward_macs == 18 * 16
    assert c.forward_flops == 2 * 288 + 2 * 16


@pytest.mark.parametrize("values", ["f32", "f16", "q8", "q4"])
def test_value_encodings_sizes_and_errors(values):
    g = torch.Generator().manual_seed(0)
    state = {"a": torch.randn(20, 30, generator=g), "b": torch.randn(7, generator=g) * 100}
    mask = Mask({"a": torch.rand(20, 30, generator=g) < 0.3, "b": torch.ones(7, dtype=bool)})
    codec = Codec(mask, values)
    payload = codec.encode(state)
    nnz = mask.nnz
    # each tensor holds fewer than 256 kept values: one block (min and step) each
    expected = {"f32": 4 * nnz, "f16": 2 * nnz, "q8": 2 * 8 + nnz,
                "q4": 2 * 8 + (nnz + 1) // 2}[values]
    assert len(payload) == codec.payload_bytes == expected
    back = codec.decode(payload)
    for k in state:
        kept = mask[k]
        assert bool((back[k][~kept] == 0).all())
        err = (back[k][kept] - state[k][kept]).abs()
        if values == "f32":
            assert float(err.max()) == 0.0
        elif values == "f16":  # 11 significant bits: relative error at most 2**-11
            assert bool((err <= state[k][kept].abs() * 2.0**-11 + 1e-7).all())
        else:  # nearest of 256 (16) levels between the tensor's min and max
            levels = 255 if values == "q8" else 15
            step = float(state[k][kept].max() - state[k][kept].min()) / levels
            assert float(err.max()) <= step / 2 + 1e-5
    with pytest.raises(FedticketError, match="expected"):
        codec.decode(payload[:-1])
