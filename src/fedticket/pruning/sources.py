"""Where a starting mask comes from (``prune.strategy``): a registry of mask sources.

A source that the server runs prunes level by level: :attr:`MaskSource.level` takes the
(pretrained) model and the current mask and returns the next one, and
:func:`fedticket.stages.prune_model` calls it once per level, retraining between levels
when the source allows levels. A source the clients run (SSFL's saliency) has no level:
the runner asks the clients before round 1 (:mod:`fedticket.federated.saliency`). A new
source is one :class:`MaskSource` registered here or in its own module; a source the
clients find registers with :attr:`MaskSource.from_clients`, the function the runner
calls before round 1 (SSFL's ``snip`` in :mod:`fedticket.federated.saliency`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedticket.pruning.mask import Mask
from fedticket.pruning.strategies import (
    magnitude_scores,
    prune_lowest,
    random_like,
    random_scores,
)
from fedticket.pruning.synflow import synflow_prune
from fedticket.registry import Registry

if TYPE_CHECKING:
    from fedticket.data import Splits
    from fedticket.models.base import Classifier
    from fedticket.spec import ExperimentSpec, PruneSpec


@dataclass(frozen=True)
class Level:
    """What one pruning level sees."""

    prune: PruneSpec
    model: nn.Module
    names: list[str]
    mask: Mask
    """The mask so far (full, or after the structured step or earlier levels)."""
    fraction: float
    """The fraction of the surviving prunable weights this level removes."""
    generator: torch.Generator
    input_shape: tuple[int, int, int]


@dataclass(frozen=True)
class ClientSearch:
    """What a mask found by the clients before round 1 is found from."""

    spec: ExperimentSpec
    splits: Splits
    model: Classifier
    """The classifier at its initial weights, for the clients' task to work on."""
    start: dict[str, torch.Tensor]
    """The weights the clients see (the server stages' ``trained``)."""
    prunable: list[str]
    engine: Any
    """The run's engine factory (:data:`fedticket.federated.messages.EngineFactory`)."""
    say: Callable[[str], None] | None = None
    """Where progress lines go (None: nowhere)."""


@dataclass(frozen=True)
class ClientMask:
    """A mask the clients found, and what finding it cost (booked in round 0)."""

    mask: Mask
    log: dict[str, Any]
    """The prune stage's log entry."""
    records: list
    """The clients' :class:`~fedticket.federated.messages.ClientRecord` rows."""
    failures: list
    down_bytes: int
    """Bytes of the download each asked client received."""


@dataclass(frozen=True)
class MaskSource:
    """One way to find the mask federated training starts from."""

    level: Callable[[Level], Mask] | None = None
    """One level of pruning on the server; None: the server prunes nothing."""
    levels: bool = True
    """It takes ``prune.levels > 1`` and ``prune.structure`` (else both must stay off)."""
    from_clients: Callable[[ClientSearch], ClientMask] | None = None
    """The clients find it before round 1: the runner calls this with the run's engine."""
    log: Callable[[PruneSpec], dict[str, Any]] = field(default=lambda prune: {})
    """Extra fields of a level's row in the stage's log."""


MASK_SOURCES: Registry[MaskSource] = Registry("prune.strategy")
"""Every mask source a spec may name."""


def _weights(step: Level) -> dict[str, torch.Tensor]:
    return dict(step.model.named_parameters())


def _magnitude(step: Level) -> Mask:
    return prune_lowest(magnitude_scores(_weights(step), step.names, step.generator),
                        step.mask, step.names, step.fraction, step.prune.scope)


def _random(step: Level) -> Mask:
    return prune_lowest(random_scores(_weights(step), step.names, step.generator),
                        step.mask, step.names, step.fraction, step.prune.scope)


def _random_matched(step: Level) -> Mask:
    """The magnitude mask's per-tensor counts, at random."""
    return random_like(_magnitude(step), step.names, step.generator)


def _synflow(step: Level) -> Mask:
    """Data-free, on its own iterative schedule (Tanaka et al. 2020)."""
    return synflow_prune(step.model, step.names, step.prune.sparsity,
                         step.prune.synflow_iterations, step.input_shape)


MASK_SOURCES.add("none", MaskSource())
MASK_SOURCES.add("magnitude", MaskSource(_magnitude))
MASK_SOURCES.add("random", MaskSource(_random))
MASK_SOURCES.add("random-matched", MaskSource(_random_matched, levels=False))
MASK_SOURCES.add("synflow", MaskSource(_synflow, levels=False,
                                       log=lambda p: {"iterations": p.synflow_iterations}))
