"""The client update: E epochs of minibatch SGD on the masked model.

One :class:`LocalTrainer` per (model, mask, spec) is built once and reused for
every client of a run; the simulator and any other driver call :meth:`update`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fedticket.data import Labeled
from fedticket.errors import ConfigError, DivergenceError
from fedticket.flops import layer_costs, train_flops_per_sample
from fedticket.models import Classifier, fast_layout
from fedticket.pruning.compact import Compact
from fedticket.pruning.mask import Mask, load_tensors, model_tensors
from fedticket.pruning.masked import GradMask
from fedticket.pruning.sparse import MAX_DENSITY, MIN_WEIGHTS, SparseLinear
from fedticket.registry import Registry

if TYPE_CHECKING:
    from fedticket.spec import FederateSpec


@dataclass(frozen=True)
class ClientUpdate:
    """A client's new weights and what producing them cost."""

    state: dict[str, torch.Tensor]
    num_examples: int
    train_loss: float
    steps: int
    flops: int
    wall_s: float
    cpu_s: float
    """CPU time of the update (:func:`cpu_clock`)."""


@dataclass(frozen=True)
class ComputePath:
    """How a client trains its subnetwork (``federate.compute``): on the full model with
    the mask applied, on a physically smaller copy without the units the mask removes,
    and/or with masked linear layers on sparse kernels."""

    compact: bool = False
    """Train the smaller copy when the mask removes whole units."""
    compact_always: bool = False
    """Train the compact copy even when it removes nothing, and fail (one ConfigError) if
    the model cannot be compacted."""
    sparse: bool = False
    """Put masked linear layers on CSR kernels where they pay."""
    sparse_always: bool = False
    """... and every masked linear layer, whether it pays or not."""

    @property
    def mask_may_change(self) -> bool:
        """A mask that changes during training (FedDST's) can be followed: the net is
        the model itself."""
        return not (self.compact or self.sparse)


COMPUTE_PATHS: Registry[ComputePath] = Registry("federate.compute")
"""Every compute path a spec may name."""
COMPUTE_PATHS.add("auto", ComputePath(compact=True, sparse=True))
COMPUTE_PATHS.add("dense-masked", ComputePath())
COMPUTE_PATHS.add("structured", ComputePath(compact=True, compact_always=True))
COMPUTE_PATHS.add("sparse", ComputePath(compact=True, sparse=True, sparse_always=True))


def cpu_clock() -> float:
    """Seconds of CPU time for timing a client's work.

    With one torch thread all of the work runs on the calling thread, so this is that
    thread's CPU time: it does not grow while the thread waits for a core another
    program holds, and no other thread of the process (a pipe, a gRPC stack) enters it.
    With more threads it is the whole process's CPU time, which is *not* robust: idle
    OpenMP threads spin while they wait for a busy core and burn CPU time doing so.
    """
    return time.thread_time() if torch.get_num_threads() == 1 else time.process_time()


class SGD:
    """``torch.optim.SGD(foreach=True)`` (no dampening, no Nesterov) for one device and
    dtype, without ``torch.optim``'s per-step bookkeeping (hooks, parameter groups,
    state dicts, about 0.15 ms a step here, which is a tenth of a small model's step).
    It makes the same foreach calls in the same order, so the weights are bit for bit
    those of ``torch.optim.SGD`` (a test checks it)."""

    def __init__(self, params: list[nn.Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.bufs: list[torch.Tensor] | None = None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        params: list[torch.Tensor] = [p for p in self.params if p.grad is not None]
        if len(params) < len(self.params):
            raise AssertionError("every trained parameter gets a gradient in every step")
        grads: list[torch.Tensor] = [p.grad for p in self.params]  # type: ignore[misc]
        if self.weight_decay != 0:
            grads = list(torch._foreach_add(grads, params, alpha=self.weight_decay))
        if self.momentum != 0:
            if self.bufs is None:  # the first step: the buffer is the gradient
                self.bufs = [g.detach().clone() for g in grads]
            else:
                torch._foreach_mul_(self.bufs, self.momentum)
                torch._foreach_add_(self.bufs, grads, alpha=1)
            grads = self.bufs
        torch._foreach_add_(params, grads, alpha=-self.lr)


class LocalTrainer:
    """Local SGD under a fixed mask (pruned weights get zero gradient, so stay zero).

    States come in and go out full-size, on the model's parameter names. What is
    trained is ``self.net``: the model itself (``dense-masked``), or, when the mask
    removes whole units and ``spec.compute`` allows it, a physically smaller copy
    without them (``structured``, :class:`~fedticket.pruning.compact.Compact`).
    """

    saliency_batches = 1
    """Local batches a saliency instruction scores (``prune.snip_batches``)."""

    def __init__(self, model: Classifier, mask: Mask, spec: FederateSpec, input_shape):
        mask.check_matches(model)
        self.model, self.mask, self.spec = model, mask, spec
        self.input_shape = tuple(input_shape)
        self.costs = layer_costs(model, tuple(input_shape), mask)
        self.flops_per_sample = train_flops_per_sample(self.costs)
        self.compact: Compact | None = None
        path = COMPUTE_PATHS[spec.compute]
        if path.compact:
            try:
                compact = Compact(model, mask, tuple(input_shape))
            except ConfigError:
                if path.compact_always:
                    raise
            else:
                if path.compact_always or not compact.is_identity:
                    self.compact = compact
        self.net: nn.Module = model if self.compact is None else self.compact.net
        net_mask = mask if self.compact is None else self.compact.mask
        self.sparse: dict[str, SparseLinear] = {}
        if path.sparse:
            if self.compact is None:  # the layers are replaced: never touch the caller's model
                self.net = copy.deepcopy(model)
            self._sparsify(net_mask, every=path.sparse_always)
            if not self.sparse and self.compact is None:
                self.net = model
        paths = ["structured"] if self.compact is not None else []
        paths += ["sparse"] if self.sparse else []
        self.compute = "+".join(paths) or "dense-masked"
        if self.net is model:  # never change the layout of the caller's model
            self.net = copy.deepcopy(model)
        fast_layout(self.net)
        self.grad_mask = GradMask(self.net, net_mask)
        params = {n for n, _ in model.named_parameters()}
        # buffers of units the mask removes (a cut channel's BatchNorm statistics) are not
        # moved by gradients: reset them after training, as nothing reads them
        self.masked_buffers = [n for n in mask if n not in params and not bool(mask[n].all())]

    def set_mask(self, mask: Mask) -> None:
        """Train under ``mask`` from now on (a mask that changes during training, as
        FedDST's; ``dense-masked`` compute only)."""
        if self.compact is not None or self.sparse:
            raise ConfigError("a mask that changes needs federate.compute = dense-masked")
        mask.check_matches(self.model)
        self.mask = mask
        self.costs = layer_costs(self.model, self.input_shape, mask)
        self.flops_per_sample = train_flops_per_sample(self.costs)
        self.grad_mask = GradMask(self.net, mask)
        params = {n for n, _ in self.model.named_parameters()}
        self.masked_buffers = [n for n in mask if n not in params and not bool(mask[n].all())]

    @property
    def dense_flops_per_sample(self) -> int:
        """Training FLOPs of one sample on the dense model (a gradient of every entry)."""
        return train_flops_per_sample(layer_costs(self.model, self.input_shape, None))

    def _sparsify(self, mask: Mask, every: bool) -> None:
        """Put the linear layers where CSR kernels pay (all masked ones if ``every``)
        on :class:`~fedticket.pruning.sparse.SparseLinear`."""
        mods = dict(self.net.named_modules())
        for name, mod in list(mods.items()):
            if not isinstance(mod, nn.Linear) or f"{name}.weight" not in mask:
                continue
            keep = mask[f"{name}.weight"]
            density = float(keep.float().mean())
            pays = density <= MAX_DENSITY and keep.numel() >= MIN_WEIGHTS
            if density < 1.0 and (every or pays):
                parent, _, child = name.rpartition(".")
                layer = SparseLinear(mod, keep)
                setattr(mods[parent] if parent else self.net, child, layer)
                self.sparse[name] = layer

    def to_net(self, state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """The trained module's state from a full-size one."""
        out = dict(state) if self.compact is None else self.compact.compact(state)
        for name, layer in self.sparse.items():
            out[f"{name}.weight_values"] = out.pop(f"{name}.weight")[layer.keep]
        return out

    def from_net(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A full-size state (a copy) from the trained module's."""
        # expand() copies into new full-size tensors; without it, copy here
        out = ({k: v.detach().clone(memory_format=torch.contiguous_format)
                for k, v in state.items()} if self.compact is None else dict(state))
        for name, layer in self.sparse.items():
            values = out.pop(f"{name}.weight_values")
            w = torch.zeros(layer.shape, dtype=values.dtype)
            w[layer.keep] = values
            out[f"{name}.weight"] = w
        out = out if self.compact is None else self.compact.expand(out)
        for name in self.masked_buffers:
            out[name] = out[name] * self.mask.float(name)
        return out

    def evaluate(self, state: Mapping[str, torch.Tensor], data: Labeled) -> tuple[float, float]:
        """(accuracy, loss) of the full-size ``state`` on ``data``, computed on ``net``."""
        load_tensors(self.net, self.to_net(state))
        return evaluate(self.net, data)

    def warm_up(self, state: Mapping[str, torch.Tensor], data: Labeled) -> None:
        """One untimed client update, thrown away: the first timed update then pays no
        one-off start-up costs (thread pool, kernel selection, allocator growth)."""
        try:
            self.update(state, data, torch.Generator().manual_seed(0))
        except DivergenceError:
            pass  # thrown away either way; the run's own rounds report a divergence

    def update(
        self, state: Mapping[str, torch.Tensor], data: Labeled, generator: torch.Generator
    ) -> ClientUpdate:
        """Train from ``state`` on ``data``; ``generator`` fixes the batch order."""
        start, start_cpu = time.perf_counter(), cpu_clock()
        model, spec = self.net, self.spec
        load_tensors(model, self.to_net(state))
        model.train()
        opt = SGD(list(model.parameters()), spec.lr, spec.momentum, spec.weight_decay)
        n, bs = len(data), spec.batch_size
        total = torch.zeros(())
        steps = 0
        for _ in range(spec.local_epochs):
            perm = torch.randperm(n, generator=generator)
            xs, ys = data.x[perm], data.y[perm]  # one gather an epoch; batches are views
            for i in range(0, n, bs):
                x, y = xs[i : i + bs], ys[i : i + bs]
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                self.grad_mask()
                opt.step()
                total += loss.detach() * len(y)
                steps += 1
        self.last_batch = (x, y)
        seen = n * spec.local_epochs
        mean_loss = float(total) / seen
        if not math.isfinite(mean_loss):
            raise DivergenceError(
                f"client training diverged (loss {mean_loss}); lower federate.lr"
            )
        new_state = self.from_net(model_tensors(model))
        return ClientUpdate(
            state=new_state,
            num_examples=n,
            train_loss=mean_loss,
            steps=steps,
            flops=self.flops_per_sample * seen,
            wall_s=time.perf_counter() - start,
            cpu_s=cpu_clock() - start_cpu,
        )


@torch.no_grad()
def evaluate(model: nn.Module, data: Labeled, batch_size: int = 100) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``data``."""
    model.eval()
    correct = 0
    loss = 0.0
    for i in range(0, len(data), batch_size):
        logits = model(data.x[i : i + batch_size])
        y = data.y[i : i + batch_size]
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return correct / len(data), loss / len(data)
