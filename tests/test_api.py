"""The Python API on a model fedticket has never seen (BatchNorm, a residual add)."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import fedticket
from fedticket.accounting.wire import Codec
from fedticket.errors import DataError
from fedticket.pruning.mask import load_tensors, model_tensors
from fedticket.spec import FederateSpec, PretrainSpec


class Net(nn.Module):
    """stem-BN, one residual block, a strided conv-BN, pooling, a linear head."""

    def __init__(self, k=4, w=8):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.a, self.bna = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.b, self.bnb = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.down, self.bnd = nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * w)
        self.fc = nn.Linear(2 * w, k)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(h + self.bnb(self.b(torch.relu(self.bna(self.a(h))))))
        h = torch.relu(self.bnd(self.down(h)))
        return self.fc(h.mean((2, 3)))


def data(n, seed):
    """Four classes of 8x8 images: a bright quadrant per class, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 0.7
    return x, y


PRE = PretrainSpec(epochs=2, batch_size=32)


def ticket(structured=False, seed=0):
    torch.manual_seed(seed)
    return fedticket.find_ticket(Net(), data(256, 1)[0], sparsity=0.6, structured=structured,
                                 pretrain=PRE)


def test_the_ticket_keeps_batchnorm_and_prunes_to_the_sparsity():
    t = ticket()
    names = t.report["mask"]["prunable"]
    assert names == ["body.stem.weight", "body.a.weight", "body.b.weight", "body.down.weight"]
    assert t.report["mask"]["prunable_density"] == pytest.approx(0.4, abs=1e-3)
    for name, m in t.mask.items():
        if name not in names:
            assert bool(m.all()), name  # BatchNorm, buffers and the head stay whole
    state = t.state
    assert "body.bn0.running_var" in state and "body.bn0.num_batches_tracked" not in state
    for n in names:
        assert bool((state[n][~t.mask[n]] == 0).all())
    assert not torch.equal(state["body.stem.weight"] != 0, t.init["body.stem.weight"] != 0)
    assert len(t.report["pretrain"]["epoch_losses"]) == 2
    # the same ticket from a Dataset of (image, label) items: labels unread
    torch.manual_seed(0)
    x, y = data(256, 1)
    again = fedticket.find_ticket(Net(), TensorDataset(x, y), sparsity=0.6, pretrain=PRE)
    assert again.mask == t.mask


def test_structured_ticket_compact_model_is_smaller_and_computes_the_same():
    t = ticket(structured=True)
    kept = t.report["prune"]["structure"]["kept_units"]
    assert set(kept) == {"body.stem", "body.a"}  # body.down's channels feed the head
    # FLOP budget (1 - 0.6) / 2 of the dense multiply-adds, or the floor, round(0.25 * 8)
    assert t.report["prune"]["structure"]["forward_macs_fraction"] <= 0.2 or 2 in kept.values()
    assert min(kept.values()) >= 2 and kept["body.stem"] < 8
    s, a = kept["body.stem"], kept["body.a"]
    net = t.compact_model()
    assert net.body.stem.weight.shape == (s, 1, 3, 3) and net.body.bn0.weight.shape == (s,)
    assert net.body.a.weight.shape == (a, s, 3, 3) and net.body.bna.running_var.shape == (a,)
    assert net.body.b.weight.shape == (s, a, 3, 3)  # the residual stream, cut together
    assert net.body.down.weight.shape == (16, s, 3, 3)
    x = data(16, 5)[0]
    for train in (False, True):
        t.model.train(train)
        net.train(train)
        torch.testing.assert_close(net(x), t.model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("structured", [False, True])
def test_simulator_and_flower_messages_train_the_same_model(structured):
    pytest.importorskip("flwr", reason="Flower is not installed: pip install -e '.[flower]'")
    t = ticket(structured)
    x, y = data(240, 2)
    clients = [(x[i::3], y[i::3]) for i in range(3)]
    spec = FederateSpec(rounds=2, client_fraction=0.67, local_epochs=1, batch_size=16, lr=0.05)
    out = {e: fedticket.federate(t, clients, data(100, 3), spec=spec, engine=e)
           for e in ("simulator", "flower")}
    sim, flw = out["simulator"], out["flower"]
    assert sim.compute == ("structured" if structured else "dense-masked")
    keys = ("round", "cum_down_bytes", "cum_up_bytes", "cum_mask_bytes", "cum_client_flops")
    assert [[r[k] for k in keys] for r in sim.rounds] == [[r[k] for k in keys] for r in flw.rounds]
    # a Flower node builds a fresh trainer per message, the simulator reuses one: the same
    # model up to the order of floating-point sums
    for ra, rb in zip(sim.rounds, flw.rounds, strict=True):
        assert abs(ra["test_accuracy"] - rb["test_accuracy"]) <= 1 / 100
    for a, b in zip(model_tensors(sim.model).values(), model_tensors(flw.model).values(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # bytes by hand: 2 clients a round each download and upload one payload of the kept
    # values (BatchNorm statistics included), and the first time also the mask
    codec = Codec(t.mask)
    payload = 4 * t.mask.nnz
    assert codec.payload_bytes == payload
    r1, r2 = sim.rounds[1], sim.rounds[2]
    assert r1["cum_up_bytes"] == 2 * payload and r2["cum_up_bytes"] == 4 * payload
    assert r1["cum_down_bytes"] == 2 * payload + r1["cum_mask_bytes"]
    assert r1["cum_mask_bytes"] == 2 * len(codec.encode_mask())
    assert "framework" not in str(sim.rounds[-1]) and flw.rounds[-1]["cum_framework_bytes"] > 0
    # the final model holds the trained BatchNorm statistics; pruned entries are zero
    final = model_tensors(flw.model)
    assert not torch.equal(final["body.bn0.running_mean"], t.state["body.bn0.running_mean"])
    for n, m in t.mask.items():
        assert bool((final[n][~m] == 0).all()), n
    load_tensors(t.model, final)  # the same layout as the ticket's model


def test_bad_data_is_one_clear_error():
    t = ticket()
    with pytest.raises(DataError, match="outside \\[0, 1\\]"):
        fedticket.find_ticket(Net(), torch.rand(8, 1, 8, 8) * 3)
    with pytest.raises(DataError, match="labels must be in 0..3"):
        fedticket.federate(t, [(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 9]))],
                           data(10, 0))
    with pytest.raises(DataError, match="the ticket's model takes \\(1, 8, 8\\)"):
        fedticket.federate(t, [(torch.rand(4, 1, 9, 9), torch.zeros(4, dtype=torch.long))],
                           data(10, 0))
