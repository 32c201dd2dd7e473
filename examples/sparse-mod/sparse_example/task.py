"""Model, data and training: plain PyTorch, no Flower and no fedticket here."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


def model() -> nn.Module:
    """An MLP with one BatchNorm layer: its bias and running mean start at exactly 0."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))


def prune(net: nn.Module, sparsity: float) -> None:
    """Zero the smallest-magnitude ``sparsity`` of every nn.Linear weight matrix, in place
    (biases and the BatchNorm layer are not pruned)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                k = int(sparsity * m.weight.numel())
                if k:
                    cut = m.weight.abs().flatten().kthvalue(k).values
                    m.weight.mul_(m.weight.abs() > cut)


def data(partition: int, partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``partitions``-th sample of the first 1,500 digits, from ``partition`` on."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:1500][partition::partitions] / 16.0, dtype=torch.float32)
    return x, torch.tensor(y[:1500][partition::partitions], dtype=torch.long)


def test_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[1500:] / 16.0, dtype=torch.float32), torch.tensor(y[1500:])


def train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> float:
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    loss = torch.zeros(())
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(32):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(loss.detach())


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()  # BatchNorm: use the running statistics
    return float((net(x).argmax(1) == y).float().mean())


def save(path: str, state: dict[str, torch.Tensor]) -> None:
    np.savez(path, **{k: v.numpy() for k, v in state.items()})
