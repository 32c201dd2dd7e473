"""Short runs of every preset of configs/quick.toml and configs/peers.toml, reduced to the
numbers that must not move when the code is reorganised: per-round test accuracy, the
cumulative bytes down, up and of masks, and the cumulative client FLOPs.

``python tests/preset_runs.py`` writes them to ``tests/data/presets.json`` (done once
with the code before a refactoring, then committed); ``test_presets.py`` runs the same
and compares exactly. ``python tests/preset_runs.py METHOD ...`` records only those
presets again and keeps every other row as it is: for a method whose behaviour is
changed on purpose (the commit says why). Timings are left out: they are measured, not
computed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fedticket.runner import run_one
from fedticket.spec import ExperimentSpec, apply_overrides, load_config, with_method

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "data" / "presets.json"

CONFIGS = {"quick": ROOT / "configs" / "quick.toml",
           "peers": ROOT / "configs" / "study-base.toml"}
"""Where each preset list's base settings come from (peers.toml names study-base.toml)."""

SHRINK = {"data.pool_size": 300, "data.train_size": 600, "data.test_size": 300,
          "data.num_clients": 5, "pretrain.epochs": 1, "federate.rounds": 2,
          "federate.client_fraction": 0.4, "federate.local_epochs": 1,
          "federate.batch_size": 10, "federate.eval_every": 1,
          "prune.synflow_iterations": 5}
"""Small enough for seconds a run, the mechanism of every preset intact (FedDST readjusts
in round 1, SSFL's clients score before it)."""

KEYS = ("test_accuracy", "cum_down_bytes", "cum_up_bytes", "cum_mask_bytes",
        "cum_client_flops")


def preset_methods() -> dict[str, list[str]]:
    """The presets each config names, in its order."""
    import tomllib

    quick = tomllib.loads((ROOT / "configs" / "quick.toml").read_text())["methods"]
    peers = tomllib.loads((ROOT / "configs" / "peers.toml").read_text())["study"]["methods"]
    return {"quick": list(quick), "peers": list(peers)}


def preset_spec(config: str, method: str) -> ExperimentSpec:
    base = load_config(CONFIGS[config]).base
    return apply_overrides(with_method(base, method), SHRINK)


def run_preset(config: str, method: str, out: Path) -> list[dict]:
    """The rows of one short run, reduced to :data:`KEYS` (a run folder already in
    ``out``, of the same spec from the other config, is read, not run again)."""
    spec = preset_spec(config, method)
    folder = out / spec.run_name()
    if not (folder / "metrics.jsonl").is_file():
        folder = run_one(spec, out, stream=None)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{"round": r["round"], **{k: r[k] for k in KEYS}} for r in rows]


def record(out: Path) -> dict:
    torch.set_num_threads(1)
    got: dict[str, dict[str, list[dict]]] = {}
    for config, methods in preset_methods().items():
        got[config] = {m: run_preset(config, m, out) for m in methods}
    return got


if __name__ == "__main__":
    import tempfile

    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        if only:
            torch.set_num_threads(1)
            result = json.loads(FIXTURE.read_text())
            for config, methods in preset_methods().items():
                kept = result.get(config, {})
                result[config] = {m: run_preset(config, m, Path(tmp)) if m in only
                                  else kept[m] for m in methods}
        else:
            result = record(Path(tmp))
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)
