"""SSFL's mask: found before training from the clients' own gradient saliency.

Ohib et al. (SSFL, 2024) take SNIP's criterion (Lee et al. 2019) to the clients: every
client (``prune.snip_fraction = 1``) scores the initial model on one local batch
(``prune.snip_batches``) in eval mode, ``|dL/dw * w|`` for every weight, and uploads
the scores; the server adds them up unweighted (SSFL's code takes the plain mean over
clients, which ranks the same) and keeps the highest-scored weights over the prunable
tensors (global scope) at the run's sparsity. SSFL also prunes the classifier; here the
head stays dense as for every fedticket ticket (0.3% of the FedAvg CNN), so that all
masks are compared at one density. Then training
runs as for any fixed mask, from the initial weights.

Everything this costs is booked: each client asked downloads the dense initial model
and uploads a dense float32 score for every entry (the :class:`~fedticket.accounting.wire.Codec`
of the full mask), and the mask then goes to each client with its first training round,
as for every ticket. These costs belong to round 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from fedticket.accounting.wire import Codec
from fedticket.data import Labeled
from fedticket.errors import FedticketError
from fedticket.federated.aggregate import client_seed, sample_clients
from fedticket.federated.client import LocalTrainer, cpu_clock
from fedticket.federated.messages import ClientRecord, Engine, Failure, Instruction, Memory, Reply
from fedticket.federated.tasks import TASKS, ClientTask, client_for
from fedticket.federated.validate import check_reply_costs, check_reply_numbers, check_state
from fedticket.pruning.mask import Mask, load_tensors
from fedticket.pruning.sources import MASK_SOURCES, ClientMask, ClientSearch, MaskSource
from fedticket.pruning.strategies import prune_lowest

if TYPE_CHECKING:
    from fedticket.spec import FederateSpec

SALIENCY = "saliency"
"""The task of an :class:`~fedticket.federated.messages.Instruction` that asks for scores."""


def saliency_settings(federate: FederateSpec) -> FederateSpec:
    """What a client scores under: the dense model (full-size kernels), its payloads in
    float32 both ways, whatever the run's value and upload codes (the scores are not a
    model: rounding them to a model's code, or sending their change, means nothing)."""
    return replace(federate, compute="dense-masked", values="f32", upload="model",
                   download="model", error_feedback=False)


def snip_scores(trainer: LocalTrainer, state: Mapping[str, torch.Tensor], data: Labeled,
                batches: int, generator: torch.Generator) -> tuple[dict[str, torch.Tensor],
                                                                    float, int]:
    """``sum over batches of |dL_b/dw * w|`` for every tensor of ``state`` (zero for
    buffers), on the first ``batches`` batches of a shuffled ``data``; also the mean
    loss and the samples scored. ``trainer`` must train the dense model."""
    if trainer.compact is not None or trainer.sparse:
        raise FedticketError("client saliency needs the dense model (compute dense-masked)")
    net = trainer.net
    load_tensors(net, dict(state))
    net.eval()  # as SSFL scores (BatchNorm on its running statistics)
    params = dict(net.named_parameters())
    total = {n: torch.zeros_like(t) for n, t in state.items()}
    perm = torch.randperm(len(data), generator=generator)
    bs = trainer.spec.batch_size
    seen, loss_sum = 0, 0.0
    for b in range(batches):
        idx = perm[b * bs:(b + 1) * bs]
        if not len(idx):
            break
        net.zero_grad()
        loss = F.cross_entropy(net(data.x[idx]), data.y[idx])
        loss.backward()
        with torch.no_grad():
            for n, p in params.items():
                if p.grad is not None:
                    total[n] += (p.grad * p).abs()
        seen += len(idx)
        loss_sum += float(loss.detach()) * len(idx)
    net.zero_grad()
    return total, loss_sum / max(seen, 1), seen


def client_saliency(trainer: LocalTrainer, codec: Codec, instruction: Instruction,
                    data: Labeled, memory: Memory | None = None) -> Reply:
    """A client's answer to a saliency instruction: decode the initial model, score it
    on ``trainer.saliency_batches`` local batches, upload the scores (dense float32)."""
    start, start_cpu = time.perf_counter(), cpu_clock()
    received = codec.decode(instruction.payload)
    g = torch.Generator().manual_seed(instruction.seed)
    scores, loss, seen = snip_scores(trainer, received, data, trainer.saliency_batches, g)
    upload = codec.encode(scores)
    return Reply(instruction.client, upload, len(data), loss, trainer.flops_per_sample * seen,
                 time.perf_counter() - start, cpu_clock() - start_cpu)


def saliency_flops(trainer: LocalTrainer, size: int, batches: int) -> int:
    """The FLOPs :func:`client_saliency` costs a client of ``size`` examples."""
    return trainer.flops_per_sample * min(size, batches * trainer.spec.batch_size)


def client_saliency_mask(
    engine: Engine, codec: Codec, trainer: LocalTrainer, state: Mapping[str, torch.Tensor],
    names: Sequence[str], sparsity: float, fraction: float, client_sizes: Sequence[int],
    seed: int, batches: int, log: Callable[[str], None] | None = None,
) -> tuple[Mask, list[ClientRecord], list[Failure]]:
    """Ask ``fraction`` of the clients for their saliency of ``state``, sum the checked
    scores and keep the top ``1 - sparsity`` of ``names``. Returns the mask, the booked
    records (round 0) and the failures (charged their download)."""
    rng = np.random.default_rng([seed, 0x5A1])
    ids = sample_clients(len(client_sizes), fraction, rng)
    down = codec.encode(state)
    instructions = [Instruction(0, c, down, b"", client_seed(seed, 0, c), SALIENCY)
                    for c in ids]
    replies, failures = engine.train_round(instructions)
    failures = list(failures)
    total = {n: torch.zeros_like(t) for n, t in state.items()}
    records, seen = [], set()
    for rep in replies:
        if rep.client not in ids or rep.client in seen:
            failures.append(Failure(0, rep.client, "reply not asked for"))
            continue
        seen.add(rep.client)
        why = check_reply_numbers(rep.num_examples, rep.train_loss, client_sizes[rep.client])
        why = why or check_reply_costs(
            rep.flops, rep.wall_s, rep.cpu_s,
            saliency_flops(trainer, client_sizes[rep.client], batches), rep.elapsed_s)
        scores = None
        if why is None:
            try:
                scores = codec.decode(rep.payload)
            except FedticketError as e:
                why = str(e)
        if scores is not None:
            why = check_state(scores, state, codec.mask) or (
                None if all(bool((t >= 0).all()) for t in scores.values())
                else "saliency scores are negative")
        if why is not None or scores is None:
            failures.append(Failure(0, rep.client, f"rejected: {why}"))
            continue
        for n in total:
            total[n] += scores[n]
        records.append(ClientRecord(0, rep.client, rep.num_examples, len(down), 0,
                                    len(rep.payload), rep.flops, rep.wall_s, rep.cpu_s,
                                    rep.train_loss, rep.framework_down_bytes,
                                    rep.framework_up_bytes))
    if not records:
        raise FedticketError("no client sent usable saliency scores; the mask cannot be found")
    if log:
        log(f"saliency from {len(records)} clients ({len(failures)} lost)")
    full = Mask({n: torch.ones_like(t, dtype=torch.bool) for n, t in state.items()})
    return prune_lowest(total, full, list(names), sparsity, "global"), records, failures


TASKS.add(SALIENCY, ClientTask(client_saliency, saliency_settings, dense=True))


def find_on_clients(search: ClientSearch) -> ClientMask:
    """SSFL's prelude: ask the clients for their saliency of the starting weights on the
    run's engine, and keep the top-scored weights (:func:`client_saliency_mask`)."""
    spec, splits, model = search.spec, search.splits, search.model
    trainer, codec = client_for(SALIENCY, model, Mask.full(model), spec.federate,
                                splits.input_shape)
    trainer.saliency_batches = spec.prune.snip_batches
    carrier = search.engine(trainer, codec, splits)
    try:
        mask, records, failures = client_saliency_mask(
            carrier, codec, trainer, search.start, search.prunable, spec.prune.sparsity,
            spec.prune.snip_fraction, [len(c) for c in splits.clients], spec.seed,
            spec.prune.snip_batches, search.say)
    finally:
        if hasattr(carrier, "close"):
            carrier.close()
    log = {"levels": [{"level": 1, "density": mask.density}], "clients": len(records)}
    return ClientMask(mask, log, records, failures, len(codec.encode(search.start)))


MASK_SOURCES.add("snip", MaskSource(levels=False, from_clients=find_on_clients))
