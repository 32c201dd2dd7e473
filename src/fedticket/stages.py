"""Server-side stages: pretrain, prune, and the weights federated training starts from.

The pretrain and prune stages are cached under ``OUT/_cache`` by the hash of the spec
sections they depend on, so methods that share them (``fedavg-dae``, ``dae-ticket``,
``dae-ticket-rewind``) pretrain once, whichever engine runs the federation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from fedticket import paths
from fedticket.data import Splits
from fedticket.flops import layer_costs
from fedticket.io import atomic_write_json, load_states, save_states
from fedticket.models import Classifier, build, prunable_names
from fedticket.pretrain.server import OBJECTIVES, ServerTrainer
from fedticket.pruning import Mask, level_fraction
from fedticket.pruning.mask import load_tensors, model_tensors
from fedticket.pruning.masked import apply_mask, recalibrate_batchnorm
from fedticket.pruning.sources import MASK_SOURCES, Level
from fedticket.pruning.structured import STRUCTURES, fraction_to_reach
from fedticket.spec import ExperimentSpec, PruneSpec
from fedticket.weights import WEIGHT_INITS, Start, fanin_scaled  # noqa: F401  (re-exported)

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
    """A copy of the tensors of ``model`` that travel (parameters, BatchNorm statistics)."""
    return {k: v.detach().clone() for k, v in model_tensors(model).items()}


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
    source = MASK_SOURCES[strategy]
    trains = OBJECTIVES[kind].net is not None
    cuts = STRUCTURES[spec.prune.structure].cut is not None
    if not trains and not cuts and source.level is None:  # no server work (or the
        # clients find the mask)
        return ServerStages(init, init, Mask.full(model), names,
                            {"pretrain_kind": kind, "prune_strategy": strategy})

    prune_file = paths.prune_cache(out, spec.stage_hash("data", "model", "pretrain", "prune"))
    if prune_file.is_file():
        cached = load_states(prune_file)
        cached_log = json.loads(prune_file.with_suffix(".json").read_text()) | {"cached": True}
        return ServerStages(init, cached["trained"], Mask(cached["mask"]), names, cached_log)

    log: dict = {"pretrain_kind": kind, "prune_strategy": strategy, "cached": False}
    trainer = _pretrain(spec, splits, model, out, log, stream) if trains else None

    mask = Mask.full(model)
    if source.level is not None or cuts:
        mask, log["prune"] = prune_model(spec.prune, model, splits.input_shape, names, trainer,
                                         spec.seed)
    if spec.prune.recalibrate_bn and "prune" in log:
        log["prune"]["recalibrated_bn"] = recalibrate(model, mask, splits.pool.x,
                                                      splits.input_shape)
    pre = log.get("pretrain", {})
    log["server_flops"] = (pre.get("flops", 0) + log.get("prune", {}).get("retrain_flops", 0)
                           + log.get("prune", {}).get("recalibrated_bn", {}).get("flops", 0))
    log["server_wall_s"] = pre.get("wall_s", 0.0) + log.get("prune", {}).get("wall_s", 0.0)
    trained = _state(model)
    # the .json first: the .npz is the stage's completion marker
    atomic_write_json(prune_file.with_suffix(".json"), log)
    save_states(prune_file, {"trained": trained, "mask": dict(mask)})
    return ServerStages(init, trained, mask, names, log)


def prune_model(
    prune: PruneSpec, model: Classifier, input_shape: tuple[int, int, int], names: list[str],
    trainer: ServerTrainer | None, seed: int,
) -> tuple[Mask, dict]:
    """The mask of ``prune`` for the (pretrained) ``model``: the structured step first when
    asked, then magnitude / random levels over ``names``, retraining with ``trainer``'s
    objective between levels. Returns the mask and the stage's log."""
    mask = Mask.full(model)
    start = time.perf_counter()
    retrain_s, retrain_flops = (trainer.log.wall_s, trainer.log.flops) if trainer else (0, 0)
    g = torch.Generator().manual_seed(derived_seed(seed, "prune"))
    fraction = level_fraction(prune.sparsity, prune.levels)
    levels = []
    structure: dict | None = None
    if trainer is not None:
        # retraining between levels draws from its own stream: the pretraining stream
        # is where it is only when pretraining ran here, not when it came from the cache
        trainer.g = torch.Generator().manual_seed(derived_seed(seed, "retrain"))
    cut = STRUCTURES[prune.structure].cut
    if cut is not None:
        mask, structure = cut(prune, model, input_shape, mask)
        fraction = fraction_to_reach(mask, names, prune.sparsity)
    source = MASK_SOURCES[prune.strategy]
    if source.level is None and cut is None:
        raise ValueError(f"prune.strategy {prune.strategy} is not found on the server")
    for level in range(1, prune.levels + 1 if source.level is not None else 1):
        losses: list[float] = []
        if level > 1 and trainer is not None:
            losses = trainer.train(prune.retrain_epochs, mask)
        assert source.level is not None
        mask = source.level(Level(prune, model, names, mask, fraction, g, input_shape))
        levels.append({"level": level, "density": mask.density, "retrain_losses": losses,
                       **source.log(prune)})
    if trainer:
        retrain_s, retrain_flops = (trainer.log.wall_s - retrain_s,
                                    trainer.log.flops - retrain_flops)
    return mask, {
        "levels": levels,
        "structure": structure,
        "wall_s": time.perf_counter() - start,
        "retrain_wall_s": retrain_s,
        "retrain_flops": retrain_flops,
    }


def recalibrate(model: Classifier, mask: Mask, x: torch.Tensor,
                input_shape: tuple[int, int, int]) -> dict:
    """Zero the pruned weights of ``model`` and re-estimate its BatchNorm statistics on
    the pool ``x`` (:func:`~fedticket.pruning.masked.recalibrate_batchnorm`); the log
    entry books the forward passes' FLOPs."""
    apply_mask(model, mask)
    start = time.perf_counter()
    layers = recalibrate_batchnorm(model, x)
    forward = sum(c.forward_flops for c in layer_costs(model, input_shape, mask))
    return {"layers": layers, "images": len(x), "flops": forward * len(x) if layers else 0,
            "wall_s": time.perf_counter() - start}


def _pretrain(
    spec: ExperimentSpec, splits: Splits, model: Classifier, out: Path, log: dict,
    stream: TextIO | None,
) -> ServerTrainer:
    """Pretrain ``model`` in place (or load the cached result); record the cost in ``log``."""
    kind = spec.pretrain.kind
    pool_y = splits.pool_labels if OBJECTIVES[kind].uses_labels else None
    g = torch.Generator().manual_seed(derived_seed(spec.seed, "pretrain"))
    trainer = ServerTrainer(model, spec.pretrain, splits.pool.x, pool_y, g)
    if stream is not None:
        trainer.on_epoch = lambda epoch, loss: print(
            f"  server {kind} epoch {epoch}: loss {loss:.4f}", file=stream, flush=True
        )
    cache = paths.pretrain_cache(out, spec.stage_hash("data", "model", "pretrain"))
    if cache.is_file():
        # the whole trained net (a DAE keeps its decoder for retraining between levels)
        load_tensors(trainer.net, load_states(cache)["net"])
        log["pretrain"] = json.loads(cache.with_suffix(".json").read_text()) | {"cached": True}
        return trainer
    probe = splits.pool.x[:512]
    before = trainer.probe(probe)
    trainer.train(spec.pretrain.epochs)
    pre = {
        "epoch_losses": trainer.log.epoch_losses,
        "wall_s": trainer.log.wall_s,
        "flops": trainer.log.flops,
        "samples": trainer.log.samples,
        "pool_size": len(splits.pool),
    }
    if before is not None:
        pre[trainer.part.probe_name] = {"before": before, "after": trainer.probe(probe)}
    atomic_write_json(cache.with_suffix(".json"), pre)
    save_states(cache, {"net": _state(trainer.net)})
    log["pretrain"] = pre | {"cached": False}
    return trainer


def _start(spec: ExperimentSpec, splits: Splits, stages: ServerStages) -> Start:
    return Start(stages.init, stages.trained,
                 lambda: _state(fresh_model(spec, splits, "reinit")), stages.mask,
                 stages.prunable, pretrained=OBJECTIVES[spec.pretrain.kind].net is not None)


def starting_weights(
    spec: ExperimentSpec, splits: Splits, stages: ServerStages
) -> State:
    """The subnetwork federated training starts from (pruned entries exactly zero): the
    values ``weights.init`` names (:data:`fedticket.weights.WEIGHT_INITS`)."""
    state = WEIGHT_INITS[spec.weights.init].draw(_start(spec, splits, stages))
    return {k: v * stages.mask.float(k) for k, v in state.items()}


def starts_from_seed(spec: ExperimentSpec, splits: Splits, stages: ServerStages) -> bool:
    """Whether the starting weights are reproducible from the run's seed (a random init
    is, pretrained weights are not), so that under ``federate.init_bytes = seed`` a
    client's download of them costs the seed, not the weights."""
    return spec.federate.init_bytes == "seed" and WEIGHT_INITS[spec.weights.init].seeded(
        _start(spec, splits, stages))
