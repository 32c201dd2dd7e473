"""FedDST: a sparse mask the clients readjust during training (Bibikar et al. 2022).

The schedule is the authors' code's (bibikar/feddst, ``dst.py``), with their rounds
counted from 0 as ``s = round - 1``: round ``s`` readjusts when ``(s - 1) %
readjust_every == 0`` and the cosine decay ``alpha / 2 * (1 + cos(pi * s / T_end))`` is
above zero, which is while ``s < T_end`` (``T_end = readjust_end * rounds``; their
default is half the rounds). The decayed value only decides *whether* a round
readjusts: the fraction swapped is the constant ``readjust_alpha`` (their
``prune_sparsity = sparsity + (1 - sparsity) * args.readjustment_ratio``), 0.01 in
every command of their README.

In a readjusting round each sampled client trains as usual and then readjusts its mask,
tensor by tensor over the prunable tensors: it drops the ``round(alpha * kept)`` kept
weights of smallest magnitude and regrows as many of the weights that were pruned,
those with the largest gradient magnitude on its last local batch, at zero. Its density
stays exact. It uploads its new mask (the cheapest of bitmap, index list and entropy
code) and its weights on it.

The server averages each weight over the clients whose mask holds it (weighted by
their samples), takes the union of their masks, and if that keeps more than the run's
density it prunes each tensor by the magnitude of the merged weights back to its ERK
budget (:func:`~fedticket.pruning.strategies.erk_counts`). The new mask goes to every
client with its next download; the ledger counts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fedticket.accounting.wire import Codec
from fedticket.data import Labeled
from fedticket.errors import FedticketError
from fedticket.federated.client import LocalTrainer
from fedticket.federated.messages import Instruction, Memory, Reply
from fedticket.federated.rules import RULES, RoundRule
from fedticket.federated.tasks import TASKS, ClientTask, train_locally
from fedticket.federated.validate import check_state
from fedticket.pruning.mask import Mask
from fedticket.pruning.strategies import erk_counts

if TYPE_CHECKING:
    from fedticket.federated.strategy import TicketStrategy
    from fedticket.spec import FederateSpec

READJUST = "readjust"
"""The task of an instruction whose client readjusts its mask after training."""


def _readjust(trainer: LocalTrainer, codec: Codec, instruction: Instruction, data: Labeled,
              memory: Memory | None) -> Reply:
    """Train as for ``train``, then readjust the mask on the last local batch (its
    gradient dense: one more batch of dense FLOPs) and upload the new mask and the
    weights on it."""
    t = train_locally(trainer, codec, instruction, data, memory)
    x, y = trainer.last_batch
    mask = readjusted_mask(trainer.net, t.codec.mask, list(t.codec.mask), instruction.alpha,
                           x, y)
    flops = t.update.flops + trainer.dense_flops_per_sample * len(y)
    return t.reply(instruction, encode_readjusted(mask, t.update.state, t.codec.values), flops)


def alpha_at(round_: int, spec: FederateSpec) -> float:
    """The fraction of kept weights a readjustment in ``round_`` swaps (0: none), on the
    authors' schedule (the module's docstring)."""
    if not spec.readjust_every:
        return 0.0
    s = round_ - 1  # the authors' server round
    if (s - 1) % spec.readjust_every or s >= spec.readjust_end * spec.rounds:
        return 0.0
    return spec.readjust_alpha


def readjusted_mask(net: nn.Module, mask: Mask, names: Sequence[str], alpha: float,
                    x: torch.Tensor, y: torch.Tensor) -> Mask:
    """``mask`` with, in each of ``names``, the ``round(alpha * kept)`` kept weights of
    ``net`` of smallest magnitude dropped and as many pruned ones of largest gradient
    magnitude (on the batch ``x, y``, the gradient of every entry) grown."""
    params = dict(net.named_parameters())
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    new = {n: mask[n].clone() for n in mask}
    for n in names:
        keep = mask[n].reshape(-1)
        kept = int(keep.sum())
        k = min(round(alpha * kept), int((~keep).sum()))
        if k <= 0:
            continue
        w = params[n].detach().reshape(-1)
        grad = params[n].grad
        g = torch.zeros_like(w) if grad is None else grad.detach().reshape(-1)
        alive, dead = keep.nonzero().flatten(), (~keep).nonzero().flatten()
        drop = alive[torch.topk(w[alive].abs(), k, largest=False).indices]
        grow = dead[torch.topk(g[dead].abs(), k).indices]
        flat = keep.clone()
        flat[drop] = False
        flat[grow] = True
        new[n] = flat.view_as(mask[n])
    net.zero_grad()
    return Mask(new)


# ---------------------------------------------------------------------------- wire
def encode_readjusted(mask: Mask, state: Mapping[str, torch.Tensor], values: str) -> bytes:
    """A readjusting client's upload: the length of its mask message (uint32), the mask
    message, then its weights on that mask."""
    codec = Codec(mask, values)
    msg = codec.encode_mask()
    return len(msg).to_bytes(4, "little") + msg + codec.encode(state)


def decode_readjusted(payload: bytes, reference: Codec, values: str
                      ) -> tuple[Mask, dict[str, torch.Tensor]]:
    """Inverse of :func:`encode_readjusted` (the mask's names and shapes from
    ``reference``)."""
    if len(payload) < 4:
        raise FedticketError("readjusted upload is shorter than its header")
    size = int.from_bytes(payload[:4], "little")
    if size > len(payload) - 4:
        raise FedticketError("readjusted upload's mask is longer than the upload")
    mask = reference.decode_mask(payload[4:4 + size]) if size else reference.mask
    return mask, Codec(mask, values).decode(payload[4 + size:])


# ---------------------------------------------------------------------------- server
def check_readjusted(mask: Mask, current: Mask, names: Sequence[str]) -> str | None:
    """Why a client's readjusted mask may not be merged, or None: it keeps exactly as
    many weights in each prunable tensor as the current mask, and changes nothing
    else."""
    for n in current:
        if n in names:
            if int(mask[n].sum()) != int(current[n].sum()):
                return f"readjusted mask changes the density of {n}"
        elif not torch.equal(mask[n], current[n]):
            return f"readjusted mask changes {n}, which is not prunable"
    return None


def merge(updates: Sequence[tuple[Mapping[str, torch.Tensor], Mask, int]],
          names: Sequence[str], keep: int) -> tuple[dict[str, torch.Tensor], Mask]:
    """The new global weights and mask from the clients' (weights, mask, samples): each
    entry the sample-weighted mean over the clients whose mask holds it, the union of
    the masks, pruned back by magnitude to ``keep`` weights over ``names`` (ERK)."""
    first = updates[0][0]
    out: dict[str, torch.Tensor] = {}
    union: dict[str, torch.Tensor] = {}
    for n in first:
        num = torch.zeros_like(first[n], dtype=torch.float64)
        den = torch.zeros_like(first[n], dtype=torch.float64)
        for state, mask, size in updates:
            m = mask[n].to(torch.float64)
            num += size * m * state[n].double()
            den += size * m
        out[n] = torch.where(den > 0, num / den.clamp_min(1e-300), 0.0).to(first[n].dtype)
        union[n] = den > 0
    if sum(int(union[n].sum()) for n in names) > keep:
        budget = erk_counts({n: tuple(union[n].shape) for n in names}, keep)
        for n in names:
            flat = union[n].reshape(-1)
            if int(flat.sum()) > budget[n]:
                score = torch.where(flat, out[n].reshape(-1).abs(), -1.0)
                top = torch.topk(score, budget[n]).indices
                flat = torch.zeros_like(flat)
                flat[top] = True
                union[n] = flat.view_as(union[n])
    mask = Mask(union)
    return {n: out[n] * mask.float(n) for n in out}, mask


TASKS.add(READJUST, ClientTask(_readjust))


class FedDST(RoundRule):
    """FedDST's server side: every ``federate.readjust_every`` rounds (while ``alpha_t``
    is above zero) the clients readjust their masks, and the server merges them."""

    changes_mask = True
    MASKS = "feddst-masks"
    """Where a round's readjusted masks wait for the merge (``strategy.round_state``)."""

    def active(self, spec: FederateSpec) -> bool:
        return spec.readjust_every > 0

    def task(self, strategy: TicketStrategy, round_: int) -> tuple[str, float] | None:
        alpha = alpha_at(round_, strategy.spec)
        return (READJUST, alpha) if alpha > 0 else None

    def reply_flops(self, strategy: TicketStrategy, rep: Reply, ins: Instruction,
                    flops: int | None) -> int | None:
        """One more batch, its gradient dense."""
        if ins.task != READJUST or flops is None:
            return flops
        if strategy.dense_flops_per_example is None:
            return None
        bs = strategy.spec.batch_size
        last = rep.num_examples % bs or bs
        return flops + strategy.dense_flops_per_example * min(last, rep.num_examples)

    def decode(self, strategy: TicketStrategy, rep: Reply, ins: Instruction
               ) -> tuple[dict[str, torch.Tensor] | None, str | None] | None:
        if ins.task != READJUST:
            return None
        codec = strategy.codec
        try:
            mask, state = decode_readjusted(rep.payload, codec, codec.values)
        except FedticketError as e:
            return None, str(e)
        why = (check_readjusted(mask, codec.mask, strategy.prunable)
               or check_state(state, strategy.global_state, mask))
        if why is not None:
            return None, why
        strategy.round_state.setdefault(self.MASKS, {})[rep.client] = mask
        return state, None

    def combine(self, strategy: TicketStrategy, round_: int,
                instructions: Sequence[Instruction],
                usable: Sequence[tuple[Reply, dict[str, torch.Tensor]]]
                ) -> dict[str, torch.Tensor] | None:
        if not instructions or instructions[0].task != READJUST:
            return None
        masks = strategy.round_state.pop(self.MASKS, {})
        keep = sum(int(strategy.codec.mask[n].sum()) for n in strategy.prunable)
        new, mask = merge([(s, masks[rep.client], rep.num_examples) for rep, s in usable],
                          strategy.prunable, keep)
        strategy.set_mask(mask)
        return new


RULES.add("feddst", FedDST())
