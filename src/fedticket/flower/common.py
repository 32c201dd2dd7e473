"""What both Flower apps share: record keys, the spec in the run config, threads, bytes."""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedticket.environment import env_threads, thread_count
from fedticket.errors import FedticketError
from fedticket.spec import ExperimentSpec, spec_from_dict

RECORD = "fedticket"
"""Key of the ConfigRecord that carries fedticket's payloads and metadata."""

RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "spec": "",          # ExperimentSpec.to_dict() as JSON; required
    "out": "runs",       # results directory on the ServerApp's machine
    "threads": 0,        # torch threads in every fedticket process (0 = torch's default)
    "min-replies": 1,    # a round with fewer usable replies stops the run
    "round-timeout": 600.0,  # seconds to wait for a round's replies
    "node-wait": 120.0,  # seconds to wait for every partition's node at the start
    "end-file": "",      # a JSON file the ServerApp writes when the run ends ("" = none)
}


def spec_from_run_config(run_config: dict[str, Any]) -> ExperimentSpec:
    """The experiment spec the run was started with (``spec`` in the run config)."""
    raw = run_config.get("spec", "")
    if not raw:
        raise FedticketError("the run config has no 'spec'; start the run with fedticket deploy "
                             "or pass --run-config with a spec written by fedticket")
    if not isinstance(raw, str):
        raise FedticketError("the run config's 'spec' must be a JSON string")
    try:
        spec = json.loads(raw)
    except (ValueError, RecursionError):
        raise FedticketError("the run config's 'spec' is not valid JSON; start the run with "
                             "fedticket deploy or a run config written by fedticket") from None
    if not isinstance(spec, dict):
        raise FedticketError("the run config's 'spec' must hold a JSON object")
    return spec_from_dict(spec)


def set_threads(*configs: dict[str, Any]) -> int:
    """Set torch's thread count from the first config that names a positive ``threads``
    (then ``FEDTICKET_THREADS``); return the count in use.

    Every SuperNode on a machine starts its own ClientApp process: with torch's default
    threads each, they oversubscribe the cores (measured 28x slower client updates on 2
    cores), and the count also changes floating-point results.
    """
    import torch  # here: a process that answers only a query never imports it

    for cfg in configs:
        n = thread_count(cfg.get("threads", 0), "the config's threads")
        if n > 0:
            torch.set_num_threads(n)
            return n
    n = env_threads()
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def framework_bytes(msg: Message) -> int:
    """Bytes Flower moves for ``msg``: the deflated size of every object it is made of
    (records, arrays, metadata), as Flower's object store sends them (chunks that repeat
    within a message go once; transport envelopes are not included)."""
    return sum(len(o.deflate()) for o in get_all_nested_objects(msg).values())


def get(record: Any, key: str, kind: type) -> Any:
    """``record[key]`` checked to be a ``kind`` (ints are not bools, floats may be ints):
    replies come from other machines, so their fields are checked, not trusted."""
    if key not in record:
        raise ValueError(f"record has no {key!r}")
    v = record[key]
    ok = isinstance(v, kind) and not (isinstance(v, bool) and kind is not bool)
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v, ok = float(v), True
    if not ok:
        raise ValueError(f"{key!r} is a {type(v).__name__}, expected {kind.__name__}")
    return v
