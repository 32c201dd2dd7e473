"""Every artifact's file name, in one place."""

from __future__ import annotations

from pathlib import Path

SPEC = "spec.json"
MASK_REPORT = "mask_report.json"
METRICS = "metrics.jsonl"
CLIENTS = "clients.jsonl"
FAILURES = "failures.jsonl"
SUMMARY = "summary.json"
MASK = "mask.npz"
CACHE_DIR = "_cache"


def run_dir(out: Path, run_name: str) -> Path:
    return out / run_name


def tmp_run_dir(out: Path, run_name: str, pid: int) -> Path:
    """Where a run is written before it is renamed into place (hidden from ``compare``)."""
    return out / f".tmp-{run_name}-{pid}"


def tmp_run_dirs(out: Path, run_name: str) -> list[tuple[Path, int]]:
    """Every temporary folder of ``run_name`` under ``out``, with the pid that made it."""
    found = []
    for p in out.glob(f".tmp-{run_name}-*"):
        pid = p.name.rsplit("-", 1)[1]
        if pid.isdigit():
            found.append((p, int(pid)))
    return found


def pretrain_cache(out: Path, stage_hash: str) -> Path:
    """Initial and pretrained weights of one (data, model, pretrain, seed)."""
    return out / CACHE_DIR / f"pretrain-{stage_hash}.npz"


def prune_cache(out: Path, stage_hash: str) -> Path:
    """Mask and final server weights of one (data, model, pretrain, prune, seed)."""
    return out / CACHE_DIR / f"prune-{stage_hash}.npz"


def is_finished(run: Path) -> bool:
    return (run / SUMMARY).is_file()
