"""Checks on a client's reply before it may touch the global model.

A reply that fails one is dropped and logged as a failure; the round aggregates the
rest. The codec already refuses payloads of the wrong length and non-finite values;
these checks hold whatever produced the state (another codec, a Flower mod, a bug).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedticket.environment import MAX_THREADS
from fedticket.pruning.mask import Mask


def check_state(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                mask: Mask) -> str | None:
    """Why ``state`` may not be aggregated with ``reference``'s layout, or None."""
    if set(state) != set(reference):
        missing, extra = sorted(set(reference) - set(state)), sorted(set(state) - set(reference))
        return f"update has other tensors (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, ref in reference.items():
        t = state[name]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(ref.shape):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            return f"update tensor {name} has shape {shape}, expected {tuple(ref.shape)}"
        if not t.is_floating_point():
            return f"update tensor {name} has dtype {t.dtype}, expected floating point"
        if not bool(torch.isfinite(t).all()):
            return f"update tensor {name} holds values that are not finite"
        if name in mask and bool((t[~mask[name]] != 0).any()):
            return f"update tensor {name} has non-zero values outside the mask"
    return None


def check_reply_numbers(num_examples: object, train_loss: object,
                        expected_examples: int | None) -> str | None:
    """Why a reply's sample count or loss is not believable, or None. With
    ``expected_examples`` (the server knows the client's partition size) the count
    must equal it; the count weighs the update in FedAvg, so a client that inflates it
    would otherwise outvote everyone else."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        return f"reported sample count {num_examples!r} is not a positive integer"
    if expected_examples is not None and num_examples != expected_examples:
        return (f"reported sample count {num_examples} differs from the client's "
                f"partition size {expected_examples}")
    if not isinstance(train_loss, (int, float)) or not math.isfinite(train_loss):
        return f"reported train loss {train_loss!r} is not a finite number"
    return None


CLOCK_SLACK_S = 1.0
"""Seconds of rounding and clock difference allowed between a client and the server."""


def check_reply_costs(flops: object, wall_s: object, cpu_s: object,
                      expected_flops: int | None, elapsed_s: float | None = None) -> str | None:
    """Why a reply's reported costs may not enter the ledger, or None. FLOPs are a
    non-negative integer and seconds a finite non-negative number; with
    ``expected_flops`` (the server knows the mask, the client's sample count and the
    local epochs, so it knows the update's FLOPs exactly) the count must equal it. With
    ``elapsed_s`` (how long the server waited for the reply) the wall time may not
    exceed it (plus :data:`CLOCK_SLACK_S`), and CPU time may exceed wall time only by a
    thread count's factor (at most :data:`MAX_THREADS`)."""
    if isinstance(flops, bool) or not isinstance(flops, int) or flops < 0:
        return f"reported FLOPs {flops!r} are not a non-negative integer"
    if expected_flops is not None and flops != expected_flops:
        return f"reported FLOPs {flops} differ from the {expected_flops} this update costs"
    for name, value in (("wall", wall_s), ("CPU", cpu_s)):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value < 0):
            return f"reported {name} time {value!r} is not a finite number of seconds >= 0"
    assert isinstance(wall_s, (int, float)) and isinstance(cpu_s, (int, float))
    if elapsed_s is not None and wall_s > elapsed_s + CLOCK_SLACK_S:
        return (f"reported wall time {wall_s:.3g} s is longer than the {elapsed_s:.3g} s "
                "the server waited for the reply")
    if cpu_s > MAX_THREADS * wall_s + CLOCK_SLACK_S:
        return (f"reported CPU time {cpu_s:.3g} s is more than {MAX_THREADS} threads could "
                f"spend in the reported wall time {wall_s:.3g} s")
    return None
