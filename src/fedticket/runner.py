"""Stage orchestration: data -> model -> pretrain -> prune -> weights -> federate -> report.

A finished run folder is skipped; the pretrain and prune stages are cached under
``OUT/_cache`` by the hash of the spec sections they depend on, so methods that
share them (``fedavg-dae``, ``dae-ticket``, ``dae-ticket-rewind``) pretrain once.
A run is written into a hidden temporary folder and renamed into place only when
it is complete, so an interrupted run never leaves a half-written run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from fedticket import paths
from fedticket.accounting.flops import costs_report, layer_costs, train_flops_per_sample
from fedticket.accounting.wire import Codec
from fedticket.data import Splits, load_splits
from fedticket.errors import FedticketError
from fedticket.federated.client import LocalTrainer
from fedticket.federated.loop import RoundLog, run_fedavg
from fedticket.io import atomic_write_json, git_commit, load_states, save_states, versions
from fedticket.models import Classifier, build, prunable_names
from fedticket.pretrain.server import ServerTrainer
from fedticket.pruning import STRATEGIES, Mask, level_fraction, prune_lowest
from fedticket.spec import ExperimentSpec

State = dict[str, torch.Tensor]


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose (``"init"``, ``"pretrain"``, ...) derived from the run seed."""
    words = [seed, *purpose.encode()]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def fresh_model(spec: ExperimentSpec, splits: Splits, purpose: str) -> Classifier:
    """The classifier with the random init drawn for ``purpose`` (same seed, same weights)."""
    torch.manual_seed(derived_seed(spec.seed, purpose))
    return build(spec.model, splits.input_shape, splits.num_classes)


def _state(model: torch.nn.Module) -> State:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- stages
@dataclass
class ServerStages:
    """Output of pretrain + prune: the starting weights' sources and the mask."""

    init: State
    trained: State
    mask: Mask
    prunable: list[str]
    log: dict


def pretrain_and_prune(
    spec: ExperimentSpec, splits: Splits, out: Path, stream: TextIO | None = None
) -> ServerStages:
    """Run (or load from the cache) server pretraining and pruning for ``spec``."""
    model = fresh_model(spec, splits, "init")
    init = _state(model)
    names = prunable_names(
        model, include_head=spec.prune.include_head, include_biases=spec.prune.include_biases
    )
    kind, strategy = spec.pretrain.kind, spec.prune.strategy
    if kind == "none" and strategy == "none":
        return ServerStages(init, init, Mask.full(model), names, {"pretrain_kind": "none"})

    prune_file = paths.prune_cache(out, spec.stage_hash("data", "model", "pretrain", "prune"))
    if prune_file.is_file():
        cached = load_states(prune_file)
        cached_log = json.loads(prune_file.with_suffix(".json").read_text()) | {"cached": True}
        return ServerStages(init, cached["trained"], Mask(cached["mask"]), names, cached_log)

    log: dict = {"pretrain_kind": kind, "prune_strategy": strategy, "cached": False}
    trainer = _pretrain(spec, splits, model, out, log, stream) if kind != "none" else None

    mask = Mask.full(model)
    if strategy != "none":
        start = time.perf_counter()
        retrain_s, retrain_flops = (trainer.log.wall_s, trainer.log.flops) if trainer else (0, 0)
        g = torch.Generator().manual_seed(derived_seed(spec.seed, "prune"))
        fraction = level_fraction(spec.prune.sparsity, spec.prune.levels)
        levels = []
        for level in range(1, spec.prune.levels + 1):
            losses: list[float] = []
            if level > 1 and trainer is not None:
                losses = trainer.train(spec.prune.retrain_epochs, mask)
            scores = STRATEGIES[strategy](dict(model.named_parameters()), names, g)
            mask = prune_lowest(scores, mask, names, fraction, spec.prune.scope)
            levels.append({"level": level, "density": mask.density, "retrain_losses": losses})
        if trainer:
            retrain_s, retrain_flops = (trainer.log.wall_s - retrain_s,
                                        trainer.log.flops - retrain_flops)
        log["prune"] = {
            "levels": levels,
            "wall_s": time.perf_counter() - start,
            "retrain_wall_s": retrain_s,
            "retrain_flops": retrain_flops,
        }
    pre = log.get("pretrain", {})
    log["server_flops"] = pre.get("flops", 0) + log.get("prune", {}).get("retrain_flops", 0)
    log["server_wall_s"] = pre.get("wall_s", 0.0) + log.get("prune", {}).get("wall_s", 0.0)
    trained = _state(model)
    # the .json first: the .npz is the stage's completion marker
    atomic_write_json(prune_file.with_suffix(".json"), log)
    save_states(prune_file, {"trained": trained, "mask": dict(mask)})
    return ServerStages(init, trained, mask, names, log)


def _pretrain(
    spec: ExperimentSpec, splits: Splits, model: Classifier, out: Path, log: dict,
    stream: TextIO | None,
) -> ServerTrainer:
    """Pretrain ``model`` in place (or load the cached result); record the cost in ``log``."""
    kind = spec.pretrain.kind
    pool_y = splits.pool_labels if kind == "supervised" else None
    g = torch.Generator().manual_seed(derived_seed(spec.seed, "pretrain"))
    trainer = ServerTrainer(model, spec.pretrain, splits.pool.x, pool_y, g)
    if stream is not None:
        trainer.on_epoch = lambda epoch, loss: print(
            f"  server {kind} epoch {epoch}: loss {loss:.4f}", file=stream, flush=True
        )
    cache = paths.pretrain_cache(out, spec.stage_hash("data", "model", "pretrain"))
    if cache.is_file():
        # the whole trained net (a DAE keeps its decoder for retraining between levels)
        trainer.net.load_state_dict(load_states(cache)["net"])
        log["pretrain"] = json.loads(cache.with_suffix(".json").read_text()) | {"cached": True}
        return trainer
    probe = splits.pool.x[:512]
    before = trainer.reconstruction_loss(probe) if kind == "dae" else None
    trainer.train(spec.pretrain.epochs)
    pre = {
        "epoch_losses": trainer.log.epoch_losses,
        "wall_s": trainer.log.wall_s,
        "flops": trainer.log.flops,
        "samples": trainer.log.samples,
        "pool_size": len(splits.pool),
    }
    if kind == "dae":
        pre["clean_reconstruction_loss"] = {
            "before": before, "after": trainer.reconstruction_loss(probe)
        }
    atomic_write_json(cache.with_suffix(".json"), pre)
    save_states(cache, {"net": _state(trainer.net)})
    log["pretrain"] = pre | {"cached": False}
    return trainer


def starting_weights(
    spec: ExperimentSpec, splits: Splits, stages: ServerStages
) -> State:
    """The subnetwork federated training starts from (pruned entries exactly zero)."""
    if spec.weights.init == "pretrained":
        state = stages.trained
    elif spec.weights.init == "rewind":
        state = stages.init
    else:
        state = _state(fresh_model(spec, splits, "reinit"))
    return {k: v * stages.mask.float(k) for k, v in state.items()}


# ------------------------------------------------------------------------- callbacks
class MetricsWriter:
    """Appends one JSON line per evaluated round to ``metrics.jsonl`` and per client to
    ``clients.jsonl``."""

    def __init__(self, folder: Path):
        self.metrics = open(folder / paths.METRICS, "w")
        self.clients = open(folder / paths.CLIENTS, "w")
        self.rows: list[dict] = []

    def on_round(self, log: RoundLog) -> None:
        for rec in log.clients:
            self.clients.write(json.dumps(rec.__dict__) + "\n")
        if log.test_accuracy is not None:
            row = log.metrics()
            self.rows.append(row)
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()

    def close(self) -> None:
        self.metrics.close()
        self.clients.close()


class Progress:
    """Prints a line per evaluated round."""

    def __init__(self, label: str, rounds: int, stream: TextIO | None):
        self.label, self.rounds, self.stream = label, rounds, stream

    def on_round(self, log: RoundLog) -> None:
        if self.stream is None or log.test_accuracy is None:
            return
        t = log.totals
        print(
            f"  {self.label} round {log.round:>3}/{self.rounds}  acc {log.test_accuracy:.4f}  "
            f"traffic {(t.down_bytes + t.up_bytes) / 1e6:8.2f} MB  "
            f"client {t.client_flops / 1e9:8.2f} GFLOP {t.client_wall_s:7.2f} s",
            file=self.stream,
            flush=True,
        )


# ---------------------------------------------------------------------------- runs
def run_one(
    spec: ExperimentSpec, out: Path, stream: TextIO | None = sys.stderr, label: str = ""
) -> Path:
    """Run every stage of one (method, seed); return the finished run folder."""
    final = paths.run_dir(out, spec.run_name())
    label = label or spec.run_name()
    if final.exists():
        if paths.is_finished(final):
            if stream:
                print(f"{label}: finished already in {final}, skipped", file=stream)
            return final
        raise FedticketError(f"{final} exists but is not a finished run; move it away and rerun")
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out, spec.run_name())
    tmp = paths.tmp_run_dir(out, spec.run_name(), os.getpid())
    tmp.mkdir()
    try:
        _run_into(spec, out, tmp, stream, label)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _remove_stale_tmp(out: Path, run_name: str) -> None:
    """Delete temporary folders of this run left by processes that no longer exist."""
    for tmp, pid in paths.tmp_run_dirs(out, run_name):
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # another live process is writing this run
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(tmp, ignore_errors=True)


def _run_into(spec: ExperimentSpec, out: Path, folder: Path, stream: TextIO | None,
              label: str) -> None:
    started = time.perf_counter()
    provenance = {
        "spec": spec.to_dict(),
        "run_name": spec.run_name(),
        "hash": spec.hash(),
        "nondefault": spec.nondefault(),
        "git": git_commit(),
        "versions": versions(),
    }
    atomic_write_json(folder / paths.SPEC, provenance)
    if stream:
        print(f"{label}: data", file=stream, flush=True)
    splits = load_splits(spec.data, spec.seed, oracle_labels=spec.pretrain.kind == "supervised")
    if stream:
        print(f"{label}: pretrain={spec.pretrain.kind} prune={spec.prune.strategy} "
              f"weights={spec.weights.init}", file=stream, flush=True)
    stages = pretrain_and_prune(spec, splits, out, stream)
    mask = stages.mask
    mask.save(folder / paths.MASK)
    model = fresh_model(spec, splits, "init")
    trainer = LocalTrainer(model, mask, spec.federate, splits.input_shape)
    mask_report = mask.report(stages.prunable)
    dense_costs = layer_costs(model, splits.input_shape, None)
    mask_report["flops"] = {
        "dense_train_flops_per_sample": train_flops_per_sample(dense_costs),
        "sparse_train_flops_per_sample": trainer.flops_per_sample,
        "layers": [
            layer | {"dense_train_flops": dense.train_flops}
            for layer, dense in zip(costs_report(trainer.costs), dense_costs, strict=True)
        ],
    }
    codec = Codec(mask)
    state = starting_weights(spec, splits, stages)
    mask_report["wire"] = {
        "payload_bytes": len(codec.encode(state)),
        "dense_payload_bytes": 4 * mask.numel,
        "mask_message_bytes": len(codec.encode_mask()),
    }
    atomic_write_json(folder / paths.MASK_REPORT, mask_report)

    trainer.warm_up(state, splits.clients[0])
    writer = MetricsWriter(folder)
    try:
        run_fedavg(
            trainer, codec, state, splits.clients, splits.test, spec.federate, spec.seed,
            callbacks=[writer, Progress(label, spec.federate.rounds, stream)],
        )
    finally:
        writer.close()
    rows = writer.rows
    last = rows[-1]
    best = max(rows, key=lambda r: r["test_accuracy"])
    summary = {
        "method": spec.method,
        "seed": spec.seed,
        "run_name": spec.run_name(),
        "rounds": spec.federate.rounds,
        "final_accuracy": last["test_accuracy"],
        "final_loss": last["test_loss"],
        "best_accuracy": best["test_accuracy"],
        "best_round": best["round"],
        "density": mask.density,
        "prunable_density": mask_report.get("prunable_density", 1.0),
        "params": mask.numel,
        "nnz_params": mask.nnz,
        "total_down_bytes": last["cum_down_bytes"],
        "total_up_bytes": last["cum_up_bytes"],
        "total_mask_bytes": last["cum_mask_bytes"],
        "total_traffic_bytes": last["cum_down_bytes"] + last["cum_up_bytes"],
        "total_client_flops": last["cum_client_flops"],
        "total_client_wall_s": last["cum_client_wall_s"],
        "server": stages.log,
        "run_wall_s": time.perf_counter() - started,
    }
    atomic_write_json(folder / paths.SUMMARY, summary)


def run_many(
    specs: Sequence[ExperimentSpec],
    out: Path,
    stream: TextIO | None = sys.stderr,
    on_done: Callable[[ExperimentSpec, Path], None] | None = None,
) -> list[Path]:
    """Run every spec in order; return their run folders.

    Every distinct data and model setting is loaded and built first, so that a bad
    data file or model choice fails at once, not after hours of other runs.
    """
    for spec in {(s.data, s.model, s.seed): s for s in specs}.values():
        splits = load_splits(spec.data, spec.seed)
        build(spec.model, splits.input_shape, splits.num_classes)
    folders = []
    for i, spec in enumerate(specs, start=1):
        label = f"[{i}/{len(specs)}] {spec.method} seed {spec.seed}"
        folder = run_one(spec, out, stream, label)
        folders.append(folder)
        if on_done:
            on_done(spec, folder)
    return folders
