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
from fedticket.io import atomic_write_text, fsync_folder, fsync_tree


def in_run_folder(
    out: Path, name: str, write: Callable[[Path], None], stream: TextIO | None, label: str
) -> Path:
    """Call ``write(tmp)`` on the run's temporary folder and rename it to ``out/name``.

    A finished folder of the same name is returned untouched; an unfinished one is an
    error (it is not ours to delete). The temporary folder of a run that was killed
    after a checkpoint is reused (``write`` resumes from it); one without a checkpoint
    is started afresh. If ``write`` fails, the folder is kept only if it holds a
    checkpoint to resume from. The checkpoint is removed only once the finished folder
    is in place, so no moment of a run's life is without one after round 0.
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
    tmp = paths.tmp_run_dir(out, name)
    if tmp.exists():
        owner = _owner(tmp)
        if owner is not None and owner != os.getpid() and _alive(owner):
            raise FedticketError(f"run {name} is being written by process {owner} "
                                 f"(in {tmp}); wait for it or stop it")
        if not (tmp / paths.CHECKPOINT).is_file():
            shutil.rmtree(tmp)
    tmp.mkdir(exist_ok=True)
    atomic_write_text(tmp / paths.OWNER, str(os.getpid()))
    try:
        write(tmp)
        (tmp / paths.OWNER).unlink()
        fsync_tree(tmp)  # all of it on disk before it takes the finished name
        os.replace(tmp, final)
        fsync_folder(out)
        # only now: until the rename, a kill leaves the checkpoint to resume from
        (final / paths.CHECKPOINT).unlink(missing_ok=True)
        shutil.rmtree(final / paths.MEMORY, ignore_errors=True)
    except BaseException:
        if (tmp / paths.CHECKPOINT).is_file():
            (tmp / paths.OWNER).unlink(missing_ok=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _owner(tmp: Path) -> int | None:
    try:
        text = (tmp / paths.OWNER).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(out: Path, run_name: str) -> None:
    """Delete temporary folders of this run left by processes that no longer exist."""
    for tmp, pid in paths.tmp_run_dirs(out, run_name):
        if pid != os.getpid() and _alive(pid):
            continue  # another live process is writing this run
        shutil.rmtree(tmp, ignore_errors=True)


class MetricsWriter:
    """Appends one JSON line per evaluated round to ``metrics.jsonl`` and per client to
    ``clients.jsonl``."""

    def __init__(self, folder: Path, resume_after: int | None = None):
        """``resume_after``: continue files kept from a checkpoint after that round
        (their later rows are cut); None: start them afresh."""
        self.folder = folder
        self.rows: list[dict] = []
        mode = "w"
        if resume_after is not None:
            from fedticket.checkpoint import trim_jsonl

            self.rows = trim_jsonl(folder / paths.METRICS, resume_after)
            trim_jsonl(folder / paths.CLIENTS, resume_after)
            trim_jsonl(folder / paths.FAILURES, resume_after)
            mode = "a"
        self.metrics = open(folder / paths.METRICS, mode)
        self.clients = open(folder / paths.CLIENTS, mode)
        self.failures: TextIO | None = None
        if resume_after is not None and (folder / paths.FAILURES).is_file():
            self.failures = open(folder / paths.FAILURES, "a")

    def flush(self) -> None:
        """Flush and fsync the files: called before each checkpoint, so the rows of the
        rounds a checkpoint covers are on disk whenever it is."""
        for f in (self.metrics, self.clients, self.failures):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())

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


