"""Frozen experiment specs, TOML loading, method presets and the run hash.

One :class:`ExperimentSpec` names one run: one method, one seed. A config file
(TOML) holds shared settings for every stage plus the lists ``methods`` and
``seeds``; :func:`load_config` turns it into one spec per (method, seed).

The run folder name comes from a hash of the fields that differ from their
defaults, so adding a new field with a default never renames old runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fedticket.errors import ConfigError
from fedticket.registry import Registry

DATASETS = ("fashion-mnist", "digits", "npz", "folder")
PARTITIONS = ("iid", "dirichlet", "shards")
NOISES = ("gaussian", "masking", "salt-pepper")
LOSSES = ("mse", "bce")
OPTIMIZERS = ("adam", "sgd")
PRUNE_SCOPES = ("global", "layer", "erk")
# data fields that shape only the clients' part (and the test set), never the pool
CLIENT_SPLIT_FIELDS = ("train_size", "test_size", "num_clients", "partition",
                       "dirichlet_alpha", "shards_per_client", "min_client_size")


def _choice(section: str, name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(
            f"unknown {section}.{name} {value!r}; choose one of: {', '.join(options)}"
        )


def _registry(setting: str) -> Registry:
    """The registry of the parts ``setting`` names (:mod:`fedticket.parts`; imported
    here, late, so that reading a spec imports no part until one is checked)."""
    from fedticket.parts import REGISTRIES

    return REGISTRIES[setting]


def _part(setting: str, value: str) -> None:
    """``value`` names a registered part of ``setting`` (else one ConfigError)."""
    _registry(setting).check(value)


def _rules_for(federate: FederateSpec) -> list:
    from fedticket.federated.rules import rules_for

    return rules_for(federate)


def _positive(section: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{section}.{name} must be {bound}, got {value}")


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from and how it is split.

    The server pool is carved from the training split first (``pool_size``
    samples, or ``pool_fraction`` of it when that is > 0) and carries no labels;
    the clients share what is left (``train_size`` samples, 0 = all of it).
    """

    dataset: str = "fashion-mnist"
    path: str = ""
    train_size: int = 0
    test_size: int = 0
    pool_size: int = 10_000
    pool_fraction: float = 0.0
    pool_dataset: str = ""
    pool_path: str = ""
    num_clients: int = 100
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    shards_per_client: int = 2
    min_client_size: int = 1
    num_classes: int = 0
    """0: inferred from the labels (the largest + 1; every class must then have a
    training image); else the classifier's number of outputs, at least every label + 1."""

    def __post_init__(self) -> None:
        _choice("data", "dataset", self.dataset, DATASETS)
        if self.pool_dataset:
            _choice("data", "pool_dataset", self.pool_dataset, DATASETS)
        _choice("data", "partition", self.partition, PARTITIONS)
        for name in ("train_size", "test_size", "pool_size"):
            _positive("data", name, getattr(self, name), allow_zero=True)
        if not 0.0 <= self.pool_fraction < 1.0:
            raise ConfigError(f"data.pool_fraction must be in [0, 1), got {self.pool_fraction}")
        _positive("data", "num_clients", self.num_clients)
        _positive("data", "dirichlet_alpha", self.dirichlet_alpha)
        _positive("data", "shards_per_client", self.shards_per_client)
        _positive("data", "min_client_size", self.min_client_size, allow_zero=True)
        _positive("data", "num_classes", self.num_classes, allow_zero=True)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture: a registry name, or ``"PACKAGE.MODULE:FACTORY"`` for a model of the
    user's own, where ``FACTORY(num_classes: int) -> nn.Module`` (importable from the
    current folder or ``PYTHONPATH``; :mod:`fedticket.models.adapt`). ``hidden`` sizes
    are used by ``mlp`` only. ``head`` names the module path of a user model's head
    (an ``nn.Linear``); empty: the last ``nn.Linear`` the forward pass calls."""

    name: str = "cnn-fedavg"
    hidden: tuple[int, ...] = (300, 100)
    head: str = ""

    @property
    def is_user_model(self) -> bool:
        return ":" in self.name

    def __post_init__(self) -> None:
        if self.is_user_model:
            module, _, factory = self.name.partition(":")
            if not module or not factory or not all(
                part.isidentifier() for part in [*module.split("."), factory]
            ):
                raise ConfigError(
                    f"model.name {self.name!r} is not PACKAGE.MODULE:FACTORY; name a "
                    f"registry model ({', '.join(_registry('model.name'))}) or a factory such as "
                    "'mymodels.net:build'"
                )
        else:
            _part("model.name", self.name)
            if self.head:
                raise ConfigError("model.head names the head of a user model "
                                  "(model.name = 'PACKAGE.MODULE:FACTORY'); leave it out")
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ConfigError(f"model.hidden must be positive sizes, got {list(self.hidden)}")


@dataclass(frozen=True)
class PretrainSpec:
    """Server-side training before pruning.

    ``kind`` is set by the method: ``dae`` trains the body as the encoder of a
    denoising autoencoder on the unlabeled pool, ``supervised`` trains the whole
    classifier on the pool *with* its labels (the oracle), ``none`` does nothing.
    ``noise_level`` is the Gaussian sigma, or the corrupted fraction for
    ``masking`` and ``salt-pepper``.
    """

    kind: str = "dae"
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    noise: str = "gaussian"
    noise_level: float = 0.3
    loss: str = "bce"

    def __post_init__(self) -> None:
        _part("pretrain.kind", self.kind)
        _choice("pretrain", "noise", self.noise, NOISES)
        _choice("pretrain", "loss", self.loss, LOSSES)
        _choice("pretrain", "optimizer", self.optimizer, OPTIMIZERS)
        _positive("pretrain", "epochs", self.epochs, allow_zero=True)
        _positive("pretrain", "batch_size", self.batch_size)
        _positive("pretrain", "lr", self.lr)
        _positive("pretrain", "noise_level", self.noise_level, allow_zero=True)
        if self.noise != "gaussian" and self.noise_level > 1:
            raise ConfigError(
                f"pretrain.noise_level is a fraction for {self.noise} noise, got {self.noise_level}"
            )


@dataclass(frozen=True)
class PruneSpec:
    """How the mask is found.

    ``sparsity`` is the fraction of *prunable* weights removed in the end. With
    ``levels`` > 1 pruning is iterative: each level keeps ``(1 - sparsity) **
    (1 / levels)`` of the surviving weights and retrains for ``retrain_epochs``
    (with the pretraining objective) between levels. By default only the conv and
    linear weights of the pretrained body are prunable; ``include_head`` and
    ``include_biases`` widen that.

    ``structure = "channels"`` first removes whole units (conv channels, hidden
    units) of every body layer but the last, FLOP-aware, until the forward
    multiply-adds are at most ``flops_fraction`` of the dense model's, then prunes
    the remaining weights by magnitude to ``sparsity``
    (:mod:`fedticket.pruning.structured`). ``flops_fraction = 0`` means half the
    kept weight fraction, ``(1 - sparsity) / 2``: dense kernels turn MACs into
    seconds less than proportionally (a third of a small-batch update is fixed
    cost), so compute has to fall further than the weights to halve the time.
    """

    strategy: str = "magnitude"
    sparsity: float = 0.8
    scope: str = "global"
    levels: int = 1
    retrain_epochs: int = 1
    include_head: bool = False
    include_biases: bool = False
    structure: str = "none"
    flops_fraction: float = 0.0
    channel_floor: float = 0.25
    """``structure = "channels"``: every channel group keeps at least this fraction of
    its units (rounded, at least one), whatever the FLOP budget asks."""
    synflow_iterations: int = 100
    """``strategy = "synflow"``: scoring and pruning iterations (the SynFlow paper's 100)."""
    snip_batches: int = 1
    """``strategy = "snip"``: local batches (of ``federate.batch_size``) each client scores
    the initial model on."""
    snip_fraction: float = 1.0
    """``strategy = "snip"``: the fraction of the clients asked for their saliency."""
    recalibrate_bn: bool = False
    """After a mask found on the server, re-estimate every BatchNorm layer's running
    statistics on the unlabeled pool for the pruned weights (forward passes in train
    mode, no gradient, no labels): pruning changes what each layer sees, and the
    statistics still describe the unpruned network (docs/REPRODUCTION.md measures it)."""

    def __post_init__(self) -> None:
        _part("prune.strategy", self.strategy)
        if not 0.0 < self.channel_floor <= 1.0:
            raise ConfigError(f"prune.channel_floor must be in (0, 1], got {self.channel_floor}")
        _choice("prune", "scope", self.scope, PRUNE_SCOPES)
        _part("prune.structure", self.structure)
        cuts = _registry("prune.structure")[self.structure].cut is not None
        if not 0.0 <= self.flops_fraction <= 1.0:
            raise ConfigError(f"prune.flops_fraction must be in [0, 1] (0 = (1 - sparsity) / 2), "
                              f"got {self.flops_fraction}")
        if cuts and self.levels != 1:
            raise ConfigError("prune.structure needs prune.levels = 1")
        if not _registry("prune.strategy")[self.strategy].levels and (
                self.levels != 1 or cuts):
            raise ConfigError(f"prune.strategy {self.strategy} needs prune.levels = 1 and "
                              "prune.structure = none")
        _positive("prune", "synflow_iterations", self.synflow_iterations)
        _positive("prune", "snip_batches", self.snip_batches)
        if not 0.0 < self.snip_fraction <= 1.0:
            raise ConfigError(f"prune.snip_fraction must be in (0, 1], got {self.snip_fraction}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(
                f"prune.sparsity must be in [0, 1) (the fraction of weights removed), "
                f"got {self.sparsity}"
            )
        _positive("prune", "levels", self.levels)
        _positive("prune", "retrain_epochs", self.retrain_epochs, allow_zero=True)


@dataclass(frozen=True)
class WeightsSpec:
    """Which values the surviving weights start federated training from.

    ``pretrained`` keeps what the pretrain stage produced (the random init when
    there was no pretraining), ``rewind`` resets them to the random init the
    pretraining started from, ``reinit`` draws fresh random values.
    """

    init: str = "pretrained"

    def __post_init__(self) -> None:
        _part("weights.init", self.init)


@dataclass(frozen=True)
class FederateSpec:
    """FedAvg: ``client_fraction`` of ``num_clients`` per round, SGD locally."""

    rounds: int = 50
    client_fraction: float = 0.1
    local_epochs: int = 5
    batch_size: int = 50
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    eval_every: int = 1
    compute: str = "auto"
    """How clients compute: ``dense-masked`` (full-size kernels, masked gradients),
    ``structured`` (a physically smaller model without the removed units), ``sparse``
    (structured, and every masked linear layer on CSR kernels), or ``auto``
    (structured when the mask removes whole units; CSR kernels for linear layers of at
    least 65,536 weights at density <= 0.1, where they pay). All give the same model
    up to the order of floating-point sums."""
    targets: tuple[float, ...] = ()
    """Test accuracies declared in advance: every round is evaluated until each has been
    reached, and only then does ``eval_every`` thin the evaluations out, so that the
    first round at or above each target (its cost to target) is exact."""
    mask_once: bool = True
    """Send the mask to a client only the first time it is sampled (clients keep state);
    false: with every download (stateless clients, as cross-device FL often has)."""
    values: str = "f32"
    """How weight values travel (:mod:`fedticket.accounting.wire`): ``f32`` (exact),
    ``f16`` (half precision), ``q8`` or ``q4`` (8- or 4-bit codes, a float32 minimum
    and step per 256 values of a tensor, rounded to the nearest), both ways (download
    and upload)."""
    upload: str = "model"
    """What a client uploads (:mod:`fedticket.accounting.wire`): its new ``model`` (in
    ``values``), or its change from the model it received, as the ``topk`` largest
    entries (``upload_density`` of the values a download holds, positions and float32
    values) or quantized by ``qsgd`` (``upload_bits`` bits a value, stochastic rounding,
    a norm per 512 values), or whole as the ``change`` in ``values`` (its own minimum
    and step per block; stochastic rounding, or to the nearest under error feedback).
    The download stays the model in ``values``."""
    download: str = "model"
    """What a client downloads: the server's ``model`` in ``values``, or, to a client that
    holds last time's download, the ``change`` from it in ``values`` (rounded to the
    nearest; the server tracks what each client holds). It costs the same bytes as the
    model and errs far less: its steps are those of the change, not of the weights.
    Needs clients that keep state and values that round (f16, q8 or q4)."""
    upload_density: float = 0.2
    """``topk``: the fraction of the download's values an upload sends (0.2: the kept
    fraction of a ticket at the study's 80% sparsity)."""
    upload_bits: int = 8
    """``qsgd``: bits a value, 8 or 4 (sign and level: 127 or 7 levels)."""
    error_feedback: bool = False
    """``topk``, ``qsgd`` and ``change``: each client keeps what its upload did not carry (its
    residual) and adds it to its next change before compressing; the residual never
    travels. Clients that keep no state between rounds cannot do this."""
    aggregation: str = "fedavg"
    """How the surviving client updates become the global model: ``fedavg`` (the
    sample-weighted mean), or, robust to a minority of hostile clients, the unweighted
    coordinate-wise ``median`` or ``trimmed-mean`` (Yin et al. 2018)."""
    trim_fraction: float = 0.1
    """``trimmed-mean``: the fraction of values dropped at each end of every coordinate."""
    max_update_norm: float = 0.0
    """Reject an update whose change from the global model has an L2 norm above this;
    0: no bound. Under ``fedavg`` one finite but huge update (1e38) would otherwise set
    the mean on its own."""
    norm_factor: float = 0.0
    """Reject an update whose change's L2 norm is more than this many times the median
    of the round's checked updates (it needs no knowledge of the scale; e.g. 10);
    0: off. With both set, the smaller bound holds."""
    readjust_every: int = 0
    """Dynamic sparse training (FedDST, Bibikar et al. 2022): every this many rounds (the
    authors' ``--rounds-between-readjustments``, on their schedule:
    :mod:`fedticket.federated.dst`) each client drops a fraction of its kept weights by
    magnitude and regrows as many by gradient magnitude, and the server merges the
    clients' masks; 0: the mask stays fixed (every other method)."""
    readjust_alpha: float = 0.01
    """The fraction of kept weights a readjustment swaps (the authors'
    ``--readjustment-ratio``, 0.01 in every command of their README)."""
    readjust_end: float = 0.5
    """The share of the rounds after which no readjustment happens (FedDST's T_end; the
    authors' default ``--rate-decay-end`` is half the rounds)."""
    rule: str = "none"
    """A round rule of :data:`fedticket.federated.rules.RULES` that acts during training
    (re-prunes, re-draws or merges masks; FedDST's is on whenever ``readjust_every`` is
    set): ``none``, or the name a rule registered under."""
    init_bytes: str = "seed"
    """What a client's download of the starting weights costs while they are unchanged
    (round 1, and a client-side saliency prelude): ``seed``, the 8 bytes of the run's
    seed when those weights are reproducible from it (a random init is; pretrained
    weights are not and cost their bytes), as FedDST's code treats them; ``weights``,
    their bytes always (the convention of fedticket before docs/PEERS.md fixed one)."""
    checkpoint_every: int = 1
    """Checkpoint the run every this many rounds (and after round 0 and the last), so a
    killed run resumes there; 0: never. One checkpoint is the global model plus a few
    hundred bytes of state, rewritten in place."""

    def __post_init__(self) -> None:
        _positive("federate", "rounds", self.rounds)
        if not 0.0 < self.client_fraction <= 1.0:
            raise ConfigError(
                f"federate.client_fraction must be in (0, 1], got {self.client_fraction}"
            )
        _positive("federate", "local_epochs", self.local_epochs)
        _positive("federate", "batch_size", self.batch_size)
        _positive("federate", "lr", self.lr)
        _positive("federate", "momentum", self.momentum, allow_zero=True)
        _positive("federate", "weight_decay", self.weight_decay, allow_zero=True)
        _positive("federate", "eval_every", self.eval_every)
        _part("federate.compute", self.compute)
        _part("federate.values", self.values)
        _part("federate.aggregation", self.aggregation)
        _part("federate.upload", self.upload)
        _part("federate.download", self.download)
        _part("federate.rule", self.rule)
        if self.init_bytes not in ("seed", "weights"):
            raise ConfigError(f"federate.init_bytes must be seed or weights, got "
                              f"{self.init_bytes!r}")
        for rule in _rules_for(self):
            rule.check(self)
        _positive("federate", "readjust_every", self.readjust_every, allow_zero=True)
        if not 0.0 < self.readjust_alpha < 1.0:
            raise ConfigError(f"federate.readjust_alpha must be in (0, 1), got "
                              f"{self.readjust_alpha}")
        if not 0.0 < self.readjust_end <= 1.0:
            raise ConfigError(f"federate.readjust_end must be in (0, 1], got "
                              f"{self.readjust_end}")
        upload = _registry("federate.upload")[self.upload]
        exact = _registry("federate.values")[self.values].exact
        change = _registry("federate.download")[self.download].change
        follows = _registry("federate.compute")[self.compute].mask_may_change
        if self.readjust_every and (not follows or not upload.is_model):
            raise ConfigError("federate.readjust_every (a mask that changes) needs "
                              "federate.compute = dense-masked and federate.upload = model")
        if not 0.0 < self.upload_density <= 1.0:
            raise ConfigError(f"federate.upload_density must be in (0, 1], got "
                              f"{self.upload_density}")
        if self.upload_bits not in (4, 8):
            raise ConfigError(f"federate.upload_bits must be 4 or 8, got {self.upload_bits}")
        if self.error_feedback and upload.is_model:
            raise ConfigError("federate.error_feedback needs a compressed upload "
                              "(federate.upload = topk, qsgd or change)")
        if self.error_feedback and upload.in_values and exact:
            raise ConfigError("federate.error_feedback with federate.upload = change needs "
                              "values that lose something (f16, q8 or q4)")
        if change and not self.mask_once:
            raise ConfigError("federate.download = change sends what changed since a "
                              "client's last download; stateless clients "
                              "(federate.mask_once = false) hold none")
        if change and exact and not _registry("federate.download")[self.download].topk:
            raise ConfigError("federate.download = change needs values that round (f16, q8 "
                              "or q4); in f32 the model itself is exact")
        if change and self.readjust_every:
            raise ConfigError("federate.download = change needs a mask that stays put "
                              "(federate.readjust_every = 0)")
        if self.error_feedback and not self.mask_once:
            raise ConfigError("federate.error_feedback keeps a residual on each client; "
                              "stateless clients (federate.mask_once = false) have none")
        _positive("federate", "checkpoint_every", self.checkpoint_every, allow_zero=True)
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(
                f"federate.trim_fraction must be in [0, 0.5), got {self.trim_fraction}"
            )
        _positive("federate", "max_update_norm", self.max_update_norm, allow_zero=True)
        if self.norm_factor and not self.norm_factor >= 1.0:
            raise ConfigError(f"federate.norm_factor must be 0 (off) or >= 1, got "
                              f"{self.norm_factor}")
        for t in self.targets:
            if not 0.0 < t <= 1.0:
                raise ConfigError(f"federate.targets must be accuracies in (0, 1], got {t}")


@dataclass(frozen=True)
class ExperimentSpec:
    """Everything that determines one run."""

    method: str = "dae-ticket"
    seed: int = 0
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    weights: WeightsSpec = field(default_factory=WeightsSpec)
    federate: FederateSpec = field(default_factory=FederateSpec)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"unknown method {self.method!r}; choose from: {', '.join(METHODS)}"
            )

    # ----------------------------------------------------------------- naming
    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(dataclasses.asdict(self))

    def nondefault(self) -> dict[str, Any]:
        """The fields that differ from their defaults, as ``{"section.key": value}``."""
        default = _flatten(ExperimentSpec().to_dict())
        return {
            key: value
            for key, value in _flatten(self.to_dict()).items()
            if default.get(key, _MISSING) != value
        }

    def hash(self) -> str:
        """Hex digest naming the run; depends on non-default fields only."""
        blob = json.dumps(self.nondefault(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def run_name(self) -> str:
        return f"{self.method}_s{self.seed}_{self.hash()}"

    def stage_hash(self, *sections: str) -> str:
        """Hash of the given sections plus the seed: the key of a cached stage.

        Of ``data`` only the fields that decide the server's pool count: the server
        stages never see the clients' split, so runs that differ only in it (another
        partition, client count or training size) share their pretraining and mask.
        """
        d = self.to_dict()
        d["data"] = {k: v for k, v in d["data"].items() if k not in CLIENT_SPLIT_FIELDS
                     and not (k == "num_classes" and v == 0)}  # caches from before it
        blob = json.dumps(
            {"seed": self.seed, **{s: d[s] for s in sections}}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


_MISSING = object()

# A method is a preset over the few fields that distinguish the methods (README,
# "Methods"); everything else comes from the config.
METHODS: dict[str, dict[str, Any]] = {
    "fedavg": {"pretrain.kind": "none", "prune.strategy": "none", "weights.init": "pretrained"},
    "fedavg-dae": {"pretrain.kind": "dae", "prune.strategy": "none", "weights.init": "pretrained"},
    # a random mask of uniform density over the layers, on the dense model's unscaled
    # init: the weak control of early papers (kept to compare with them)
    "random-mask-unscaled": {
        "pretrain.kind": "none",
        "prune.strategy": "random",
        "weights.init": "pretrained",
    },
    # the fair random control: a random mask with the DAE ticket's per-layer densities,
    # fresh weights scaled to the fan-in each unit keeps
    "random-ticket": {
        "pretrain.kind": "dae",
        "prune.strategy": "random-matched",
        "weights.init": "fanin",
    },
    "magnitude-init": {
        "pretrain.kind": "none",
        "prune.strategy": "magnitude",
        "weights.init": "pretrained",
    },
    "dae-ticket": {
        "pretrain.kind": "dae",
        "prune.strategy": "magnitude",
        "weights.init": "pretrained",
    },
    "dae-ticket-rewind": {
        "pretrain.kind": "dae",
        "prune.strategy": "magnitude",
        "weights.init": "rewind",
    },
    "supervised-ticket": {
        "pretrain.kind": "supervised",
        "prune.strategy": "magnitude",
        "weights.init": "pretrained",
    },
    # the DAE pipeline with FLOP-aware channel pruning where the compute is and
    # magnitude pruning where the bytes are, trained as a smaller dense model
    "dae-ticket-fast": {
        "pretrain.kind": "dae",
        "prune.strategy": "magnitude",
        "weights.init": "pretrained",
        "prune.structure": "channels",
    },
}

# The controls the compute claim of dae-ticket-fast needs: the same network narrowed by
# one width factor in every layer to about dae-ticket-fast's training FLOPs (the grid's
# dae-ticket-fast trains 8.4% of fedavg's FLOPs a round, docs/results/peers.json;
# docs/PEERS.md), dense FedAvg from a fresh init (what HeteroFL and FjORD reduce to when
# all clients are alike); and dae-ticket-fast's own compact architecture and mask with
# fresh weights scaled to each unit's kept fan-in (the structured random-ticket).
THIN_FLOPS = 0.09
"""fedavg-thin's forward-MAC budget: on the FedAvg CNN it keeps 7 and 15 of the 32 and 64
conv channels, 8.2% of the training FLOPs per sample (tests/test_controls.py)."""
METHODS["fedavg-thin"] = {"pretrain.kind": "none", "prune.strategy": "none",
                          "prune.structure": "uniform", "prune.flops_fraction": THIN_FLOPS,
                          "weights.init": "fanin"}
METHODS["random-ticket-fast"] = METHODS["dae-ticket-fast"] | {"weights.init": "fanin"}

# the two tickets with every BatchNorm layer's running statistics re-estimated on the
# unlabeled pool after pruning (prune.recalibrate_bn; docs/REPRODUCTION.md measures it)
for _name in ("dae-ticket", "dae-ticket-fast"):
    METHODS[f"{_name}-bn"] = METHODS[_name] | {"prune.recalibrate_bn": True}

# Peers that find a fixed mask before training without the server's pool: SynFlow
# (Tanaka et al. 2020; the data-free step of HideNseek) on the initial weights, and
# SSFL's client saliency (Ohib et al. 2024: SNIP's |grad * w| on the clients' data,
# summed on the server). Both train from the initial weights under the mask.
METHODS["synflow-ticket"] = {"pretrain.kind": "none", "prune.strategy": "synflow",
                             "weights.init": "pretrained"}
METHODS["snip-ticket"] = {"pretrain.kind": "none", "prune.strategy": "snip",
                          "weights.init": "pretrained"}

# FedDST (Bibikar et al. 2022, bibikar/feddst): an ERK-budgeted magnitude mask of the
# random init that the clients readjust during training (docs/PEERS.md: the settings).
# The authors swap 1% of the kept weights (--readjustment-ratio 0.01) every 15 of 400
# rounds (--rounds-between-readjustments 15, CIFAR-10): 15 * 30 / 400 = 1.1 of our 30
# rounds, so every round until half of them; the rows at 0.05 and at 0.5 show how much
# the swap rate matters.
METHODS["feddst"] = {"pretrain.kind": "none", "prune.strategy": "magnitude",
                     "prune.scope": "erk", "weights.init": "pretrained",
                     "federate.readjust_every": 1, "federate.readjust_alpha": 0.01,
                     "federate.compute": "dense-masked"}
for _alpha in (0.05, 0.5):
    METHODS[f"feddst-{_alpha}"] = METHODS["feddst"] | {"federate.readjust_alpha": _alpha}

# FedPM (Isik et al. 2023, BerivanIsik/sparse-random-networks): the clients train a
# probability mask over frozen signed-constant weights with Adam at the authors' lr 0.1,
# and exchange sampled masks (src/fedticket/federated/fedpm.py; docs/PEERS.md).
METHODS["fedpm"] = {"pretrain.kind": "none", "prune.strategy": "none",
                    "weights.init": "pretrained", "federate.rule": "fedpm",
                    "federate.compute": "dense-masked", "federate.lr": 0.1}

# Peers that compress a dense model's uploads (their download stays the dense model):
# top-k with error feedback (Lin et al. 2018, Deep Gradient Compression; Sattler et
# al. 2019, STC) and QSGD (Alistarh et al. 2017) at 8 and 4 bits, on the random init
# and on the DAE-pretrained model; and the DAE ticket with either (no paper has them).
# topk-ef-2way also sends each client only the top-k of the change since its last
# download, the rest kept on the server for next time, as STC does.
_TOPK: dict[str, Any] = {"federate.upload": "topk", "federate.error_feedback": True}
_QSGD: dict[str, Any] = {"federate.upload": "qsgd"}
_PEERS: list[tuple[str, str, dict[str, Any]]] = [
    ("topk-ef", "fedavg", _TOPK), ("topk-ef-dae", "fedavg-dae", _TOPK),
    ("qsgd-8", "fedavg", _QSGD | {"federate.upload_bits": 8}),
    ("qsgd-4", "fedavg", _QSGD | {"federate.upload_bits": 4}),
    ("qsgd-8-dae", "fedavg-dae", _QSGD | {"federate.upload_bits": 8}),
    ("qsgd-4-dae", "fedavg-dae", _QSGD | {"federate.upload_bits": 4}),
    ("topk-ef-2way", "fedavg", _TOPK | {"federate.download": "topk"}),
    ("dae-ticket-topk", "dae-ticket", _TOPK),
    ("dae-ticket-qsgd", "dae-ticket", _QSGD | {"federate.upload_bits": 8}),
]
for _name, _base, _code in _PEERS:
    METHODS[_name] = METHODS[_base] | _code

def uses_labels(method: str) -> bool:
    """Whether a preset's server step uses the pool's labels (an oracle: fedticket's
    method has none); False for a name that is no preset."""
    kind = METHODS.get(method, {}).get("pretrain.kind")
    return kind is not None and _registry("pretrain.kind")[kind].uses_labels


BASELINE = "fedavg"
"""The preset every saving is measured against unless a study (``[questions]
baseline``) or ``fedticket compare --baseline`` names another: dense FedAvg from the
random init."""

SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "model": ModelSpec,
    "pretrain": PretrainSpec,
    "prune": PruneSpec,
    "weights": WeightsSpec,
    "federate": FederateSpec,
}


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    return obj


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# No integer setting needs more; a larger one is a typo (and a round count that large
# would run for ever).
MAX_INT = 2**31 - 1


def _int_in_range(where: str, value: int) -> int:
    if abs(value) > MAX_INT:
        raise ConfigError(f"{where} is too large (more than {MAX_INT:,}): {str(value)[:20]}...")
    return value


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    """Check a TOML value against the type of the field's default."""
    where = f"{section}.{key}" if section else key
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return _int_in_range(where, value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(value, int):
            _int_in_range(where, value)
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple) and not default:  # a list of numbers (e.g. targets)
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{where} must be a list of numbers, got {value!r}")
        return tuple(float(_int_in_range(where, v) if isinstance(v, int) else v)
                     for v in value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{where} must be a list of integers, got {value!r}")
        return tuple(_int_in_range(where, v) for v in value)
    raise ConfigError(f"{where}: unsupported value {value!r}")


def _build_section(name: str, values: dict[str, Any], base: Any) -> Any:
    cls = SECTIONS[name]
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key '{name}.{key}'; valid keys in [{name}]: "
                f"{', '.join(known)}"
            )
        kwargs[key] = _coerce(name, key, value, getattr(base, key))
    return replace(base, **kwargs)


def _finite(key: str, value: Any) -> None:
    """``nan`` and ``inf`` are valid TOML floats; no setting accepts them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if isinstance(value, (list, tuple)):
        for v in value:
            _finite(key, v)


def apply_overrides(spec: ExperimentSpec, flat: dict[str, Any]) -> ExperimentSpec:
    """Return ``spec`` with ``{"section.key": value}`` overrides applied."""
    by_section: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for dotted, value in flat.items():
        _finite(dotted, value)
        if "." in dotted:
            section, key = dotted.split(".", 1)
            if section not in SECTIONS:
                raise ConfigError(
                    f"unknown config section '{section}' in '{dotted}'; valid sections: "
                    f"{', '.join(SECTIONS)}"
                )
            by_section.setdefault(section, {})[key] = value
        else:
            top[dotted] = value
    kwargs: dict[str, Any] = {}
    for section, values in by_section.items():
        kwargs[section] = _build_section(section, values, getattr(spec, section))
    for key, value in top.items():
        if key not in ("method", "seed"):
            raise ConfigError(f"unknown config key '{key}'")
        kwargs[key] = _coerce("", key, value, getattr(spec, key))
    return replace(spec, **kwargs)


def with_method(spec: ExperimentSpec, method: str) -> ExperimentSpec:
    """Apply the preset of ``method`` to ``spec``."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from: {', '.join(METHODS)}")
    return apply_overrides(replace(spec, method=method), METHODS[method])


@dataclass(frozen=True)
class Config:
    """A parsed config file: shared base settings, methods and seeds."""

    base: ExperimentSpec
    methods: tuple[str, ...]
    seeds: tuple[int, ...]

    def specs(self, overrides: dict[str, Any] | None = None) -> list[ExperimentSpec]:
        """One spec per (method, seed); ``overrides`` win over the presets."""
        out = []
        for method in self.methods:
            for seed in self.seeds:
                spec = with_method(replace(self.base, seed=seed), method)
                if overrides:
                    spec = apply_overrides(spec, overrides)
                out.append(spec)
        return out


def parse_config(raw: dict[str, Any], where: str = "config") -> Config:
    """Build a :class:`Config` from a parsed TOML document."""
    flat: dict[str, Any] = {}
    methods: list[str] = ["dae-ticket"]
    seeds: list[int] = [0]
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            for k, v in value.items():
                flat[f"{key}.{k}"] = v
        elif key == "methods":
            if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
                raise ConfigError(f"{where}: methods must be a list of names")
            if not value:
                raise ConfigError(f"{where}: methods is empty; name at least one method")
            methods = value
        elif key == "seeds":
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)
            ):
                raise ConfigError(f"{where}: seeds must be a non-empty list of integers")
            if any(not 0 <= s <= MAX_INT for s in value):
                raise ConfigError(f"{where}: seeds must be in [0, {MAX_INT:,}], got {value}")
            seeds = value
        else:
            raise ConfigError(
                f"unknown config key '{key}' in {where}; valid top-level keys: methods, seeds, "
                f"{', '.join(SECTIONS)}"
            )
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r} in {where}; choose from: {', '.join(METHODS)}")
    base = apply_overrides(ExperimentSpec(), flat)
    return Config(base, tuple(dict.fromkeys(methods)), tuple(dict.fromkeys(seeds)))


def read_toml(path: str | Path, kind: str = "config") -> dict[str, Any]:
    """The table in the TOML file ``path``; every way it can fail (missing, a folder,
    unreadable, not UTF-8, not TOML, nested too deeply) is one ConfigError naming it."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p} is a directory; give a TOML {kind} file")
    if not p.is_file():
        raise ConfigError(f"{kind} file not found: {p}")
    try:
        return tomllib.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not UTF-8 text; give a TOML {kind} file") from None
    except RecursionError:
        raise ConfigError(f"{p} is nested too deeply to be a {kind} file") from None
    except ValueError as e:  # TOMLDecodeError, and integers too long to convert
        raise ConfigError(f"{p} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}") from None


def load_config(path: str | Path) -> Config:
    """Read a TOML config file."""
    raw = read_toml(path)
    if not raw:
        raise ConfigError(f"{path} sets nothing: nothing to run; name the methods and "
                          "settings (configs/quick.toml is an example)")
    return parse_config(raw, where=str(path))


def parse_set(items: list[str]) -> dict[str, Any]:
    """Parse ``--set section.key=value`` items; values are TOML literals or bare strings."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except RecursionError:
            raise ConfigError(f"--set {key}: the value is nested too deeply") from None
        except ValueError:  # not a TOML literal (or an integer too long): a bare string
            value = text
        out[key] = value
    return out


def spec_from_dict(d: dict[str, Any]) -> ExperimentSpec:
    """Rebuild a spec from :meth:`ExperimentSpec.to_dict` output (e.g. a spec.json)."""
    flat = _flatten({s: d[s] for s in SECTIONS if s in d})
    spec = apply_overrides(ExperimentSpec(), flat)
    return replace(spec, method=d.get("method", spec.method), seed=d.get("seed", spec.seed))
