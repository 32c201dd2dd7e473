import copy

import numpy as np
import pytest
import torch

from fedticket.accounting import Codec
from fedticket.data import Labeled
from fedticket.federated import (
    LocalTrainer,
    client_seed,
    fedavg,
    run_fedavg,
    sample_clients,
)
from fedticket.models import build, prunable_names
from fedticket.pruning import STRATEGIES, Mask, prune_lowest
from fedticket.pruning.masked import apply_mask
from fedticket.spec import FederateSpec, ModelSpec


def test_fedavg_is_the_sample_weighted_mean():
    w0 = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([3.0])}
    w1 = {"a": torch.tensor([4.0, 0.0]), "b": torch.tensor([0.0])}
    out = fedavg([(w0, 1), (w1, 2)])
    assert torch.allclose(out["a"], torch.tensor([(1 * 1 + 4 * 2) / 3, 0.0]))  # 3.0
    assert torch.allclose(out["b"], torch.tensor([(3 * 1 + 0 * 2) / 3]))       # 1.0
    assert out["a"][1].item() == 0.0


def test_sample_clients_takes_round_fraction_distinct_ids():
    rng = np.random.default_rng(0)
    ids = sample_clients(100, 0.1, rng)
    assert len(ids) == 10 and len(set(ids)) == 10 and ids == sorted(ids)
    assert sample_clients(20, 0.01, rng) != [] and len(sample_clients(20, 0.01, rng)) == 1


def test_client_seed_is_a_function_of_seed_round_and_client_alone():
    seeds = {(s, r, c): client_seed(s, r, c) for s in range(3) for r in range(5)
             for c in range(10)}
    assert len(set(seeds.values())) == len(seeds)  # each (seed, round, client) its own
    # the value is numpy's SeedSequence of the three, so no other client's draw moves it
    assert seeds[0, 1, 2] == int(np.random.SeedSequence([0, 1, 2]).generate_state(1)[0])


def tiny_setup(seed=0, n_clients=4, per_client=24):
    torch.manual_seed(seed)
    m = build(ModelSpec(name="cnn-digits"), (1, 8, 8), 10)
    names = prunable_names(m, include_head=True)
    scores = STRATEGIES["magnitude"](dict(m.named_parameters()), names, torch.Generator())
    mask = prune_lowest(scores, Mask.full(m), names, 0.7, "global")
    apply_mask(m, mask)
    g = torch.Generator().manual_seed(seed)
    clients = [
        Labeled(torch.rand(per_client, 1, 8, 8, generator=g),
                torch.randint(0, 10, (per_client,), generator=g))
        for _ in range(n_clients)
    ]
    test = Labeled(torch.rand(30, 1, 8, 8, generator=g), torch.randint(0, 10, (30,), generator=g))
    return m, mask, clients, test


def test_pruned_weights_stay_exactly_zero_with_momentum_and_weight_decay():
    m, mask, clients, _ = tiny_setup()
    spec = FederateSpec(local_epochs=3, batch_size=5, lr=0.1, momentum=0.9, weight_decay=0.01)
    trainer = LocalTrainer(m, mask, spec, (1, 8, 8))
    state = {k: v.clone() for k, v in m.state_dict().items()}
    upd = trainer.update(state, clients[0], torch.Generator().manual_seed(0))
    changed = 0
    for name, value in upd.state.items():
        assert bool((value[~mask[name]] == 0).all()), name
        changed += int((value[mask[name]] != state[name][mask[name]]).sum())
    assert changed > 0.9 * mask.nnz  # the kept weights did train
    # 24 samples, B=5 -> 5 steps per epoch, 3 epochs
    assert upd.steps == 15 and upd.num_examples == 24
    assert upd.flops == trainer.flops_per_sample * 24 * 3


class Recorder:
    def __init__(self):
        self.logs = []

    def on_round(self, log):
        self.logs.append(log)


def test_round_loop_counts_real_bytes_and_keeps_server_zeros():
    m, mask, clients, test = tiny_setup()
    spec = FederateSpec(rounds=3, client_fraction=0.5, local_epochs=1, batch_size=8,
                        lr=0.05, momentum=0.9, weight_decay=1e-3)
    trainer = LocalTrainer(m, mask, spec, (1, 8, 8))
    codec = Codec(mask)
    rec = Recorder()
    final = run_fedavg(trainer, codec, m.state_dict(), clients, test, spec, seed=0,
                       callbacks=[rec])
    for name, value in final.items():
        assert bool((value[~mask[name]] == 0).all()), name
    assert [log.round for log in rec.logs] == [0, 1, 2, 3]
    payload = 4 * mask.nnz
    mask_msg = len(codec.encode_mask())
    seen: set[int] = set()
    for log in rec.logs[1:]:
        assert len(log.clients) == 2  # round(0.5 * 4)
        for c in log.clients:
            assert c.down_bytes == payload and c.up_bytes == payload
            assert c.mask_bytes == (0 if c.client in seen else mask_msg)
            seen.add(c.client)
    t = rec.logs[-1].totals
    assert t.up_bytes == 3 * 2 * payload
    assert t.down_bytes == 3 * 2 * payload + len(seen) * mask_msg


def test_same_seed_same_model_bit_for_bit():
    results = []
    for _ in range(2):
        m, mask, clients, test = tiny_setup()
        spec = FederateSpec(rounds=2, client_fraction=0.5, local_epochs=1, batch_size=8)
        trainer = LocalTrainer(m, mask, spec, (1, 8, 8))
        results.append(run_fedavg(trainer, Codec(mask), m.state_dict(), clients, test, spec, 7))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_divergence_raises():
    from fedticket.errors import DivergenceError

    m, mask, clients, _ = tiny_setup()
    trainer = LocalTrainer(m, mask, FederateSpec(lr=1e30, batch_size=4), (1, 8, 8))
    with pytest.raises(DivergenceError, match="lower federate.lr"):
        trainer.update(m.state_dict(), clients[0], torch.Generator().manual_seed(0))


def test_evaluation_every_r_rounds_and_at_the_end():
    m, mask, clients, test = tiny_setup()
    spec = FederateSpec(rounds=5, client_fraction=0.5, local_epochs=1, batch_size=8,
                        eval_every=2)
    rec = Recorder()
    run_fedavg(LocalTrainer(m, mask, spec, (1, 8, 8)), Codec(mask), m.state_dict(), clients,
               test, spec, seed=0, callbacks=[rec])
    assert [log.round for log in rec.logs] == [0, 1, 2, 3, 4, 5]
    assert [log.round for log in rec.logs if log.test_accuracy is not None] == [0, 2, 4, 5]
    # totals are snapshots: each log keeps the costs of its own round
    ups = [log.totals.up_bytes for log in rec.logs]
    assert ups == [i * 2 * 4 * mask.nnz for i in range(6)]


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 1e-4),
                                                    (0.9, 5e-4)])
def test_the_clients_sgd_is_torchs_bit_for_bit(momentum, weight_decay):
    from fedticket.federated.client import SGD

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    ours, theirs = copy.deepcopy(net), copy.deepcopy(net)
    opts = [(ours, SGD(list(ours.parameters()), 0.05, momentum, weight_decay)),
            (theirs, torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=momentum,
                                     weight_decay=weight_decay, foreach=True))]
    for _ in range(5):
        x, y = torch.randn(8, 20), torch.randint(0, 5, (8,))
        for model, opt in opts:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
