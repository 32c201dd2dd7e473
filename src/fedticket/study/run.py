"""Running a study: every cell of its grid, finished run folders skipped (an interrupted
study resumes where it stopped), with the timing of each invocation."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from fedticket.errors import ConfigError
from fedticket.io import git_commit
from fedticket.paths import is_finished
from fedticket.study.load import Study, cells


def run_study(study: Study, out: Path, jobs: int = 1, stream: TextIO | None = sys.stderr,
              partitions: tuple[str, ...] = (), workers: int | None = None) -> Path:
    """Run every cell (finished ones are skipped) into one folder, ``OUT/STUDY``, so the
    partitions share the server stages' cache (pretraining once per seed)."""
    from fedticket.runner import client_workers, run_parallel

    grid = cells(study)
    unknown = set(partitions) - set(grid)
    if unknown:
        raise ConfigError(f"the study has no partition {sorted(unknown)}; it has "
                          f"{', '.join(grid)}")
    specs = [s for name, group in grid.items() if not partitions or name in partitions
             for s in group]
    workers = client_workers(jobs, workers)
    folder = out / study.folder_name
    if stream:
        print(f"study {study.name}: {len(specs)} runs in {folder}", file=stream, flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    before = _finished(folder)
    started, start = time.time(), time.perf_counter()
    stopped = True
    try:
        run_parallel(specs, folder, jobs, stream, workers)
        stopped = False
    finally:  # an interrupted invocation records what it made, marked as stopped
        record: dict[str, Any] = {
            "study": study.name,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "partitions": sorted(partitions) or list(grid),
            "runs": len(specs),
            "ran": len(_finished(folder) - before),
            "jobs": jobs,
            "workers": workers,
            "cores": os.cpu_count(),
            "wall_s": round(time.perf_counter() - start, 1),
            "git": git_commit(),
            **({"stopped": True} if stopped else {}),
        }
        with open(folder / TIMING, "a") as fh:  # one line per invocation, appended
            fh.write(json.dumps(record) + "\n")
    if stream:
        print(f"study {study.name}: {record['ran']} of {len(specs)} runs made in "
              f"{record['wall_s'] / 60:.1f} min", file=stream, flush=True)
    return folder


TIMING = "_timing.jsonl"


def _finished(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()
            if p.is_dir() and not p.name.startswith((".", "_")) and is_finished(p)}


def timings(folder: Path, study: str) -> list[dict[str, Any]]:
    """The invocations of ``study`` that made runs (``_timing.jsonl``), oldest first."""
    path = folder / TIMING
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("ran") and r.get("study", study) == study]
