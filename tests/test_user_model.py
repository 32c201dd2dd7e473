"""A model fedticket has never seen: split into body and head, decoder built, BatchNorm."""

import math

import pytest
import torch
from torch import nn

from fedticket.accounting.wire import Codec
from fedticket.errors import ConfigError
from fedticket.federated.aggregate import fedavg
from fedticket.models import build
from fedticket.models.adapt import auto_decoder, decoder_plan, from_module
from fedticket.pruning.mask import Mask, model_tensors
from fedticket.spec import ModelSpec


class Net(nn.Module):
    """conv-BN-relu, a residual add, pooling, two linear layers: the last is the head."""

    def __init__(self, num_classes=10, c=3):
        super().__init__()
        self.conv = nn.Conv2d(c, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 16)
        self.out = nn.Linear(16, num_classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = torch.relu(h + self.conv2(h))
        return self.out(torch.relu(self.fc(self.pool(h).flatten(1))))


def test_the_head_is_the_last_linear_called_and_the_split_is_exact():
    torch.manual_seed(0)
    net = Net()
    x = torch.rand(4, 3, 12, 10)
    net.eval()
    want = net(x)
    m = from_module(net, (3, 12, 10), 10)
    m.eval()
    assert m.head.out_features == 10 and m.head.in_features == 16
    assert m.body(x).shape == (4, 16)
    torch.testing.assert_close(m(x), want, rtol=0, atol=0)
    names = [n for n, _ in m.named_parameters()]
    assert names[-2:] == ["head.weight", "head.bias"] and "body.out.weight" not in names
    # the decoder takes the body's 16 features back to 3x12x10 images
    assert m.decoder()(m.body(x)).shape == (4, 3, 12, 10)


@pytest.mark.parametrize("shape, plan", [((1, 28, 28), (2, 7, 7)), ((3, 32, 32), (3, 4, 4)),
                                         ((1, 8, 8), (1, 4, 4)), ((3, 12, 10), (1, 6, 5)),
                                         ((1, 5, 30), (0, 5, 30)), ((2, 27, 29), (2, 7, 8))])
def test_the_decoder_plan_by_hand(shape, plan):
    """Halve while both sides stay >= 4, at most 3 times; start at ceil(side / 2**stages)."""
    assert decoder_plan(shape) == plan
    dec = auto_decoder(20, shape)()
    assert dec(torch.rand(2, 20)).shape == (2, *shape)


def test_a_named_head_and_the_errors():
    assert from_module(Net(), (3, 8, 8), 10, head="out").head.in_features == 16
    with pytest.raises(ConfigError, match="not an nn.Linear"):
        from_module(Net(), (3, 8, 8), 10, head="bn")
    with pytest.raises(ConfigError, match=r"expected \(2, 7\)"):
        from_module(Net(10), (3, 8, 8), 7)

    class Softmaxed(Net):
        def forward(self, x):
            return super().forward(x).softmax(1)

    with pytest.raises(ConfigError, match="not the output of its head"):
        from_module(Softmaxed(), (3, 8, 8), 10)
    with pytest.raises(ConfigError, match="no nn.Linear"):
        from_module(nn.Sequential(nn.Conv2d(3, 10, 8), nn.Flatten()), (3, 8, 8), 10)
    with pytest.raises(ConfigError, match="fails on a"):
        from_module(Net(), (1, 8, 8), 10)  # 1 channel into a 3-channel conv
    bad = Net()
    bad.bn.momentum = None
    with pytest.raises(ConfigError, match="momentum=None"):
        from_module(bad, (3, 8, 8), 10)


def test_batchnorm_statistics_travel_and_are_averaged_by_sample_count():
    m = from_module(Net(), (3, 8, 8), 10)
    tensors = model_tensors(m)
    assert "body.bn.running_mean" in tensors and "body.bn.running_var" in tensors
    assert "body.bn.num_batches_tracked" not in tensors  # a local counter
    mask = Mask.full(m)
    codec = Codec(mask)
    params = sum(p.numel() for p in m.parameters())
    assert codec.payload_bytes == 4 * (params + 8 + 8)  # two statistics of 8 channels
    a = {k: torch.full_like(v, 1.0) for k, v in tensors.items()}
    b = {k: torch.full_like(v, 5.0) for k, v in tensors.items()}
    avg = fedavg([(a, 1), (b, 3)])
    assert torch.equal(avg["body.bn.running_var"], torch.full((8,), 4.0))  # (1 + 3*5) / 4


def test_a_user_factory_by_name(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n"
        "def build(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32),\n"
        "                         nn.ReLU(), nn.Linear(32, num_classes))\n"
        "def ten(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
        "def wrong(num_classes):\n"
        "    return 'a string'\n"
        "def broken(num_classes):\n"
        "    raise RuntimeError('no weights here')\n"
    )
    monkeypatch.chdir(tmp_path)
    m = build(ModelSpec(name="mynets:build"), (1, 8, 8), 10)
    assert m.head.in_features == 32 and m(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    for name, msg in [("mynets:wrong", "returned str, not an nn.Module"),
                      ("mynets:broken", "failed: RuntimeError: no weights here"),
                      ("mynets:missing", "has no callable 'missing'"),
                      ("nosuchmodule:build", "cannot import 'nosuchmodule'")]:
        with pytest.raises(ConfigError, match=msg):
            build(ModelSpec(name=name), (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="expected \\(2, 3\\)"):
        build(ModelSpec(name="mynets:ten"), (1, 8, 8), 3)  # ignores num_classes
    with pytest.raises(ConfigError, match="is not PACKAGE.MODULE:FACTORY"):
        ModelSpec(name="my-nets:build")


CONFIG = """
methods = ["fedavg"]
[data]
dataset = "digits"
pool_size = 200
num_clients = 4
[model]
name = "{name}"
[federate]
rounds = 1
"""


@pytest.mark.parametrize("name, message", [
    ("nosuchmodule:build", "cannot import 'nosuchmodule'"),
    ("mynets2:missing", "mynets2 has no callable 'missing'"),
    ("mynets2:ten", "expected (2, 10) logits"),  # the factory's model ignores num_classes
    ("mynets2:softmaxed", "is not the output of its head"),
])
def test_a_bad_factory_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, name, message):
    from fedticket.cli import main

    (tmp_path / "mynets2.py").write_text(
        "from torch import nn\n"
        "def ten(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 7))\n"
        "def softmaxed(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes), nn.Softmax(1))\n"
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(CONFIG.format(name=name))
    assert main(["run", "c.toml", "--out", "runs", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list((tmp_path / "runs").glob("fedavg_*"))  # nothing half-written


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 8, 64), (3, 13, 21), (3, 40, 64),
                                   (3, 64, 64), (2, 64, 9)], ids=lambda s: "x".join(map(str, s)))
def test_the_dae_trains_on_any_image_shape_from_8_to_64_pixels(shape):
    """The automatic decoder gives back the image's exact C x H x W, and one DAE epoch on
    it runs to a finite loss, for square, non-square, grey and RGB images."""
    from fedticket.api import find_ticket
    from fedticket.spec import PretrainSpec

    c, h, w = shape
    net = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(32, 10))
    ticket = find_ticket(net, torch.rand(16, *shape, generator=torch.Generator().manual_seed(0)),
                         sparsity=0.5, pretrain=PretrainSpec(epochs=1, batch_size=8))
    [loss] = ticket.report["pretrain"]["epoch_losses"]
    assert math.isfinite(loss) and loss > 0
    decoder = auto_decoder(32, shape)()
    assert decoder(torch.rand(2, 32)).shape == (2, c, h, w)
