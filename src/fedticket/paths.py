"""Every artifact's file name, in one place."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

SPEC = "spec.json"
MASK_REPORT = "mask_report.json"
METRICS = "metrics.jsonl"
CLIENTS = "clients.jsonl"
FAILURES = "failures.jsonl"
SUMMARY = "summary.json"
MASK = "mask.npz"
CHECKPOINT = "checkpoint.npz"
MEMORY = "memory"
"""The simulated clients' residuals beside the checkpoint (:mod:`fedticket.checkpoint`)."""
FINAL = "final.npz"
OWNER = "owner.pid"
CACHE_DIR = "_cache"


def run_dir(out: Path, run_name: str) -> Path:
    return out / run_name


def tmp_run_dir(out: Path, run_name: str) -> Path:
    """Where a run is written before it is renamed into place (hidden from ``compare``);
    a killed run's checkpoint waits here for the run to be started again."""
    return out / f".tmp-{run_name}"


def tmp_run_dirs(out: Path, run_name: str) -> list[tuple[Path, int]]:
    """Temporary folders of ``run_name`` in the older per-process form
    ``.tmp-NAME-PID``, with that pid."""
    found = []
    for p in out.glob(f".tmp-{run_name}-*"):
        pid = p.name.rsplit("-", 1)[1]
        if pid.isdigit():
            found.append((p, int(pid)))
    return found


STAGE_CODE = ("data", "models", "pretrain", "pruning", "stages.py", "flops.py",
              "io.py")
"""The package's files whose code decides what the server stages compute."""


@functools.cache
def stage_code_hash() -> str:
    """Hash of the server stages' source (:data:`STAGE_CODE`) and torch's version: part
    of every stage cache's name, so a cache made by other code is never reused (it is
    recomputed instead, beside the old file)."""
    import torch

    return code_hash(Path(__file__).resolve().parent, STAGE_CODE, torch.__version__)


def code_hash(root: Path, parts: tuple[str, ...], salt: str = "") -> str:
    """Hash of the ``.py`` files under ``root`` named by ``parts`` (folders or files)."""
    h = hashlib.sha256(salt.encode())
    for rel in parts:
        files = sorted((root / rel).rglob("*.py")) if (root / rel).is_dir() else [root / rel]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:8]


def pretrain_cache(out: Path, stage_hash: str) -> Path:
    """Initial and pretrained weights of one (data, model, pretrain, seed), made by this
    code."""
    return out / CACHE_DIR / f"pretrain-{stage_hash}-{stage_code_hash()}.npz"


def prune_cache(out: Path, stage_hash: str) -> Path:
    """Mask and final server weights of one (data, model, pretrain, prune, seed), made by
    this code."""
    return out / CACHE_DIR / f"prune-{stage_hash}-{stage_code_hash()}.npz"


def is_finished(run: Path) -> bool:
    return (run / SUMMARY).is_file()
