import pytest
import torch

from conftest import needs_fmnist
from fedticket.data import load_splits
from fedticket.models import build, prunable_names
from fedticket.pretrain import NOISES, ServerTrainer
from fedticket.pruning import STRATEGIES, Mask, prune_lowest
from fedticket.spec import DataSpec, ModelSpec, PretrainSpec


def test_noise_models():
    g = torch.Generator().manual_seed(0)
    x = torch.full((200, 1, 10, 10), 0.5)
    masked = NOISES["masking"](x, 0.3, g)
    assert abs(float((masked == 0).float().mean()) - 0.3) < 0.02
    sp = NOISES["salt-pepper"](x, 0.2, g)
    assert abs(float((sp != 0.5).float().mean()) - 0.2) < 0.02
    assert set(torch.unique(sp).tolist()) == {0.0, 0.5, 1.0}
    gauss = NOISES["gaussian"](x, 0.1, g)
    assert float(gauss.min()) >= 0 and float(gauss.max()) <= 1
    assert abs(float((gauss - x).std()) - 0.1) < 0.01


def dae_on(spec_data, model_name, epochs, loss="bce", noise="gaussian"):
    splits = load_splits(spec_data, 0)
    torch.manual_seed(0)
    m = build(ModelSpec(name=model_name), splits.input_shape, splits.num_classes)
    spec = PretrainSpec(kind="dae", epochs=epochs, batch_size=32, lr=1e-3, loss=loss,
                        noise=noise, noise_level=0.3)
    trainer = ServerTrainer(m, spec, splits.pool.x, None, torch.Generator().manual_seed(0))
    head_before = m.head.weight.clone()
    before = trainer.probe(splits.pool.x)
    losses = trainer.train(epochs)
    after = trainer.probe(splits.pool.x)
    assert torch.equal(m.head.weight, head_before)  # the DAE never touches the head
    return m, trainer, before, after, losses


@pytest.mark.parametrize("loss, noise", [("bce", "gaussian"), ("mse", "masking"),
                                         ("bce", "salt-pepper")])
def test_dae_reconstruction_loss_falls_on_real_digits(loss, noise):
    data = DataSpec(dataset="digits", pool_size=800, num_clients=2)
    _, trainer, before, after, losses = dae_on(data, "cnn-digits", 5, loss, noise)
    assert losses[-1] < losses[0]
    assert after < 0.8 * before
    assert trainer.log.samples == 800 * 5 and trainer.log.flops > 0


@needs_fmnist
def test_dae_reconstruction_loss_falls_on_fashion_mnist():
    data = DataSpec(dataset="fashion-mnist", pool_size=1000, train_size=200, test_size=100,
                    num_clients=2)
    _, _, before, after, losses = dae_on(data, "mlp", 2)
    # BCE of a blank-ish guess is ~0.69 per pixel; two epochs must clearly beat it
    assert before > 0.6 and after < 0.45 and losses[1] < losses[0]


def test_masked_retraining_keeps_pruned_weights_zero_under_adam():
    data = DataSpec(dataset="digits", pool_size=300, num_clients=2)
    m, trainer, *_ = dae_on(data, "cnn-digits", 1)
    names = prunable_names(m)
    scores = STRATEGIES["magnitude"](dict(m.named_parameters()), names, torch.Generator())
    mask = prune_lowest(scores, Mask.full(m), names, 0.6, "global")
    trainer.train(2, mask)
    for n, p in m.named_parameters():
        assert bool((p[~mask[n]] == 0).all()), n


def test_supervised_oracle_learns_from_pool_labels():
    splits = load_splits(DataSpec(dataset="digits", pool_size=800, num_clients=2), 0,
                         oracle_labels=True)
    torch.manual_seed(0)
    m = build(ModelSpec(name="cnn-digits"), splits.input_shape, 10)
    spec = PretrainSpec(kind="supervised", epochs=8, batch_size=32, lr=3e-3)
    t = ServerTrainer(m, spec, splits.pool.x, splits.pool_labels, torch.Generator())
    losses = t.train(8)
    acc = float((m(splits.test.x).argmax(1) == splits.test.y).float().mean())
    assert losses[-1] < 0.5 * losses[0] and acc > 0.8
