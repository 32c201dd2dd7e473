"""A mask is a validated value: one 0/1 tensor per tensor of the model that travels.

The tensors that travel (:func:`model_tensors`) are every parameter and every
floating-point buffer, such as BatchNorm's running mean and variance. Every one has an
entry; tensors that are not prunable are all ones. ``Mask.full(model)`` is the dense
model (nothing pruned).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedticket.errors import FedticketError
from fedticket.io import atomic_write


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that define ``model`` and travel between server and clients, in
    ``state_dict`` order: every parameter and every floating-point buffer (BatchNorm's
    running statistics). Integer buffers, such as BatchNorm's ``num_batches_tracked``,
    are local step counters: they are neither sent nor averaged (with BatchNorm's
    default ``momentum`` they do not change what the layer computes). For a model
    without buffers this is ``named_parameters`` in its own order."""
    return {n: t for n, t in model.state_dict(keep_vars=True).items()
            if t.is_floating_point()}


def load_tensors(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state)`` for a state of :func:`model_tensors` only: the
    integer buffers it lacks keep the values ``model`` holds. Any other missing or
    unexpected tensor is an error, as with ``strict=True``."""
    result = model.load_state_dict(state, strict=False)
    missing = list(result.missing_keys)
    if missing:  # only integer buffers may be missing (every update loads: keep it cheap)
        buffers = dict(model.named_buffers())
        missing = [k for k in missing if not (k in buffers and not buffers[k].is_floating_point())]
    if missing or result.unexpected_keys:
        raise FedticketError(f"the state does not fit the model: missing {missing[:3]}, "
                             f"unexpected {list(result.unexpected_keys)[:3]}")


class Mask(Mapping[str, torch.Tensor]):
    """Immutable mapping from parameter name to a bool tensor of the same shape."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        checked: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            t = torch.as_tensor(t)
            if t.dtype != torch.bool:
                if not bool(((t == 0) | (t == 1)).all()):
                    raise FedticketError(f"mask entry {name!r} has values other than 0 and 1")
                t = t.to(torch.bool)
            checked[name] = t.detach().clone()
        self._t = checked

    # Mapping protocol
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._t[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    @classmethod
    def full(cls, model: nn.Module) -> Mask:
        return cls({n: torch.ones_like(p, dtype=torch.bool)
                    for n, p in model_tensors(model).items()})

    def check_matches(self, model: nn.Module) -> None:
        """Raise unless keys and shapes equal the model's tensors (:func:`model_tensors`)."""
        params = model_tensors(model)
        if set(params) != set(self._t):
            missing = sorted(set(params) - set(self._t))
            extra = sorted(set(self._t) - set(params))
            raise FedticketError(f"mask does not fit the model: missing {missing}, extra {extra}")
        for name, p in params.items():
            if tuple(p.shape) != tuple(self._t[name].shape):
                raise FedticketError(
                    f"mask entry {name!r} has shape {tuple(self._t[name].shape)}, "
                    f"the model's is {tuple(p.shape)}"
                )

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self._t.values())

    @property
    def nnz(self) -> int:
        return sum(int(t.sum()) for t in self._t.values())

    @property
    def density(self) -> float:
        return self.nnz / self.numel

    @property
    def is_full(self) -> bool:
        return self.nnz == self.numel

    def float(self, name: str) -> torch.Tensor:
        return self._t[name].to(torch.float32)

    def report(self, prunable: list[str] | None = None) -> dict:
        """Per-tensor and total density; ``prunable`` marks which tensors pruning could touch."""
        layers: dict[str, dict[str, Any]] = {}
        for name, t in self._t.items():
            nnz = int(t.sum())
            layers[name] = {
                "shape": list(t.shape),
                "numel": t.numel(),
                "nnz": nnz,
                "density": nnz / t.numel(),
                "prunable": prunable is not None and name in prunable,
            }
        out: dict[str, Any] = {
            "numel": self.numel,
            "nnz": self.nnz,
            "density": self.density,
            "layers": layers,
        }
        if prunable is not None:
            p_numel = sum(layers[n]["numel"] for n in prunable)
            p_nnz = sum(layers[n]["nnz"] for n in prunable)
            out["prunable"] = list(prunable)
            out["prunable_density"] = p_nnz / p_numel if p_numel else 1.0
        return out

    def save(self, path: Path) -> None:
        """Write as ``.npz`` of bool arrays (atomically, :func:`fedticket.io.atomic_write`)."""
        with atomic_write(path) as f:
            np.savez(f, **{n: t.numpy() for n, t in self._t.items()})  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> Mask:
        with np.load(path, allow_pickle=False) as z:
            return cls({n: torch.from_numpy(z[n].copy()) for n in z.files})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask) or set(self) != set(other):
            return False
        return all(torch.equal(self[n], other[n]) for n in self)

    def __hash__(self) -> int:  # pragma: no cover - masks are not dict keys
        raise TypeError("Mask is not hashable")
