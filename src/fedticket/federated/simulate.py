"""The simulator's engines: the sampled clients of a round train here, on one thread each.

A client's update is timed on one torch thread, as on a single-core device, so another
program on the machine cannot move its CPU time (:func:`~fedticket.federated.client.cpu_clock`).
:class:`LocalEngine` trains the clients one after another in this process;
:class:`ParallelEngine` spreads them over worker processes, one per core, and hands the
replies back in the order of the instructions, so the aggregate is the same bytes as
:class:`LocalEngine`'s. The payloads are real: each client decodes the global model's
bytes and encodes its upload, and both count in its time.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection

import torch

from fedticket.accounting.wire import Codec
from fedticket.data import Labeled
from fedticket.errors import FedticketError
from fedticket.federated.client import LocalTrainer
from fedticket.federated.messages import Failure, Instruction, Memory, Reply, memory_of
from fedticket.federated.strategy import Callback, TicketStrategy
from fedticket.federated.tasks import respond
from fedticket.pruning.mask import model_tensors
from fedticket.spec import FederateSpec

CLIENT_THREADS = 1
"""torch threads of a simulated client's update."""


@contextmanager
def threads(n: int) -> Iterator[None]:
    """torch runs on ``n`` threads inside the block, on as many as before after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def warm_up(trainer: LocalTrainer, data: Labeled, n: int = CLIENT_THREADS) -> None:
    """One untimed update on ``n`` threads, so the first timed one pays no start-up costs."""
    with threads(n):
        trainer.warm_up(trainer.from_net(model_tensors(trainer.net)), data)


class LocalEngine:
    """Trains the sampled clients in this process, one after another, each on
    ``client_threads`` torch threads."""

    name = "simulator"

    def __init__(self, trainer: LocalTrainer, codec: Codec, clients: Sequence[Labeled],
                 client_threads: int = CLIENT_THREADS):
        self.trainer, self.codec, self.clients = trainer, codec, clients
        self.client_threads = client_threads
        self.memory: Memory = {}
        """What the simulated clients keep between rounds (their residuals)."""

    def train_round(
        self, instructions: Sequence[Instruction]
    ) -> tuple[list[Reply], list[Failure]]:
        with threads(self.client_threads):
            replies = [respond(self.trainer, self.codec, ins, self.clients[ins.client],
                               self.memory) for ins in instructions]
        return replies, []

    def lost_state(self) -> set[int]:
        return set()  # in-process clients lose nothing

    def close(self) -> None:
        pass


def _serve(conn: Connection, trainer: LocalTrainer, codec: Codec,
           clients: Sequence[Labeled], client_threads: int) -> None:
    """A worker's loop: train the clients of each list of instructions it receives and
    send their replies back, until it receives ``None`` or its parent has gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(client_threads)
    try:
        warm_up(trainer, clients[0], client_threads)
        conn.send(("ready", None))
        while (got := conn.recv()) is not None:
            batch, memory = got  # the clients' kept state travels with their instructions
            try:
                replies = [respond(trainer, codec, ins, clients[ins.client], memory)
                           for ins in batch]
                conn.send(("ok", (replies, memory)))
            except FedticketError as e:  # a divergence: the run's error, not the worker's
                conn.send(("error", e))
            except Exception:
                conn.send(("bug", traceback.format_exc()))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the parent stopped: nothing is left to send


class ParallelEngine:
    """Trains the sampled clients of a round in ``workers`` forked processes, each on
    ``client_threads`` torch threads (one per core by default).

    The workers are forked after the trainer and the clients' data exist, so nothing but
    the instructions and the replies crosses a pipe. Clients go to the worker with the
    least data so far (a greedy split by partition size); the replies come back in the
    instructions' order, so aggregation sees exactly what :class:`LocalEngine` gives.
    Forking is safe here because the children run torch on one thread (as PyTorch's own
    DataLoader workers do). Call :meth:`close` (or use the engine as a context manager)
    to stop the workers.
    """

    name = "simulator"

    def __init__(self, trainer: LocalTrainer, codec: Codec, clients: Sequence[Labeled],
                 workers: int, client_threads: int = CLIENT_THREADS):
        if workers < 2:
            raise ValueError("ParallelEngine needs at least 2 workers; use LocalEngine")
        self.clients = clients
        self.memory: Memory = {}
        """What the simulated clients keep between rounds: it stays in this process and
        goes to whichever worker trains the client."""
        ctx = multiprocessing.get_context("fork")
        self.conns: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        try:
            for _ in range(workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, trainer, codec, clients,
                                                        client_threads), daemon=True)
                proc.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(proc)
            self._receive(self.conns)
        except BaseException:
            self.close()
            raise

    def _receive(self, conns: Sequence[Connection]) -> list[tuple[list[Reply], Memory]]:
        """Every worker's answer, read from all of them before any error is raised (so
        no answer is left in a pipe)."""
        answers = []
        for conn in conns:
            try:
                answers.append(conn.recv())
            except EOFError:
                answers.append(("died", None))
        for kind, body in answers:
            if kind == "died":
                raise FedticketError("a simulator worker process died (out of memory or "
                                     "killed); rerun to resume from the last checkpoint")
            if kind == "error":
                raise body
            if kind == "bug":
                raise RuntimeError(f"a simulator worker failed:\n{body}")
        return [body or ([], {}) for _, body in answers]

    def train_round(
        self, instructions: Sequence[Instruction]
    ) -> tuple[list[Reply], list[Failure]]:
        load = [0] * len(self.conns)
        batches: list[list[int]] = [[] for _ in self.conns]
        order = sorted(range(len(instructions)),
                       key=lambda i: -len(self.clients[instructions[i].client]))
        for i in order:
            w = load.index(min(load))
            batches[w].append(i)
            load[w] += len(self.clients[instructions[i].client])
        for conn, batch in zip(self.conns, batches, strict=True):
            mine = [instructions[i] for i in batch]
            conn.send((mine, memory_of(self.memory, {i.client for i in mine})))
        replies: dict[int, Reply] = {}
        for batch, (got, memory) in zip(batches, self._receive(self.conns), strict=True):
            replies.update(zip(batch, got, strict=True))
            self.memory.update(memory)
        return [replies[i] for i in range(len(instructions))], []

    def lost_state(self) -> set[int]:
        return set()

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.conns, self.procs = [], []

    def __enter__(self) -> ParallelEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def local_engine(trainer: LocalTrainer, codec: Codec, clients: Sequence[Labeled],
                 workers: int = 1, client_threads: int = CLIENT_THREADS
                 ) -> LocalEngine | ParallelEngine:
    """The simulator's engine for ``workers`` processes (1: this one), warmed up."""
    if workers > 1:
        return ParallelEngine(trainer, codec, clients, workers, client_threads)
    warm_up(trainer, clients[0], client_threads)
    return LocalEngine(trainer, codec, clients, client_threads)


def run_fedavg(
    trainer: LocalTrainer,
    codec: Codec,
    state: Mapping[str, torch.Tensor],
    clients: Sequence[Labeled],
    test: Labeled,
    spec: FederateSpec,
    seed: int,
    callbacks: Sequence[Callback] = (),
) -> dict[str, torch.Tensor]:
    """FedAvg for ``spec.rounds`` rounds from ``state`` in this process; return the final
    global state. Round 0 is the evaluation of the starting model (all costs zero)."""

    def evaluate_fn(s: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        return trainer.evaluate(s, test)

    strategy = TicketStrategy(codec, state, spec, seed, len(clients), evaluate_fn,
                              client_sizes=[len(c) for c in clients])
    engine = local_engine(trainer, codec, clients)
    try:
        return strategy.start(engine, callbacks)
    finally:
        engine.close()
