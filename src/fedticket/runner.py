"""Stage orchestration: data -> model -> pretrain -> prune -> weights -> federate -> report.

The server stages live in :mod:`fedticket.stages` (cached), the run folder's life in
:mod:`fedticket.run_folder`. Which engine carries the federation (the in-process
simulator or a Flower deployment) is a parameter; the strategy, the costs and the run
folder are the same for both.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Protocol, TextIO

import torch

from fedticket import checkpoint, paths
from fedticket.accounting.wire import DOWNLOAD_CODES, Codec
from fedticket.data import Splits, load_splits
from fedticket.environment import cores, speed_probe
from fedticket.errors import DivergenceError, FedticketError
from fedticket.federated.client import LocalTrainer
from fedticket.federated.messages import Engine
from fedticket.federated.rules import mask_changes
from fedticket.federated.simulate import CLIENT_THREADS, local_engine
from fedticket.federated.strategy import TicketStrategy
from fedticket.flops import costs_report, layer_costs, train_flops_per_sample
from fedticket.io import atomic_write_json, git_commit, save_states, versions
from fedticket.models import build
from fedticket.pretrain.server import OBJECTIVES
from fedticket.pruning.mask import Mask
from fedticket.pruning.sources import MASK_SOURCES, ClientSearch, MaskSource
from fedticket.run_folder import MetricsWriter, Progress, in_run_folder
from fedticket.spec import ExperimentSpec
from fedticket.stages import (  # noqa: F401  (re-exported: the stages' public names)
    ServerStages,
    derived_seed,
    fresh_model,
    pretrain_and_prune,
    starting_weights,
    starts_from_seed,
)


class EngineFactory(Protocol):
    """Builds the engine of one run once the trainer, codec and data exist."""

    name: str
    min_replies: int
    clients_keep_state: bool
    """Whether what a client kept (the mask) survives a restart of the server's run."""

    def __call__(self, trainer: LocalTrainer, codec: Codec, splits: Splits) -> Engine: ...


class Simulator:
    """The default engine: the clients train on this machine, one torch thread each (the
    robust timing; ``client_threads`` is there to measure the alternative), in
    ``workers`` processes (1: in this one; :mod:`fedticket.federated.simulate`)."""

    name = "simulator"
    min_replies = 1
    clients_keep_state = True

    def __init__(self, workers: int = 1, client_threads: int = CLIENT_THREADS):
        self.workers, self.client_threads = workers, client_threads

    def __call__(self, trainer: LocalTrainer, codec: Codec, splits: Splits) -> Engine:
        return local_engine(trainer, codec, splits.clients, self.workers, self.client_threads)


def folder_name(spec: ExperimentSpec, engine: str) -> str:
    """``METHOD_sSEED_HASH`` for the simulator, with ``_ENGINE`` appended for any other."""
    return spec.run_name() if engine == "simulator" else f"{spec.run_name()}_{engine}"


def run_one(
    spec: ExperimentSpec, out: Path, stream: TextIO | None = sys.stderr, label: str = "",
    engine: EngineFactory | None = None,
) -> Path:
    """Run every stage of one (method, seed); return the finished run folder."""
    engine = engine or Simulator()
    name = folder_name(spec, engine.name)
    label = label or name
    return in_run_folder(
        out, name, lambda tmp: _run_into(spec, out, tmp, stream, label, engine), stream, label
    )


def _run_into(spec: ExperimentSpec, out: Path, folder: Path, stream: TextIO | None,
              label: str, engine: EngineFactory) -> None:
    """One run, step by step, into its temporary ``folder``."""
    started = time.perf_counter()
    _write_provenance(spec, folder, engine)
    if stream:
        print(f"{label}: data", file=stream, flush=True)
    labels = OBJECTIVES[spec.pretrain.kind].uses_labels
    splits = load_splits(spec.data, spec.seed, oracle_labels=labels)
    if stream:
        print(f"{label}: pretrain={spec.pretrain.kind} prune={spec.prune.strategy} "
              f"weights={spec.weights.init}", file=stream, flush=True)
    stages = pretrain_and_prune(spec, splits, out, stream)
    prelude = None
    source = MASK_SOURCES[spec.prune.strategy]
    if source.from_clients is not None:
        stages, prelude = _client_mask(source, spec, splits, stages, engine, folder, stream,
                                       label)
    stages.mask.save(folder / paths.MASK)
    model = fresh_model(spec, splits, "init")
    trainer = LocalTrainer(model, stages.mask, spec.federate, splits.input_shape)
    codec = Codec.of(stages.mask, spec.federate)
    state = starting_weights(spec, splits, stages)
    report = _write_cost_report(folder, stages, model, trainer, codec, state,
                                splits.input_shape)
    seeded = starts_from_seed(spec, splits, stages)
    strategy = TicketStrategy(
        codec, state, spec.federate, spec.seed, len(splits.clients),
        lambda s: trainer.evaluate(s, splits.test),
        min_replies=engine.min_replies, client_sizes=[len(c) for c in splits.clients],
        flops_per_example=trainer.flops_per_sample, prunable=stages.prunable,
        flops_fn=lambda m: train_flops_per_sample(layer_costs(model, splits.input_shape, m)),
        dense_flops_per_example=trainer.dense_flops_per_sample,
        seeded_init=seeded,
        clients_hold_start=seeded and all(
            torch.equal(state[k], v * stages.mask.float(k)) for k, v in stages.init.items()),
    )
    if prelude is not None:
        strategy.book_prelude(*prelude)
    after = _resume(folder, spec, strategy, engine, label)
    probe = speed_probe()  # this process's machine speed, just before it trains
    rows = _federate(folder, spec, strategy, engine(trainer, codec, splits), after, stream,
                     label, engine.clients_keep_state)
    save_states(folder / paths.FINAL, {"global": strategy.model_state(spec.federate.rounds)})
    if mask_changes(spec.federate):  # the mask the final model lives under
        strategy.codec.mask.save(folder / paths.MASK)
        stages = replace(stages, mask=strategy.codec.mask)
    # the checkpoint stays until the finished folder is in place (in_run_folder removes
    # it then): a kill before the rename resumes after the last round, not from round 0
    summary = _summary(spec, engine, trainer, stages, strategy, rows, after,
                       report.get("prunable_density", 1.0), time.perf_counter() - started)
    if probe is not None:
        summary["speed_probe_s"] = probe
    atomic_write_json(folder / paths.SUMMARY, summary)


def _client_mask(source: MaskSource, spec: ExperimentSpec, splits: Splits,
                 stages: ServerStages, engine: EngineFactory, folder: Path,
                 stream: TextIO | None, label: str) -> tuple[ServerStages, tuple | None]:
    """The mask the clients find before round 1 (the source's ``from_clients``), and
    what to book for it; a resumed run reads the mask it found before (its cost is in
    the checkpoint's ledger)."""
    if (folder / paths.CHECKPOINT).is_file() and (folder / paths.MASK).is_file():
        return replace(stages, mask=Mask.load(folder / paths.MASK)), None
    assert source.from_clients is not None
    say = (lambda m: print(f"{label}: {m}", file=stream, flush=True)) if stream else None
    found = source.from_clients(ClientSearch(spec, splits, fresh_model(spec, splits, "init"),
                                             stages.trained, stages.prunable, engine, say))
    return (replace(stages, mask=found.mask, log=stages.log | {"prune": found.log}),
            (found.records, found.failures, found.down_bytes))


def _write_provenance(spec: ExperimentSpec, folder: Path, engine: EngineFactory) -> None:
    """``spec.json``: the spec, its name and hash, the engine, the commit and versions."""
    atomic_write_json(folder / paths.SPEC, {
        "spec": spec.to_dict(),
        "run_name": spec.run_name(),
        "hash": spec.hash(),
        "nondefault": spec.nondefault(),
        "engine": engine.name,
        "git": git_commit(),
        "versions": versions(),
    })


def _write_cost_report(folder: Path, stages: ServerStages, model: torch.nn.Module,
                       trainer: LocalTrainer, codec: Codec, state: dict[str, torch.Tensor],
                       input_shape: tuple[int, int, int]) -> dict:
    """``mask_report.json``: what the mask keeps, the FLOPs per layer it leaves (against
    the dense ``model``'s) and the bytes one payload and the mask message take."""
    mask = stages.mask
    report = mask.report(stages.prunable)
    dense_costs = layer_costs(model, input_shape, None)
    report["flops"] = {
        "dense_train_flops_per_sample": train_flops_per_sample(dense_costs),
        "sparse_train_flops_per_sample": trainer.flops_per_sample,
        "layers": [
            layer | {"dense_train_flops": dense.train_flops}
            for layer, dense in zip(costs_report(trainer.costs), dense_costs, strict=True)
        ],
    }
    report["wire"] = {
        "payload_bytes": len(codec.encode(state)),
        "dense_payload_bytes": 4 * mask.numel,
        "mask_message_bytes": len(codec.encode_mask()),
    }
    atomic_write_json(folder / paths.MASK_REPORT, report)
    return report


def _resume(folder: Path, spec: ExperimentSpec, strategy: TicketStrategy,
            engine: EngineFactory, label: str) -> int | None:
    """Load the run's checkpoint into ``strategy``, if there is one: the round it was
    taken after, or None for a fresh start."""
    resumed = checkpoint.load(folder, spec.run_name())
    if resumed is None:
        return None
    after, global_state, meta = resumed
    strategy.load_state_dict(global_state, meta["strategy"])
    if not engine.clients_keep_state:  # a new Flower run: the nodes' state is new too
        strategy.has_mask.clear()
        strategy.holds.clear()
    note = ("" if meta.get("threads") == torch.get_num_threads() else
            f" (it was made with {meta.get('threads')} threads, this process has "
            f"{torch.get_num_threads()}: numbers may differ in the last digits)")
    print(f"{label}: resuming from the checkpoint after round {after}; the first "
          f"training round is {after + 1}{note}", file=sys.stderr, flush=True)
    return after


def _federate(folder: Path, spec: ExperimentSpec, strategy: TicketStrategy, carrier: Engine,
              after: int | None, stream: TextIO | None, label: str,
              keep_state: bool = True) -> list[dict]:
    """The federated rounds after ``after``, written and checkpointed as they end; the
    metrics rows of the whole run. ``keep_state``: the clients of a resumed run still
    hold what they held (the engine's ``clients_keep_state``)."""
    writer = MetricsWriter(folder, resume_after=after)
    memory = getattr(carrier, "memory", None)
    files = None if memory is None and not DOWNLOAD_CODES[spec.federate.download].change else \
        checkpoint.MemoryFiles(folder, {} if memory is None else memory, strategy.holds)
    if files is not None and after is not None:
        resumed = checkpoint.load(folder, spec.run_name())
        files.load(resumed[2].get("memory", {}) if resumed else {})
        if not keep_state:  # new nodes hold no model of the old run's
            strategy.holds.clear()
    saver = checkpoint.Checkpointer(folder, strategy, spec.run_name(),
                                    spec.federate.checkpoint_every, spec.federate.rounds,
                                    [writer], files)
    try:
        strategy.start(carrier, after=after, callbacks=[
            writer, saver, Progress(label, spec.federate.rounds, stream)])
    except DivergenceError as e:
        kept = f"; the checkpoint after round {saver.last} is kept in {folder}" if (
            saver.last is not None or after is not None) else ""
        raise DivergenceError(f"{e}{kept}") from None
    finally:
        writer.close()
        if hasattr(carrier, "close"):
            carrier.close()
    return writer.rows


def _summary(spec: ExperimentSpec, engine: EngineFactory, trainer: LocalTrainer,
             stages: ServerStages, strategy: TicketStrategy, rows: list[dict],
             after: int | None, prunable_density: float, wall_s: float) -> dict:
    """``summary.json``: the run's totals and its final and best accuracy."""
    mask = stages.mask
    last = rows[-1]
    best = max(rows, key=lambda r: r["test_accuracy"])
    summary = {
        "method": spec.method,
        "seed": spec.seed,
        "run_name": spec.run_name(),
        "engine": engine.name,
        "threads": torch.get_num_threads(),
        "workers": getattr(engine, "workers", None),
        "compute": trainer.compute,
        "mask_once": spec.federate.mask_once,
        "rounds": spec.federate.rounds,
        "final_accuracy": last["test_accuracy"],
        "final_loss": last["test_loss"],
        "best_accuracy": best["test_accuracy"],
        "best_round": best["round"],
        "density": mask.density,
        "prunable_density": prunable_density,
        "params": mask.numel,
        "nnz_params": mask.nnz,
        "total_down_bytes": last["cum_down_bytes"],
        "total_up_bytes": last["cum_up_bytes"],
        "total_mask_bytes": last["cum_mask_bytes"],
        "total_traffic_bytes": last["cum_down_bytes"] + last["cum_up_bytes"],
        "total_client_flops": last["cum_client_flops"],
        "total_client_wall_s": last["cum_client_wall_s"],
        "total_client_cpu_s": last["cum_client_cpu_s"],
        "failed_client_rounds": strategy.totals.failures,
        "server": stages.log,
        "run_wall_s": wall_s,
        "resumed_after_round": after,
    }
    if "cum_framework_bytes" in last:
        summary["total_framework_bytes"] = last["cum_framework_bytes"]
    return summary


def _job(specs: list[ExperimentSpec], out: Path, stream: bool, threads: int,
         workers: int) -> list[Path]:
    torch.set_num_threads(threads)
    return run_many(specs, out, sys.stderr if stream else None, precheck=False,
                    engine=Simulator(workers))


def client_workers(jobs: int, workers: int | None = None) -> int:
    """Simulator workers per run when ``jobs`` runs share the machine: ``workers``, or
    one per core of the run's share (``cores // jobs``, at least 1).

    Raises
    ------
    FedticketError
        If ``jobs`` or ``jobs * workers`` is more than the cores: the clients' CPU time
        is only robust when no two of them wait for one core.
    """
    if jobs > cores():
        raise FedticketError(f"--jobs {jobs} is more than the {cores()} cores: runs would "
                             "wait for a core and their client times would not be robust")
    if workers is None:
        return max(1, cores() // jobs)
    if workers < 1:
        raise FedticketError(f"--workers must be >= 1, got {workers}")
    if jobs * workers > cores():
        raise FedticketError(f"--jobs {jobs} x --workers {workers} needs {jobs * workers} "
                             f"cores; this machine has {cores()}")
    return workers


def run_parallel(
    specs: Sequence[ExperimentSpec], out: Path, jobs: int, stream: TextIO | None = sys.stderr,
    workers: int | None = None,
) -> list[Path]:
    """Run ``specs`` in ``jobs`` processes with ``cores // jobs`` torch threads each, the
    clients of each run in ``workers`` simulator processes (:func:`client_workers`).

    Runs that share a server stage (same seed, data, model and pretraining) wait for
    the first of them, which builds the stage cache; after that every run is its own
    task, handed to whichever process is free, so no process idles while another works
    through a long queue. Results are the same as :func:`run_many`'s at that thread
    count (the cache holds exactly what a run would compute).
    """
    workers = client_workers(jobs, workers)
    if jobs <= 1:
        return run_many(specs, out, stream, engine=Simulator(workers))
    check(specs)
    groups: dict[str, list[ExperimentSpec]] = {}
    for s in specs:
        groups.setdefault(f"{s.seed}-{s.stage_hash('data', 'model', 'pretrain')}", []).append(s)
    threads = max(1, cores() // jobs)
    if stream:
        print(f"{len(specs)} runs ({len(groups)} server stages) on {jobs} processes, "
              f"{threads} torch thread(s) each, clients in {workers} process(es) per run",
              file=stream, flush=True)
    ctx = multiprocessing.get_context("spawn")
    done: dict[ExperimentSpec, Path] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        heads = {pool.submit(_job, [g[0]], out, stream is not None, threads, workers): g
                 for g in groups.values()}
        rest: dict = {}
        for f in as_completed(heads):
            g = heads[f]
            done[g[0]] = f.result()[0]
            rest.update({pool.submit(_job, [s], out, stream is not None, threads, workers): s
                         for s in g[1:]})
        for f in as_completed(rest):
            done[rest[f]] = f.result()[0]
    return [done[s] for s in specs]


def check(specs: Sequence[ExperimentSpec]) -> None:
    """Load every distinct data setting and build every model once, so that a bad data
    file or model choice fails at once, not after hours of other runs."""
    for spec in {(s.data, s.model, s.seed): s for s in specs}.values():
        splits = load_splits(spec.data, spec.seed)
        build(spec.model, splits.input_shape, splits.num_classes)


def run_many(
    specs: Sequence[ExperimentSpec],
    out: Path,
    stream: TextIO | None = sys.stderr,
    on_done: Callable[[ExperimentSpec, Path], None] | None = None,
    engine: EngineFactory | None = None,
    precheck: bool = True,
) -> list[Path]:
    """Run every spec in order; return their run folders (bad data or models fail first,
    see :func:`check`)."""
    if precheck:
        check(specs)
    folders = []
    for i, spec in enumerate(specs, start=1):
        label = f"[{i}/{len(specs)}] {spec.method} seed {spec.seed}"
        folder = run_one(spec, out, stream, label, engine)
        folders.append(folder)
        if on_done:
            on_done(spec, folder)
    return folders
