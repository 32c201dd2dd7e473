"""The FedAvg-on-a-subnetwork algorithm with no engine in it.

Shaped like Flower's message-API ``Strategy``: :meth:`TicketStrategy.configure_round`
says which clients train and what bytes each one receives, :meth:`aggregate_round`
turns their replies into the next global model and the cost ledger, and
:meth:`evaluate` scores the global model on the server's test set.
:meth:`TicketStrategy.start` owns the one round loop; an :class:`Engine` carries
the instructions to clients and brings back their replies. The in-process simulator
(:mod:`fedticket.federated.simulate`) and the Flower ServerApp
(:mod:`fedticket.flower.server_app`) are two such engines driving the same object.

Everything that crosses the network is the run's :class:`~fedticket.accounting.wire.Codec`
payload, so the bytes counted are the same whichever engine carries them.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import numpy as np
import torch

from fedticket.accounting.wire import DOWNLOAD_CODES, Codec
from fedticket.errors import DivergenceError, FedticketError
from fedticket.federated.aggregate import (
    AGGREGATORS,
    client_seed,
    norm_bounds,
    sample_clients,
)
from fedticket.federated.messages import (
    ClientRecord,
    Engine,
    Failure,
    Instruction,
    Memory,
    Reply,
)
from fedticket.federated.rules import rules_for, task_of
from fedticket.federated.validate import check_reply_costs, check_reply_numbers, check_state
from fedticket.pruning.mask import Mask
from fedticket.spec import FederateSpec

State = dict[str, torch.Tensor]

SEED_BYTES = 8
"""What a download of starting weights reproducible from the run's seed costs under
``federate.init_bytes = seed``: the seed, a 64-bit integer."""


@dataclass
class Totals:
    """Cumulative client-side costs since round 0.

    ``down_bytes`` counts model payloads *and* mask messages (everything a client
    downloads); ``mask_bytes`` is the mask part of it.
    """

    down_bytes: int = 0
    up_bytes: int = 0
    mask_bytes: int = 0
    client_flops: int = 0
    client_wall_s: float = 0.0
    client_cpu_s: float = 0.0
    framework_bytes: int | None = None
    failures: int = 0

    def add(self, rec: ClientRecord) -> None:
        self.down_bytes += rec.down_bytes + rec.mask_bytes
        self.mask_bytes += rec.mask_bytes
        self.up_bytes += rec.up_bytes
        self.client_flops += rec.flops
        self.client_wall_s += rec.wall_s
        self.client_cpu_s += rec.cpu_s
        if rec.framework_down_bytes is not None and rec.framework_up_bytes is not None:
            self.framework_bytes = (
                (self.framework_bytes or 0) + rec.framework_down_bytes + rec.framework_up_bytes
            )


@dataclass(frozen=True)
class RoundLog:
    """What a round did; ``test_*`` are None on rounds that are not evaluated."""

    round: int
    clients: Sequence[ClientRecord]
    totals: Totals
    test_accuracy: float | None
    test_loss: float | None
    train_loss: float | None = None
    failures: Sequence[Failure] = field(default_factory=tuple)
    wall_s: float | None = None
    """Wall time of the whole round on the server: configure, carry, aggregate, evaluate."""

    def metrics(self) -> dict:
        """The row of ``metrics.jsonl`` for an evaluated round."""
        row = {
            "round": self.round,
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
            "train_loss": self.train_loss,
            "clients": len(self.clients),
            "cum_down_bytes": self.totals.down_bytes,
            "cum_up_bytes": self.totals.up_bytes,
            "cum_mask_bytes": self.totals.mask_bytes,
            "cum_client_flops": self.totals.client_flops,
            "cum_client_wall_s": round(self.totals.client_wall_s, 6),
            "cum_client_cpu_s": round(self.totals.client_cpu_s, 6),
        }
        if self.totals.framework_bytes is not None:
            row["cum_framework_bytes"] = self.totals.framework_bytes
        if self.totals.failures:
            row["cum_failures"] = self.totals.failures
        if self.wall_s is not None:
            row["round_wall_s"] = round(self.wall_s, 6)
        return row


class Callback(Protocol):
    def on_round(self, log: RoundLog) -> None: ...


class TicketStrategy:
    """FedAvg on a fixed subnetwork, with the state the round loop needs.

    Parameters
    ----------
    codec : Codec
        The run's wire format (it holds the mask).
    state : mapping of tensors
        The starting global model; pruned entries must be zero.
    spec : FederateSpec
        Rounds, client fraction, evaluation schedule.
    seed : int
        Run seed: fixes the sampling sequence and every client's batch order.
    num_clients : int
        Client (partition) ids are ``0 .. num_clients - 1``.
    evaluate_fn : callable
        ``state -> (accuracy, loss)`` on the server's test set.
    min_replies : int
        A round with fewer usable replies than this stops the run.
    client_sizes : sequence of int, optional
        Each client's partition size, when the server knows it: a reply must report
        exactly that many examples.
    flops_per_example : int, optional
        Training FLOPs of one example under the mask (one forward and backward pass):
        a reply must report exactly ``flops_per_example * examples * local_epochs``.
        Seconds are only checked to be finite and non-negative.
    prunable, flops_fn, dense_flops_per_example : optional
        For a mask that changes (a round rule's, e.g. FedDST's): the tensors it may change,
        the training FLOPs of an example under a mask, and on the dense model.
    seeded_init : bool
        ``state`` is reproducible from the run's seed and the run books it so
        (``federate.init_bytes = seed``): a download of it while it is unchanged (round
        1, a prelude) is booked as :data:`SEED_BYTES`, not its payload's length.
    clients_hold_start : bool
        Besides, ``state`` is the initial weights of the clients' own model, so a client
        rebuilds it: under ``download = change`` or ``topk`` a client that holds no
        download is sent the change from it, not the model.
    """

    def __init__(
        self,
        codec: Codec,
        state: Mapping[str, torch.Tensor],
        spec: FederateSpec,
        seed: int,
        num_clients: int,
        evaluate_fn: Callable[[State], tuple[float, float]],
        min_replies: int = 1,
        client_sizes: Sequence[int] | None = None,
        flops_per_example: int | None = None,
        prunable: Sequence[str] = (),
        flops_fn: Callable[[Mask], int] | None = None,
        dense_flops_per_example: int | None = None,
        seeded_init: bool = False,
        clients_hold_start: bool = False,
    ):
        self.flops_per_example = flops_per_example
        self.prunable = list(prunable)
        """The tensors a FedDST readjustment may change."""
        self.flops_fn, self.dense_flops_per_example = flops_fn, dense_flops_per_example
        self.rules = rules_for(spec)
        """The round rules this run uses (:mod:`fedticket.federated.rules`)."""
        self.mask_changes = any(rule.changes_mask for rule in self.rules)
        self.round_state: dict = {}
        """What rules keep within a round (cleared when it is aggregated)."""
        self.codec, self.spec, self.seed = codec, spec, seed
        self.client_sizes = None if client_sizes is None else list(client_sizes)
        self.num_clients = num_clients
        self.evaluate_fn = evaluate_fn
        self.min_replies = min_replies
        self.rng = np.random.default_rng([seed, 0xFED])
        self.has_mask: set[int] = set()
        self.holds: Memory = {}
        """``download = change``: ``holds-7``, the kept values client 7 holds (its last
        download that it answered)."""
        self._sending: dict[int, np.ndarray] = {}  # what this round's clients will hold
        self._decoded: tuple[bytes, np.ndarray] | None = None  # this round's model, decoded
        self.reached: set[float] = set()
        self.totals = Totals()
        self.mask_msg = codec.encode_mask()
        self.global_state = codec.decode(codec.encode(state))
        self._kept_cache: tuple[State, np.ndarray] | None = None
        self.prelude: tuple[list[ClientRecord], list[Failure]] = ([], [])
        self.seeded_init = seeded_init
        """The global model is still the seeded starting model (nothing aggregated yet)."""
        self._booked: dict[int, int] = {}  # this round's downloads booked as a seed
        self.rule_data: dict = {}
        """What rules keep for the run (rebuilt by :meth:`RoundRule.begin`)."""
        self.rule_meta: dict = {}
        """What rules keep for the run that a checkpoint saves (JSON)."""
        for rule in self.rules:
            rule.begin(self)
        self._init_kept = (self.codec.kept(self.global_state) if clients_hold_start and
                           DOWNLOAD_CODES[spec.download].change else None)
        """The seeded starting model's values, which every client can rebuild: a client
        that holds nothing else is sent the change from them."""

    def book_prelude(self, records: Sequence[ClientRecord], failures: Sequence[Failure],
                     lost_down_bytes: int) -> None:
        """Book client work done before round 1 (the clients' saliency for a ``snip``
        mask) in the ledger; round 0's row then shows it. A lost client is charged
        ``lost_down_bytes`` (what it was sent). A download of the seeded starting model
        is booked as its seed (``seeded_init``)."""
        if self.seeded_init:
            records = [replace(rec, down_bytes=min(SEED_BYTES, rec.down_bytes))
                       for rec in records]
            lost_down_bytes = min(SEED_BYTES, lost_down_bytes)
        for rec in records:
            self.totals.add(rec)
        self.totals.down_bytes += lost_down_bytes * len(failures)
        self.totals.failures += len(failures)
        self.prelude = (list(records), list(failures))

    # ------------------------------------------------------------------ hooks
    def configure_round(self, round_: int) -> list[Instruction]:
        """Sample this round's clients; each gets the global payload and the mask message:
        on its first round only (``mask_once``), or every time (stateless clients)."""
        ids = sample_clients(self.num_clients, self.spec.client_fraction, self.rng)
        down = next((d for rule in self.rules if (d := rule.download(self)) is not None),
                    None)
        if down is None:
            down = self.codec.encode(self.global_state)
        task, alpha = task_of(self, round_)
        out = []
        self._sending.clear()
        self._booked.clear()
        for cid in ids:
            held = self.spec.mask_once and cid in self.has_mask
            mask = b"" if held else self.mask_msg
            payload, delta, from_start = self._download(cid, down)
            if self.seeded_init and not delta:
                self._booked[cid] = min(SEED_BYTES, len(payload))
            out.append(Instruction(round_, cid, payload, mask,
                                   client_seed(self.seed, round_, cid), task, alpha, delta,
                                   from_start))
        return out

    def _download(self, cid: int, down: bytes) -> tuple[bytes, bool, bool]:
        """What client ``cid`` downloads: the model payload ``down``, or under ``download
        = change`` the change from what it holds (and what it will then hold); whether it
        is a change, and one from the seeded start the client rebuilds."""
        part = DOWNLOAD_CODES[self.spec.download]
        if not part.change:
            return down, False, False
        holds = self.holds.get(f"holds-{cid}")
        from_start = holds is None and not self.seeded_init and self._init_kept is not None
        if from_start:
            holds = self._init_kept  # every client can rebuild the seeded start
        if holds is None:  # the whole model: decoded once a round, shared (never mutated)
            if self._decoded is None or self._decoded[0] is not down:
                self._decoded = (down, self.codec.decode_values(down))
            self._sending[cid] = self._decoded[1]
            return down, False, False
        payload = part.encode(self.codec, self._global_kept - holds)
        self._sending[cid] = (holds + part.decode(self.codec, payload)).astype(np.float32)
        return payload, True, from_start

    def set_mask(self, mask: Mask) -> None:
        """From now on the global model lives under ``mask`` (FedDST's merged mask): the
        next download of every client carries it."""
        self.codec = Codec.of(mask, self.spec)
        self.mask_msg = self.codec.encode_mask()
        self.has_mask.clear()
        self.holds.clear()
        self._kept_cache = None
        if self.flops_fn is not None:
            self.flops_per_example = self.flops_fn(mask)

    def aggregate_round(
        self, round_: int, instructions: Sequence[Instruction], replies: Sequence[Reply],
        failures: Sequence[Failure] = (),
    ) -> RoundLog:
        """Decode the replies, average them into the new global model, book the costs.

        A client that failed is charged its download (it was sent) but not an upload,
        and it is not marked as holding the mask.
        """
        sent = {i.client: i for i in instructions}
        failed = list(failures)
        usable: list[tuple[Reply, State]] = []
        seen: set[int] = set()
        for rep in replies:
            if rep.client not in sent or rep.client in seen:
                failed.append(Failure(round_, rep.client, "a second reply" if rep.client in seen
                                      else "reply from a client not sampled"))
                continue
            seen.add(rep.client)
            expected = None if self.client_sizes is None else self.client_sizes[rep.client]
            state, why = self._check(rep, expected, sent[rep.client])
            if state is None:
                failed.append(Failure(round_, rep.client, f"rejected: {why}"))
                continue
            usable.append((rep, state))
        whys = norm_bounds([state for _, state in usable], self.global_state,
                           self.spec.max_update_norm, self.spec.norm_factor)
        failed += [Failure(round_, rep.client, f"rejected: {why}")
                   for (rep, _), why in zip(usable, whys, strict=True) if why]
        usable = [u for u, why in zip(usable, whys, strict=True) if why is None]
        records = []
        for rep, _ in usable:
            ins = sent[rep.client]
            self.has_mask.add(rep.client)
            records.append(ClientRecord(
                round_, rep.client, rep.num_examples, self._down_bytes(ins), len(ins.mask),
                len(rep.payload), rep.flops, rep.wall_s, rep.cpu_s, rep.train_loss,
                rep.framework_down_bytes, rep.framework_up_bytes,
            ))
        for rec in records:  # what a client that answered now holds
            if rec.client in self._sending:
                self.holds[f"holds-{rec.client}"] = self._sending[rec.client]
        for f in failed:  # one that did not may or may not hold its download
            self.holds.pop(f"holds-{f.client}", None)
        self._sending.clear()
        for f in failed:
            lost = sent.get(f.client)
            if lost is not None:
                self.totals.down_bytes += self._down_bytes(lost) + len(lost.mask)
                self.totals.mask_bytes += len(lost.mask)
        self.totals.failures += len(failed)
        if len(usable) < self.min_replies:
            raise FedticketError(
                f"round {round_}: {len(usable)} usable replies, fewer than the minimum "
                f"{self.min_replies} ({'; '.join(f.reason for f in failed) or 'none came'})"
            )
        for rec in records:
            self.totals.add(rec)
        new = None
        for rule in self.rules:
            new = rule.combine(self, round_, instructions, usable)
            if new is not None:
                break
        if new is None:
            new = self.aggregate([(s, rep.num_examples) for rep, s in usable])
        self.round_state.clear()
        if not all(bool(torch.isfinite(t).all()) for t in new.values()):
            raise DivergenceError(f"round {round_}: the aggregated model has weights that are "
                                  "not finite; lower federate.lr")
        self.global_state = new
        self.seeded_init = False
        self._booked.clear()
        for rule in self.rules:
            rule.end_round(self, round_)
        n = sum(rec.num_examples for rec in records)
        train_loss = sum(rec.train_loss * rec.num_examples for rec in records) / n
        return RoundLog(round_, records, replace(self.totals), None, None, train_loss, failed)

    def _down_bytes(self, ins: Instruction) -> int:
        """The bytes booked for the model payload of ``ins``: its length, or the seed's
        when it is the seeded starting model."""
        return self._booked.get(ins.client, len(ins.payload))

    def _check(self, rep: Reply, expected: int | None, ins: Instruction
               ) -> tuple[State | None, str | None]:
        """The decoded update of ``rep``, or None and why it may not be aggregated (a
        rule reads the uploads of its own tasks: :meth:`RoundRule.decode`)."""
        why = check_reply_numbers(rep.num_examples, rep.train_loss, expected)
        if why is None:
            flops = (None if self.flops_per_example is None else
                     self.flops_per_example * rep.num_examples * self.spec.local_epochs)
            for rule in self.rules:
                flops = rule.reply_flops(self, rep, ins, flops)
            why = check_reply_costs(rep.flops, rep.wall_s, rep.cpu_s, flops, rep.elapsed_s)
        if why is not None:
            return None, why
        for rule in self.rules:
            read = rule.decode(self, rep, ins)
            if read is not None:
                return read
        try:
            state = self.decode_upload(rep.payload)
        except FedticketError as e:
            return None, str(e)
        why = check_state(state, self.global_state, self.codec.mask)
        return (None, why) if why is not None else (state, None)

    def decode_upload(self, payload: bytes) -> State:
        """The model an upload stands for: decoded, or the global model plus the change
        it carries."""
        if self.codec.update.is_model:
            return self.codec.decode(payload)
        change = self.codec.update.decode(payload)
        if not np.isfinite(change).all():
            raise FedticketError("update holds values that are not finite")
        return self.codec.from_kept(self._global_kept + change)

    @property
    def _global_kept(self) -> np.ndarray:
        if self._kept_cache is None or self._kept_cache[0] is not self.global_state:
            self._kept_cache = (self.global_state, self.codec.kept(self.global_state))
        return self._kept_cache[1]

    def aggregate(self, updates: list[tuple[State, int]]) -> State:
        """The new global model from the checked updates (``spec.aggregation``)."""
        return AGGREGATORS[self.spec.aggregation](updates, self.spec.trim_fraction)

    def evaluate(self, round_: int) -> tuple[float, float] | None:
        """Score the global model: every round until each declared target
        (``spec.targets``) has been reached, then on the ``eval_every`` schedule and at
        the last round. Until the targets are reached every round is scored, so the first
        round at or above each target is exact whatever ``eval_every`` is."""
        pending = any(t not in self.reached for t in self.spec.targets)
        if not pending and round_ % self.spec.eval_every and round_ != self.spec.rounds:
            return None
        scores = self.evaluate_fn(self.model_state(round_))
        self.reached.update(t for t in self.spec.targets if scores[0] >= t)
        return scores

    def model_state(self, round_: int) -> State:
        """The model the global state stands for after ``round_`` (itself, unless a rule
        keeps something else: FedPM's scores stand for a sampled mask of frozen
        weights)."""
        for rule in self.rules:
            model = rule.model(self, self.global_state, round_)
            if model is not None:
                return model
        return self.global_state

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> tuple[State, dict]:
        """Everything the next round depends on: the global model, and as plain JSON the
        sampling generator, who holds the mask, the targets reached and the ledger."""
        meta = {
            "mask": base64.b64encode(self.mask_msg).decode() if self.mask_changes
            else None,
            "rng": self.rng.bit_generator.state,
            "has_mask": sorted(self.has_mask),
            "reached": sorted(self.reached),
            "totals": asdict(self.totals),
            "seeded_init": self.seeded_init,
            "rule_meta": self.rule_meta,
        }
        return {k: v.clone() for k, v in self.global_state.items()}, meta

    def load_state_dict(self, state: Mapping[str, torch.Tensor], meta: dict) -> None:
        """Inverse of :meth:`state_dict`."""
        if set(state) != set(self.global_state):
            raise FedticketError("the checkpoint holds another model's tensors")
        if meta.get("mask"):  # a mask that changed during training
            self.set_mask(self.codec.decode_mask(base64.b64decode(meta["mask"])))
        self.global_state = {k: v.clone() for k, v in state.items()}
        self.rng.bit_generator.state = meta["rng"]
        self.has_mask = set(meta["has_mask"])
        self.reached = {float(t) for t in meta["reached"]}
        self.totals = Totals(**meta["totals"])
        self.seeded_init = bool(meta.get("seeded_init", False))
        self.rule_meta = dict(meta.get("rule_meta", {}))

    # ------------------------------------------------------------------- loop
    def start(self, engine: Engine, callbacks: Sequence[Callback] = (),
              after: int | None = None) -> State:
        """Round 0 (the starting model, all costs zero), then ``spec.rounds`` rounds; or,
        resuming from a checkpoint taken after round ``after`` (0 included: round 0 is
        not scored again), the rounds after it."""

        def emit(log: RoundLog, started: float) -> None:
            scores = self.evaluate(log.round)
            if scores is not None:
                log = replace(log, test_accuracy=scores[0], test_loss=scores[1])
            log = replace(log, wall_s=time.perf_counter() - started)
            for cb in callbacks:
                cb.on_round(log)

        if after is None:
            records, failures = self.prelude
            emit(RoundLog(0, records, replace(self.totals), None, None, failures=failures),
                 time.perf_counter())
        for r in range((after or 0) + 1, self.spec.rounds + 1):
            started = time.perf_counter()
            lost = engine.lost_state()
            self.has_mask -= lost
            for cid in lost:
                self.holds.pop(f"holds-{cid}", None)
            instructions = self.configure_round(r)
            replies, failures = engine.train_round(instructions)
            emit(self.aggregate_round(r, instructions, replies, failures), started)
        return self.global_state
