"""Any model a user brings: one small reference network per layer family of today's
on-device classifiers (tests/zoo.py), each through both kinds of ticket, a federated
round and an ONNX export, for grey 28x28 and colour 32x32 images."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fedticket.api import federate, find_ticket
from fedticket.errors import FedticketWarning
from fedticket.models import prunable_names
from fedticket.pruning.strategies import floor_of
from fedticket.spec import FederateSpec, PretrainSpec
from zoo import SHAPES, ZOO, build

PRETRAIN = PretrainSpec(epochs=1, batch_size=32)
CUT = {"depthwise", "se", "concat"}
"""Families whose structured ticket must remove whole units (the others may leave
groups to magnitude pruning, with a warning that says which and why)."""


def images(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def outputs(net: nn.Module, x: torch.Tensor, train: bool) -> torch.Tensor:
    """Logits in train mode (BatchNorm on the batch's statistics; dropout off, so that
    two networks of different widths draw nothing at random) or in eval mode."""
    net.train(train)
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("family", list(ZOO))
def test_a_zoo_network_goes_through_both_tickets_a_round_and_onnx(family, shape, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    pool = images(64, shape, 1)
    ticket = find_ticket(build(family, shape), pool, sparsity=0.8, pretrain=PRETRAIN)
    names = prunable_names(ticket.model)
    kept = {n: int(ticket.mask[n].sum()) for n in names}
    # 80% of the prunable weights go, and no layer is emptied
    total = sum(ticket.mask[n].numel() for n in names)
    assert sum(kept.values()) == round(0.2 * total)
    assert all(kept[n] >= min(floor_of(ticket.mask[n].shape), 1) for n in names)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = find_ticket(build(family, shape), pool, sparsity=0.8, structured=True,
                           pretrain=PRETRAIN)
    said = [str(w.message) for w in caught if issubclass(w.category, FedticketWarning)]
    assert all("\n" not in s and s.startswith("structured pruning leaves") for s in said)
    compact = fast.compact_model()
    full_params = sum(p.numel() for p in fast.model.parameters())
    small_params = sum(p.numel() for p in compact.parameters())
    if family in CUT:
        assert small_params < full_params and not said
    else:
        assert said or small_params < full_params  # what is not cut is said
    x = images(8, shape, 2)
    for train in (True, False):
        want, got = outputs(fast.model, x, train), outputs(compact, x, train)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert float(want.std(dim=0).max()) > 0  # the logits depend on the image

    # one federated round on the simulator, two clients of 24 images
    labels = torch.arange(48) % 10
    data = images(48, shape, 3)
    run = federate(fast, [(data[:24], labels[:24]), (data[24:], labels[24:])],
                   (data[:16], labels[:16]),
                   spec=FederateSpec(rounds=1, client_fraction=1.0, batch_size=8))
    assert [r["round"] for r in run.rounds][-1] == 1 and run.rounds[-1]["cum_up_bytes"] > 0

    report = run.export(str(tmp_path / "model.onnx"))
    assert report["compact"] == (family in CUT or small_params < full_params)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = images(5, shape, 4)
    [onnx] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx, outputs(run.model, x, False).numpy(), atol=1e-4)
