"""The Python entry point: a ticket for your own classifier, then federated training on it.

::

    import fedticket
    ticket = fedticket.find_ticket(my_model, unlabeled_images, sparsity=0.8)
    result = fedticket.federate(ticket, clients=[(x0, y0), (x1, y1)], test=(x_test, y_test))

:func:`find_ticket` runs the server's part of the pipeline on a model fedticket has never
seen: it splits the classifier into body and head (:mod:`fedticket.models.adapt`: the
head is the last ``nn.Linear`` the forward pass calls, unless named), builds a DAE
decoder from the body's output width unless one is given, pretrains the body as the
encoder of a denoising autoencoder on the unlabeled images, and prunes: by magnitude
(``structured=False``), or FLOP-aware whole channels first and magnitude after
(``structured=True``, channel groups from Torch-Pruning's dependency graph, so residual
adds and BatchNorm are respected). :func:`federate` trains the ticket with FedAvg on the
clients' labeled data, in this process (``engine="simulator"``) or through Flower's
message API (``engine="flower"``, :mod:`fedticket.flower.inprocess`), with the same
strategy, codec and ledger as ``fedticket run``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fedticket.accounting.wire import Codec
from fedticket.data import Labeled, Unlabeled
from fedticket.errors import ConfigError, DataError
from fedticket.federated.client import LocalTrainer
from fedticket.federated.strategy import RoundLog, TicketStrategy
from fedticket.models import Classifier, prunable_names
from fedticket.models.adapt import from_module, probe_output
from fedticket.pretrain.server import OBJECTIVES, ServerTrainer
from fedticket.pruning.compact import Compact
from fedticket.pruning.mask import Mask, load_tensors, model_tensors
from fedticket.spec import FederateSpec, PretrainSpec, PruneSpec
from fedticket.stages import derived_seed, prune_model, recalibrate

State = dict[str, torch.Tensor]
Images = torch.Tensor | Dataset
LabeledData = Labeled | tuple[torch.Tensor, torch.Tensor] | Dataset


@dataclass(frozen=True, eq=False)
class Ticket:
    """What the server found: the classifier holding the ticket's starting weights
    (pruned entries exactly zero), its mask, and what it cost."""

    model: Classifier
    """Full size, body + head; pruned weights are zero."""
    mask: Mask
    input_shape: tuple[int, int, int]
    num_classes: int
    structured: bool
    report: dict
    """Mask report (density per tensor), the structured step's units kept, the DAE's
    losses and the server's FLOPs and seconds."""
    init: State = field(repr=False)
    """The weights before pretraining (for the classic lottery-ticket rewind)."""

    @property
    def state(self) -> State:
        """A copy of the starting weights (every tensor that travels)."""
        return {k: v.detach().clone() for k, v in model_tensors(self.model).items()}

    def compact_model(self) -> nn.Module:
        """The physically smaller model the structured variant trains: removed channels cut
        out, the ticket's weights in it. For an unstructured ticket (nothing removed whole)
        this is a copy of the full model."""
        compact = Compact(self.model, self.mask, self.input_shape)
        net = compact.net
        load_tensors(net, compact.compact(self.state))
        return net


def find_ticket(
    model: nn.Module,
    unlabeled: Images,
    *,
    sparsity: float = 0.8,
    structured: bool = False,
    head: str = "",
    decoder: Callable[[], nn.Module] | None = None,
    num_classes: int | None = None,
    pretrain: PretrainSpec | None = None,
    prune: PruneSpec | None = None,
    weights: str = "pretrained",
    seed: int = 0,
) -> Ticket:
    """Pretrain ``model``'s body as a DAE on ``unlabeled`` images and prune it.

    Parameters
    ----------
    model
        A classifier of ``(N, C, H, W)`` float images in [0, 1]; taken over (its head module
        is replaced in place, :func:`fedticket.models.adapt.from_module`).
    unlabeled
        The server's images: a ``(N, C, H, W)`` (or ``(N, H, W)``) tensor, float in [0, 1]
        or uint8, or a ``Dataset`` whose items are images or ``(image, ...)`` tuples (any
        labels in them are dropped unread).
    sparsity
        Fraction of the prunable weights (conv and linear weights of the body) removed.
    structured
        ``True``: FLOP-aware channel pruning first (``prune.flops_fraction``, default
        ``(1 - sparsity) / 2`` of the forward multiply-adds; ``prune.channel_floor``), then
        magnitude pruning to ``sparsity``; the clients then train a smaller model.
    head, decoder
        The head's module path (default: the last ``nn.Linear`` called) and a builder of
        the DAE decoder (default: built from the body's output width and the image shape).
    num_classes
        Checked against the model's output; default: what the model outputs.
    pretrain, prune
        Settings beyond the defaults (``PretrainSpec(epochs=5)``, Adam 1e-3, Gaussian noise
        0.3, BCE loss; global magnitude pruning). ``pretrain.kind = "none"`` skips the DAE.
    weights
        ``"pretrained"`` (the DAE's weights, the method) or ``"rewind"`` (the weights
        before pretraining, under the DAE's mask).
    seed
        Drives the DAE's batches and noise.
    """
    x = _images(unlabeled, "unlabeled")
    input_shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    if weights not in ("pretrained", "rewind"):
        raise ConfigError(f"weights must be 'pretrained' or 'rewind', got {weights!r}")
    if num_classes is None:
        num_classes = _output_classes(model, x[:2])
    net = from_module(model, input_shape, num_classes, head=head, decoder=decoder)
    pretrain = pretrain or PretrainSpec()
    objective = OBJECTIVES[pretrain.kind]
    if objective.uses_labels:
        raise ConfigError(f"find_ticket has unlabeled images only; pretrain.kind "
                          f"{pretrain.kind!r} needs labels")
    prune = replace(prune or PruneSpec(), sparsity=sparsity,
                    structure="channels" if structured else "none")
    init = {k: v.detach().clone() for k, v in model_tensors(net).items()}
    names = prunable_names(net, include_head=prune.include_head,
                           include_biases=prune.include_biases)
    trainer = None
    report: dict[str, Any] = {}
    if objective.net is not None:
        g = torch.Generator().manual_seed(derived_seed(seed, "pretrain"))
        trainer = ServerTrainer(net, pretrain, x, None, g)
        trainer.train(pretrain.epochs)
        report["pretrain"] = {"epoch_losses": trainer.log.epoch_losses,
                              "wall_s": trainer.log.wall_s, "flops": trainer.log.flops}
    mask, report["prune"] = prune_model(prune, net, input_shape, names, trainer, seed)
    if prune.recalibrate_bn:
        report["prune"]["recalibrated_bn"] = recalibrate(net, mask, x, input_shape)
    start = init if weights == "rewind" else model_tensors(net)
    load_tensors(net, {k: v.detach() * mask.float(k) for k, v in start.items()})
    report["mask"] = mask.report(names)
    return Ticket(net, mask, input_shape, num_classes, structured, report, init)


@dataclass(frozen=True, eq=False)
class Federated:
    """The outcome of :func:`federate`."""

    model: Classifier
    """The ticket's classifier holding the final global weights."""
    rounds: list[dict]
    """One row per evaluated round, as in a run's ``metrics.jsonl`` (test accuracy, and the
    cumulative bytes, FLOPs and client seconds)."""
    engine: str
    compute: str
    mask: Mask
    input_shape: tuple[int, int, int]
    num_classes: int
    test_images: torch.Tensor = field(repr=False)

    def export(self, out: str, fmt: str = "onnx", compact: bool = True) -> dict:
        """Write the final model as ``fmt`` (``"onnx"`` or ``"safetensors"``) to ``out``,
        as ``fedticket export`` does for a run folder (docs/export.md): the compact model
        when the mask removes whole units and ``compact``; float32 images in [0, 1] in,
        logits out. Returns the export's report (bytes, parameters)."""
        from pathlib import Path

        from fedticket.export import exported_model, write

        exported = exported_model(copy.deepcopy(self.model), self.mask, self.input_shape,
                                  self.num_classes, model_tensors(self.model),
                                  self.test_images, {"engine": self.engine}, compact)
        return write(exported, fmt, Path(out))


def federate(
    ticket: Ticket,
    clients: Sequence[LabeledData],
    test: LabeledData,
    *,
    spec: FederateSpec | None = None,
    seed: int = 0,
    engine: str = "simulator",
    on_round: Callable[[dict], None] | None = None,
) -> Federated:
    """FedAvg on ``ticket``'s subnetwork: every client downloads, trains and uploads only
    the weights the mask keeps (and the BatchNorm statistics, which are averaged by sample
    count), encoded by the run's codec and counted byte for byte.

    ``clients`` are the clients' labeled data, one entry each; ``spec`` the federation
    (default ``FederateSpec()``, with ``client_fraction`` of the clients per round);
    ``engine`` ``"simulator"`` (every client in this process) or ``"flower"`` (each round
    as Flower messages through a Flower ClientApp; :mod:`fedticket.flower.inprocess`).
    """
    spec = spec or FederateSpec()
    parts = [_labeled(c, f"client {i}", ticket) for i, c in enumerate(clients)]
    if not parts:
        raise DataError("federate needs at least one client's data")
    held_out = _labeled(test, "test", ticket)
    model = copy.deepcopy(ticket.model)
    trainer = LocalTrainer(model, ticket.mask, spec, ticket.input_shape)
    codec = Codec.of(ticket.mask, spec)
    if engine == "simulator":
        from fedticket.federated.simulate import local_engine

        carrier: Any = local_engine(trainer, codec, parts)
    elif engine == "flower":
        from fedticket.flower.inprocess import InProcessFlower

        carrier = InProcessFlower(trainer, codec, parts)
    else:
        raise ConfigError(f"unknown engine {engine!r}; choose 'simulator' or 'flower'")
    strategy = TicketStrategy(codec, ticket.state, spec, seed, len(parts),
                              lambda s: trainer.evaluate(s, held_out),
                              client_sizes=[len(c) for c in parts],
                              flops_per_example=trainer.flops_per_sample)
    rows: list[dict] = []

    class _Rows:
        def on_round(self, log: RoundLog) -> None:
            if log.test_accuracy is not None:
                row = log.metrics()
                rows.append(row)
                if on_round is not None:
                    on_round(row)

    try:
        final = strategy.start(carrier, [_Rows()])
    finally:
        if hasattr(carrier, "close"):
            carrier.close()
    load_tensors(model, final)
    return Federated(model, rows, engine, trainer.compute, ticket.mask, ticket.input_shape,
                     ticket.num_classes, held_out.x[:16])


def _output_classes(model: nn.Module, probe: torch.Tensor) -> int:
    out = probe_output(model, probe, "the model")
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ConfigError("the model must return (N, classes) logits, got "
                          f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)}")
    return int(out.shape[1])


def _as_images(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what} images must be a tensor or a Dataset, got {type(x).__name__}")
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4:
        raise DataError(f"{what} images must be (N, C, H, W) or (N, H, W), got "
                        f"{tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise DataError(f"{what} images must be float in [0, 1] or uint8, got {x.dtype}")
    x = x.detach().float()
    if x.numel() and not (bool(torch.isfinite(x).all()) and x.min() >= 0 and x.max() <= 1):
        raise DataError(f"{what} images have values outside [0, 1]; scale them to [0, 1] "
                        "(fedticket's DAE reconstructs pixels in [0, 1])")
    return x.contiguous()


def _stack(items: Iterable[Any], what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    xs, ys = [], []
    for item in items:
        if isinstance(item, (tuple, list)):
            xs.append(torch.as_tensor(item[0]))
            ys.append(int(item[1]) if len(item) > 1 else None)
        else:
            xs.append(torch.as_tensor(item))
            ys.append(None)
    if not xs:
        raise DataError(f"the {what} dataset is empty")
    x = torch.stack(xs)
    y = None if any(v is None for v in ys) else torch.tensor(ys, dtype=torch.int64)
    return x, y


def _images(data: Images, what: str) -> torch.Tensor:
    if isinstance(data, Dataset) and not isinstance(data, torch.Tensor):
        x, _ = _stack((data[i] for i in range(len(data))), what)  # type: ignore[arg-type]
        data = x
    x = _as_images(data, what)
    return Unlabeled(x).x


def _labeled(data: LabeledData, what: str, ticket: Ticket) -> Labeled:
    if isinstance(data, Labeled):
        out = data
    else:
        if isinstance(data, tuple) and len(data) == 2:
            x, y = data
        elif isinstance(data, Dataset):
            x, labels = _stack((data[i] for i in range(len(data))), what)  # type: ignore
            if labels is None:
                raise DataError(f"the {what} dataset has no labels; give (image, label) items")
            y = labels
        else:
            raise DataError(f"{what} data must be (images, labels), a Labeled or a Dataset of "
                            f"(image, label), got {type(data).__name__}")
        out = Labeled(_as_images(x, what), torch.as_tensor(y).to(torch.int64))
    if tuple(out.x.shape[1:]) != ticket.input_shape:
        raise DataError(f"{what} images are {tuple(out.x.shape[1:])}, the ticket's model takes "
                        f"{ticket.input_shape}")
    if len(out) and (int(out.y.min()) < 0 or int(out.y.max()) >= ticket.num_classes):
        raise DataError(f"{what} labels must be in 0..{ticket.num_classes - 1}")
    return out
