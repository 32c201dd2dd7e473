"""Sparse kernels for unstructured linear layers: compute only the surviving weights.

:class:`SparseLinear` keeps a linear layer's surviving weights as one values vector
(the trainable parameter) over a fixed CSR pattern, and computes all three products
of a training step on it: the forward ``x W^T`` and the input gradient ``g W`` as CSR
matrix products (torch's sparse kernels), and the weight gradient only at the
surviving positions, ``sum_b g[b, row] * x[b, col]`` (a sampled product; pruned
weights never get a gradient at all). SGD with momentum and weight decay on the
values vector is SGD on the masked dense weight, so the model is the same as the
dense-masked path's, up to the order of floating-point sums.

It pays only at low density: measured on this kind of machine (torch 2.13 CPU, 2
threads), CSR matmul of a 512x3136 layer at batch 10 was 0.6x the dense speed at
density 0.3 and 2.1x at 0.1. :data:`MAX_DENSITY` is where ``compute = "auto"`` uses
it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
         shape: tuple[int, int]) -> torch.Tensor:
    """A CSR tensor on a pattern built here (valid by construction: no checks), without
    torch's one-time "beta" notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)

MAX_DENSITY = 0.1
MIN_WEIGHTS = 65536  # smaller layers are all fixed cost: dense kernels win


class _SparseMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, layer: SparseLinear
                ) -> torch.Tensor:
        w = _csr(layer.crow, layer.col, values, layer.shape)
        ctx.save_for_backward(x, values)
        ctx.layer = layer
        return (w @ x.t()).t()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, None]:
        x, values = ctx.saved_tensors
        layer: SparseLinear = ctx.layer
        grad_x = None
        if ctx.needs_input_grad[0]:
            wt = _csr(layer.crow_t, layer.col_t, values[layer.perm_t],
                      (layer.shape[1], layer.shape[0]))
            grad_x = (wt @ grad.t()).t()
        grad_values = (grad[:, layer.rows] * x[:, layer.cols]).sum(dim=0)
        return grad_x, grad_values, None


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as its surviving values (``weight_values``)."""

    def __init__(self, dense: nn.Linear, keep: torch.Tensor):
        super().__init__()
        keep = keep.to(torch.bool)
        self.shape = (dense.out_features, dense.in_features)
        idx = keep.nonzero()  # row-major: the CSR order
        self.rows, self.cols = idx[:, 0].contiguous(), idx[:, 1].contiguous()
        counts = torch.bincount(self.rows, minlength=self.shape[0])
        self.crow = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        self.col = self.cols.clone()
        # the transpose's pattern, and where each of its values sits in ours
        order = torch.argsort(self.cols * self.shape[0] + self.rows)
        self.perm_t = order
        counts_t = torch.bincount(self.cols, minlength=self.shape[1])
        self.crow_t = torch.cat([torch.zeros(1, dtype=torch.int64), counts_t.cumsum(0)])
        self.col_t = self.rows[order].contiguous()
        self.keep = keep
        self.weight_values = nn.Parameter(dense.weight.detach()[keep].clone())
        self.bias = None if dense.bias is None else nn.Parameter(dense.bias.detach().clone())
        self.in_features, self.out_features = self.shape[1], self.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _SparseMM.apply(x, self.weight_values, self)
        return y if self.bias is None else y + self.bias

    def dense_weight(self) -> torch.Tensor:
        w = torch.zeros(self.shape, dtype=self.weight_values.dtype)
        w[self.keep] = self.weight_values.detach()
        return w
