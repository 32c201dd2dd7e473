import pytest
import torch

from fedticket.errors import ConfigError
from fedticket.models import build, prunable_names
from fedticket.spec import ModelSpec


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_fedavg_cnn_has_exactly_1663370_parameters():
    m = build(ModelSpec(name="cnn-fedavg"), (1, 28, 28), 10)
    sizes = {n: p.numel() for n, p in m.named_parameters()}
    assert sizes == {
        "body.conv1.weight": 800, "body.conv1.bias": 32,          # 5*5*1*32 + 32 = 832
        "body.conv2.weight": 51200, "body.conv2.bias": 64,        # 5*5*32*64 + 64 = 51,264
        "body.fc1.weight": 1605632, "body.fc1.bias": 512,         # 3136*512 + 512
        "head.weight": 5120, "head.bias": 10,                     # 512*10 + 10
    }
    assert n_params(m) == 1_663_370


def test_mlp_300_100_parameter_count():
    m = build(ModelSpec(name="mlp", hidden=(300, 100)), (1, 28, 28), 10)
    assert n_params(m) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10  # 266,610


@pytest.mark.parametrize(
    "name, shape",
    [("cnn-fedavg", (1, 28, 28)), ("mlp", (1, 28, 28)), ("cnn-digits", (1, 8, 8)),
     ("cnn-cifar", (3, 32, 32))],
)
def test_decoder_mirrors_body_back_to_the_input_shape(name, shape):
    m = build(ModelSpec(name=name), shape, 10)
    x = torch.rand(3, *shape)
    assert m(x).shape == (3, 10)
    assert m.decoder()(m.body(x)).shape == (3, *shape)


def test_default_prunable_tensors_are_body_weights_only():
    m = build(ModelSpec(), (1, 28, 28), 10)
    assert prunable_names(m) == ["body.conv1.weight", "body.conv2.weight", "body.fc1.weight"]
    assert "head.weight" in prunable_names(m, include_head=True)
    assert len(prunable_names(m, include_head=True, include_biases=True)) == 8


def test_model_refuses_input_it_was_not_made_for():
    with pytest.raises(ConfigError, match="not divisible"):
        build(ModelSpec(name="cnn-fedavg"), (1, 30, 30), 10)
    with pytest.raises(ConfigError, match="3-channel"):
        build(ModelSpec(name="cnn-cifar"), (1, 32, 32), 10)


def test_resnet8_parameter_count_by_hand():
    """3x3 convs without bias, BatchNorm weight + bias per channel, 1x1 shortcuts."""
    m = build(ModelSpec(name="resnet8"), (1, 28, 28), 10)
    convs = (9 * 1 * 16                              # stem
             + 9 * 16 * 16 * 2                        # stage 1: two 16->16 convs
             + 9 * 16 * 32 + 9 * 32 * 32 + 16 * 32    # stage 2 and its 1x1 shortcut
             + 9 * 32 * 64 + 9 * 64 * 64 + 32 * 64)   # stage 3 and its 1x1 shortcut
    bn = 2 * (16 + 16 + 16 + 32 + 32 + 32 + 64 + 64 + 64)
    head = 64 * 10 + 10
    assert convs == 76_432 and n_params(m) == convs + bn + head == 77_754
    assert convs / n_params(m) == pytest.approx(0.983, abs=5e-4)
    from fedticket.flops import layer_costs
    macs = sum(c.forward_macs for c in layer_costs(m, (1, 28, 28)))
    assert macs == 9_345_920  # 9.35 M; the FedAvg CNN's 12.3 M:
    cnn = build(ModelSpec(name="cnn-fedavg"), (1, 28, 28), 10)
    assert sum(c.forward_macs for c in layer_costs(cnn, (1, 28, 28))) == 12_273_152


def test_prunable_tensors_are_conv_and_linear_weights_never_batchnorm():
    m = build(ModelSpec(name="resnet8"), (1, 28, 28), 10)
    names = prunable_names(m, include_head=True, include_biases=True)
    assert "body.stem.weight" in names and "head.weight" in names and "head.bias" in names
    assert not [n for n in names if ".bn" in n or "shortcut.1" in n]
    assert len(names) == 9 + 2  # nine convs, the head's weight and bias


@pytest.mark.parametrize("name,shape", [("cnn-fedavg", (1, 28, 28)), ("cnn-digits", (1, 8, 8))])
def test_pool_before_relu_is_bit_identical_to_relu_before_pool(name, shape):
    # The registry's conv blocks pool before their ReLU (faster: the ReLU sees a quarter
    # of the values). ReLU is monotone, so the outputs, the loss and every gradient must
    # equal those of the textbook conv-relu-pool order exactly, not just to rounding.
    from collections import OrderedDict

    import torch.nn.functional as F

    from fedticket.models import fast_layout

    torch.manual_seed(0)
    new = build(ModelSpec(name=name), shape, 10)
    parts = dict(new.body.named_children())
    assert list(parts)[:3] == ["conv1", "pool1", "relu1"]
    order = [n for n in parts if not n.startswith("pool")]
    for i in (1, 2):
        order.insert(order.index(f"relu{i}") + 1, f"pool{i}")
    torch.manual_seed(0)
    old = build(ModelSpec(name=name), shape, 10)
    old.body = torch.nn.Sequential(OrderedDict((n, dict(old.body.named_children())[n])
                                               for n in order))
    for net in (new, old):
        fast_layout(net)
    x = torch.randn(20, *shape, generator=torch.Generator().manual_seed(1))
    y = torch.arange(20) % 10
    losses = []
    for net in (new, old):
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        losses.append(loss.detach())
    assert torch.equal(losses[0], losses[1])
    for (n, a), (_, b) in zip(new.named_parameters(), old.named_parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), n
    with torch.no_grad():
        assert torch.equal(new.eval()(x), old.eval()(x))
