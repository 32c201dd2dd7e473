"""FedPM: clients train a probability mask over frozen random weights (Isik et al., ICLR
2023, "Sparse Random Networks for Communication-Efficient Federated Learning").

As the authors' code does it (BerivanIsik/sparse-random-networks, ``src/fedssm``; the
settings and their lines are in docs/PEERS.md):

* **Frozen weights.** Every weight and bias of a convolution or linear layer is the
  signed constant ``+-c``, ``c = e * sqrt(1 / fan_in)`` (their ``ME_init``), and never
  trains. Here the signs are those of the run's seeded random init, so both ends rebuild
  them from the seed and no weight ever travels.
* **Scores.** Each of those entries has a score ``s``; ``sigmoid(s)`` is the
  probability that it is kept. The round-1 scores are standard normal, drawn from a seed
  that is the whole of the round-1 download. Every forward pass samples a mask
  ``m ~ Bernoulli(sigmoid(s))`` and uses the weights ``w * m``; the backward pass of the
  sample multiplies the gradient by ``p`` (their ``Bern.backward`` returns
  ``pvals * grad_output``). The client trains its scores with Adam (their hard-coded
  optimiser) at ``federate.lr`` for the run's local epochs and batch size.
* **Upload.** One mask sampled from ``sigmoid(s)``, entropy-coded
  (:mod:`fedticket.accounting.maskcode`, within a few bytes of ``n H(p)``).
* **Aggregation.** A Beta(1, 1) prior, reset every round (their ``reset_prior()``
  before each aggregation), updated with each client's bits smoothed to 0.01 and 0.99
  (their ``epsilon = 0.01``): the posterior's mode is the mean of the smoothed bits,
  ``theta = (0.99 c + 0.01 (K - c)) / K`` for ``c`` of ``K`` clients keeping an entry.
  The new scores are ``logit(theta)``.
* **Download.** The authors send ``logit(theta)`` as float32. It is exactly determined by
  ``K`` and the counts ``c``, so they travel instead, entropy-coded per tensor with the
  counts' own histogram (:func:`encode_counts`): the same scores at a fraction of the
  bytes. The ledger counts both directions.
* **Evaluation.** The global model is the frozen weights under one mask sampled from
  ``theta`` (their ``test_global_model(n_samples=1)``), from a seed fixed by the round.

The global state the strategy keeps holds the scores, in the scored tensors' places
(other tensors, BatchNorm's say, stay at their initial values and are not trained).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedticket.accounting import maskcode
from fedticket.accounting.wire import DOWNLOAD_CODES, UPLOAD_CODES
from fedticket.data import Labeled
from fedticket.errors import ConfigError, DivergenceError, FedticketError
from fedticket.federated.client import COMPUTE_PATHS, LocalTrainer, cpu_clock
from fedticket.federated.messages import Instruction, Memory, Reply
from fedticket.federated.rules import RULES, RoundRule
from fedticket.federated.tasks import TASKS, ClientTask

if TYPE_CHECKING:
    from fedticket.accounting.wire import Codec
    from fedticket.federated.strategy import TicketStrategy
    from fedticket.spec import FederateSpec

State = dict[str, torch.Tensor]

FEDPM = "fedpm"
"""The rule's name and its clients' task."""
EPSILON = 0.01
"""The authors' smoothing of an uploaded bit (0 -> 0.01, 1 -> 0.99)."""
SEEDED, COUNTS = 0x00, 0x01
"""Download tags: the round-1 scores' seed (8 bytes), or ``K`` and the counts."""


# ------------------------------------------------------------------ the network
def scored_names(names: Sequence[str], state: Mapping[str, torch.Tensor]) -> list[str]:
    """The tensors FedPM masks, in ``names``' order: every weight and bias of a layer
    whose weight has two or more dimensions (a convolution or linear layer; not a
    normalisation layer's)."""
    def layer_weight(n: str) -> torch.Tensor | None:
        return state.get(f"{n.rpartition('.')[0]}.weight")

    return [n for n in names if n.endswith((".weight", ".bias"))
            and (w := layer_weight(n)) is not None and w.dim() >= 2]


def frozen_weights(init: Mapping[str, torch.Tensor], names: Sequence[str]) -> State:
    """The signed constants ``sign(init) * e * sqrt(1 / fan_in)`` of each scored tensor
    (a bias takes its layer's ``c``; a zero of the init counts as positive)."""
    out: State = {}
    for n in names:
        layer = n.rpartition(".")[0]
        weight = init[f"{layer}.weight"]
        c = math.e * math.sqrt(1.0 / weight[0].numel())
        sign = torch.where(init[n] < 0, -1.0, 1.0).to(torch.float32)
        out[n] = sign * c
    return out


def initial_scores(seed: int, shapes: Mapping[str, Sequence[int]]) -> State:
    """The round-1 scores: standard normal, in ``shapes``' order, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(tuple(s), generator=g) for n, s in shapes.items()}


class _Bernoulli(torch.autograd.Function):
    """A Bernoulli sample of ``p`` whose backward pass multiplies the gradient by ``p``
    (the authors' ``Bern``)."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(p)
        return torch.bernoulli(p, generator=generator)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (p,) = ctx.saved_tensors
        return p * grad, None


def theta_of(counts: Mapping[str, torch.Tensor], clients: int) -> State:
    """The Beta(1, 1) posterior's mode after ``clients`` smoothed bits of which
    ``counts`` were ones: ``(0.99 c + 0.01 (K - c)) / K``."""
    return {n: (((1 - EPSILON) * c.double() + EPSILON * (clients - c.double())) / clients)
            .float() for n, c in counts.items()}


def logit(theta: torch.Tensor) -> torch.Tensor:
    return torch.log(theta / (1 - theta))


def sample_mask(scores: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict:
    """One mask drawn from ``sigmoid(scores)``, boolean."""
    return {n: torch.bernoulli(torch.sigmoid(s), generator=generator).bool()
            for n, s in scores.items()}


# ------------------------------------------------------------------------ wire
def encode_counts(counts: Sequence[np.ndarray], clients: int) -> bytes:
    """``K`` and each tensor's counts (integers in ``0 .. K``): per tensor the counts'
    histogram (``K + 1`` varints), then the ANS words of every tensor's counts under its
    own histogram (a tensor whose counts are all equal costs no words)."""
    import constriction

    header = bytearray([COUNTS]) + maskcode._varint(clients)
    coder = constriction.stream.stack.AnsCoder()
    plan = []
    for c in counts:
        c = np.asarray(c, dtype=np.int64).reshape(-1)
        if c.size and (c.min() < 0 or c.max() > clients):
            raise FedticketError(f"a count outside 0..{clients}")
        hist = np.bincount(c, minlength=clients + 1)
        for h in hist:
            header += maskcode._varint(int(h))
        plan.append((c, hist))
    for c, hist in reversed(plan):  # a stack: the last tensor goes in first
        if np.count_nonzero(hist) > 1:
            coder.encode_reverse(c.astype(np.int32), _count_model(hist))
    return bytes(header) + coder.get_compressed().astype("<u4").tobytes()


def _count_model(hist: np.ndarray):  # noqa: ANN202 - a constriction model
    import constriction

    return constriction.stream.model.Categorical(hist / hist.sum(), perfect=False)


def decode_counts(payload: bytes, sizes: Sequence[int]) -> tuple[list[np.ndarray], int]:
    """Inverse of :func:`encode_counts` for tensors of ``sizes`` entries."""
    import constriction

    if not payload or payload[0] != COUNTS:
        raise FedticketError("not a FedPM counts message")
    clients, pos = maskcode._read_varint(payload, 1)
    if clients < 1:
        raise FedticketError("a FedPM counts message from no clients")
    hists: list[np.ndarray] = []
    for size in sizes:
        freq: list[int] = []
        for _ in range(clients + 1):
            h, pos = maskcode._read_varint(payload, pos)
            freq.append(h)
        if sum(freq) != size:
            raise FedticketError("a FedPM counts histogram does not match its tensor")
        hists.append(np.array(freq, dtype=np.int64))
    body = payload[pos:]
    if len(body) % 4:
        raise FedticketError("FedPM counts body is not a whole number of words")
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(body, dtype="<u4")
                                                   .astype(np.uint32))
        out = []
        for size, hist in zip(sizes, hists, strict=True):
            if np.count_nonzero(hist) > 1:
                c = np.asarray(coder.decode(_count_model(hist), size), dtype=np.int64)
            else:
                c = np.full(size, int(np.argmax(hist)), dtype=np.int64)
            if not np.array_equal(np.bincount(c, minlength=clients + 1), hist):
                raise FedticketError("FedPM counts decode to another histogram")
            out.append(c)
    except FedticketError:
        raise
    except Exception as e:
        raise FedticketError(f"FedPM counts body is not valid: {e}") from None
    if not coder.is_empty():
        raise FedticketError("FedPM counts message has words left over")
    return out, clients


def scores_from_download(payload: bytes, shapes: Mapping[str, Sequence[int]]) -> State:
    """The scores a download stands for."""
    if payload[:1] == bytes([SEEDED]) and len(payload) == 9:
        return initial_scores(int.from_bytes(payload[1:], "little"), shapes)
    parts, clients = decode_counts(payload, [math.prod(s) for s in shapes.values()])
    counts = {n: torch.from_numpy(c).view(tuple(s))
              for (n, s), c in zip(shapes.items(), parts, strict=True)}
    return {n: logit(t) for n, t in theta_of(counts, clients).items()}


# ---------------------------------------------------------------------- client
def train_scores(trainer: LocalTrainer, scores: State, data: Labeled,
                 generator: torch.Generator) -> tuple[State, float, int]:
    """The scores after local training (Adam at ``federate.lr``, a mask sampled each
    forward pass), the mean loss and the steps taken."""
    spec, net = trainer.spec, trainer.net
    frozen = getattr(trainer, "fedpm_frozen", None)
    if frozen is None:
        init = dict(trainer.model.state_dict())
        frozen = frozen_weights(init, list(scores))
        trainer.fedpm_frozen = frozen  # type: ignore[attr-defined]
    params = {n: s.detach().clone().requires_grad_(True) for n, s in scores.items()}
    opt = torch.optim.Adam(list(params.values()), lr=spec.lr)
    net.train()
    n, bs = len(data), spec.batch_size
    total, steps = torch.zeros(()), 0
    for _ in range(spec.local_epochs):
        perm = torch.randperm(n, generator=generator)
        xs, ys = data.x[perm], data.y[perm]
        for i in range(0, n, bs):
            x, y = xs[i: i + bs], ys[i: i + bs]
            weights = {k: frozen[k] * _Bernoulli.apply(torch.sigmoid(s), generator)
                       for k, s in params.items()}
            loss = F.cross_entropy(functional_call(net, weights, (x,)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach() * len(y)
            steps += 1
    mean = float(total) / (n * spec.local_epochs)
    if not math.isfinite(mean):
        raise DivergenceError(f"client training diverged (loss {mean}); lower federate.lr")
    return {k: v.detach() for k, v in params.items()}, mean, steps


def _answer(trainer: LocalTrainer, codec: Codec, instruction: Instruction, data: Labeled,
            memory: Memory | None) -> Reply:
    """Train the scores the download stands for, upload one mask sampled from them."""
    started, started_cpu = time.perf_counter(), cpu_clock()
    names = scored_names(codec.names, trainer.model.state_dict())
    shapes = {n: tuple(codec.shapes[n]) for n in names}
    scores = scores_from_download(instruction.payload, shapes)
    g = torch.Generator().manual_seed(instruction.seed)
    trained, loss, _ = train_scores(trainer, scores, data, g)
    mask = sample_mask(trained, g)
    upload = maskcode.encode([mask[n].numpy() for n in names])
    flops = trainer.flops_per_sample * len(data) * trainer.spec.local_epochs
    return Reply(instruction.client, upload, len(data), loss, flops,
                 time.perf_counter() - started, cpu_clock() - started_cpu)


TASKS.add(FEDPM, ClientTask(_answer, dense=True))


# ---------------------------------------------------------------------- server
@dataclass(frozen=True)
class _Run:
    """What the server side of one run keeps (``strategy.rule_data``)."""

    names: list[str]
    frozen: State
    shapes: dict[str, tuple[int, ...]]
    seed: int


def aggregate_masks(masks: Sequence[Mapping[str, torch.Tensor]]) -> tuple[dict, int]:
    """Each entry's count of clients keeping it, and the number of clients."""
    first = masks[0]
    return ({n: sum(m[n].to(torch.int64) for m in masks) for n in first}, len(masks))


class FedPM(RoundRule):
    """FedPM's server side: its own download (a seed, then the counts), its clients'
    task, the Beta-posterior aggregation of their masks, and the sampled model that is
    scored."""

    STATE = "fedpm"
    """Where the strategy keeps the rule's numbers (``strategy.rule_meta``)."""

    def check(self, spec: FederateSpec) -> None:
        if (not COMPUTE_PATHS[spec.compute].mask_may_change
                or DOWNLOAD_CODES[spec.download].change
                or not UPLOAD_CODES[spec.upload].is_model):
            raise ConfigError("fedpm needs federate.compute = dense-masked, federate.download "
                              "= model and federate.upload = model (it sends its own masks)")

    def begin(self, strategy: TicketStrategy) -> None:
        if strategy.codec.sparse:
            raise ConfigError("fedpm learns a mask over the whole model: prune.strategy must "
                              "be none")
        state = strategy.global_state
        names = scored_names(strategy.codec.names, state)
        shapes = {n: tuple(state[n].shape) for n in names}
        seed = int(np.random.default_rng([strategy.seed, 0xF3D]).integers(2**63))
        strategy.rule_data[self.STATE] = _Run(names, frozen_weights(state, names), shapes,
                                              seed)
        strategy.global_state = dict(state) | initial_scores(seed, shapes)
        strategy.rule_meta.setdefault(self.STATE, {"clients": 0})

    def _run(self, strategy: TicketStrategy) -> _Run:
        return strategy.rule_data[self.STATE]

    def download(self, strategy: TicketStrategy) -> bytes:
        run, clients = self._run(strategy), strategy.rule_meta[self.STATE]["clients"]
        if not clients:
            return bytes([SEEDED]) + run.seed.to_bytes(8, "little")
        theta = {n: torch.sigmoid(strategy.global_state[n].double()) for n in run.names}
        counts = [torch.round((theta[n] * clients - EPSILON * clients) / (1 - 2 * EPSILON))
                  .to(torch.int64).numpy() for n in run.names]
        return encode_counts(counts, clients)

    def task(self, strategy: TicketStrategy, round_: int) -> tuple[str, float]:
        return FEDPM, 0.0

    def decode(self, strategy: TicketStrategy, rep: Reply, ins: Instruction
               ) -> tuple[State | None, str | None]:
        run = self._run(strategy)
        try:
            parts = maskcode.decode(rep.payload, list(run.shapes.values()))
        except FedticketError as e:
            return None, str(e)
        return {n: torch.from_numpy(p).float() for n, p in zip(run.names, parts,
                                                               strict=True)}, None

    def combine(self, strategy: TicketStrategy, round_: int,
                instructions: Sequence[Instruction], usable: Sequence[tuple[Reply, State]]
                ) -> State:
        names = self._run(strategy).names
        counts, clients = aggregate_masks([{n: s[n].bool() for n in names}
                                           for _, s in usable])
        strategy.rule_meta[self.STATE] = {"clients": clients}
        theta = theta_of(counts, clients)
        return dict(strategy.global_state) | {n: logit(theta[n]) for n in names}

    def model(self, strategy: TicketStrategy, state: State, round_: int) -> State:
        """The frozen weights under one mask sampled from the scores (seeded by the
        round)."""
        g = torch.Generator().manual_seed(int(np.random.default_rng(
            [strategy.seed, round_, 0xE7A]).integers(2**63)))
        run = self._run(strategy)
        mask = sample_mask({n: state[n] for n in run.names}, g)
        return dict(state) | {n: run.frozen[n] * mask[n] for n in run.names}


RULES.add(FEDPM, FedPM())
