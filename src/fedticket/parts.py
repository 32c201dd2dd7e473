"""Every registry of parts, by the setting that names a part.

The spec checks a name against the registry here (and nowhere else is there a list of
the names): ``model.name`` (:data:`fedticket.models.registry.REGISTRY`),
``prune.strategy`` (:data:`fedticket.pruning.sources.MASK_SOURCES`), ``federate.values``,
``federate.upload`` and ``federate.download`` (:mod:`fedticket.accounting.wire`) and
``federate.aggregation`` (:data:`fedticket.federated.aggregate.AGGREGATORS`) and
``federate.rule`` (:data:`fedticket.federated.rules.RULES`) and ``weights.init``
(:data:`fedticket.weights.WEIGHT_INITS`). What a
client can be asked to do is :data:`fedticket.federated.tasks.TASKS`, named by the
round loop, not by a setting. Parts register where they are defined; importing this
module imports them all.
"""

from __future__ import annotations

from fedticket.accounting.wire import DOWNLOAD_CODES, UPLOAD_CODES, VALUE_CODES
from fedticket.federated import dst, fedpm, saliency  # noqa: F401  (they register their parts)
from fedticket.federated.aggregate import AGGREGATORS
from fedticket.federated.client import COMPUTE_PATHS
from fedticket.federated.rules import RULES
from fedticket.models.registry import REGISTRY as MODELS
from fedticket.pretrain.server import OBJECTIVES
from fedticket.pruning.sources import MASK_SOURCES
from fedticket.pruning.structured import STRUCTURES
from fedticket.registry import Registry
from fedticket.weights import WEIGHT_INITS

REGISTRIES: dict[str, Registry] = {
    "model.name": MODELS,
    "pretrain.kind": OBJECTIVES,
    "prune.strategy": MASK_SOURCES,
    "prune.structure": STRUCTURES,
    "federate.compute": COMPUTE_PATHS,
    "federate.values": VALUE_CODES,
    "federate.upload": UPLOAD_CODES,
    "federate.download": DOWNLOAD_CODES,
    "federate.aggregation": AGGREGATORS,
    "federate.rule": RULES,
    "weights.init": WEIGHT_INITS,
}
