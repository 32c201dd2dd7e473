"""A run folder's life: a hidden temporary folder, the files written while it runs,
and the rename into place when it is complete.

An interrupted run never leaves a half-written run folder; temporary folders left by
dead processes are removed before the same run starts again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from fedticket import paths
from fedticket.errors import FedticketError
from fedticket.federated.strategy import RoundLog


def in_run_folder(
    out: Path, name: str, write: Callable[[Path], None], stream: TextIO | None, label: str
) -> Path:
    """Call ``write(tmp)`` on a fresh temporary folder and rename it to ``out/name``.

    A finished folder of the same name is returned untouched; an unfinished one is an
    error (it is not ours to delete).
    """
    final = paths.run_dir(out, name)
    if final.exists():
        if paths.is_finished(final):
            if stream:
                print(f"{label}: finished already in {final}, skipped", file=stream)
            return final
        raise FedticketError(f"{final} exists but is not a finished run; move it away and rerun")
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out, name)
    tmp = paths.tmp_run_dir(out, name, os.getpid())
    tmp.mkdir()
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _remove_stale_tmp(out: Path, run_name: str) -> None:
    """Delete temporary folders of this run left by processes that no longer exist."""
    for tmp, pid in paths.tmp_run_dirs(out, run_name):
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # another live process is writing this run
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(tmp, ignore_errors=True)


class MetricsWriter:
    """Appends one JSON line per evaluated round to ``metrics.jsonl`` and per client to
    ``clients.jsonl``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.metrics = open(folder / paths.METRICS, "w")
        self.clients = open(folder / paths.CLIENTS, "w")
        self.failures: TextIO | None = None
        self.rows: list[dict] = []

    def on_round(self, log: RoundLog) -> None:
        for rec in log.clients:
            self.clients.write(json.dumps(rec.row()) + "\n")
        for f in log.failures:
            if self.failures is None:
                self.failures = open(self.folder / paths.FAILURES, "w")
            self.failures.write(json.dumps(f.__dict__) + "\n")
            self.failures.flush()
        if log.test_accuracy is not None:
            row = log.metrics()
            self.rows.append(row)
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()

    def close(self) -> None:
        self.metrics.close()
        self.clients.close()
        if self.failures is not None:
            self.failures.close()


class Progress:
    """Prints a line per evaluated round."""

    def __init__(self, label: str, rounds: int, stream: TextIO | None):
        self.label, self.rounds, self.stream = label, rounds, stream

    def on_round(self, log: RoundLog) -> None:
        if self.stream is None:
            return
        for f in log.failures:
            print(f"  {self.label} round {f.round:>3}: client {f.client} lost: {f.reason}",
                  file=self.stream, flush=True)
        if log.test_accuracy is None:
            return
        t = log.totals
        print(
            f"  {self.label} round {log.round:>3}/{self.rounds}  acc {log.test_accuracy:.4f}  "
            f"traffic {(t.down_bytes + t.up_bytes) / 1e6:8.2f} MB  "
            f"client {t.client_flops / 1e9:8.2f} GFLOP {t.client_cpu_s:7.2f} CPU s",
            file=self.stream,
            flush=True,
        )


