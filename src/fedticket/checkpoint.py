"""Checkpoints of a run in progress, so a killed run resumes where it stopped.

A checkpoint is one ``.npz`` in the run's temporary folder, replaced atomically after
every ``federate.checkpoint_every`` rounds (and after round 0): the global model and,
as JSON, the strategy's state (sampling generator, mask holders, targets reached,
ledger), the round and the run's name. The metrics files are flushed first, so they
always hold at least the checkpoint's rounds; on resume, lines of later rounds are cut.
It is read as plain arrays (``allow_pickle=False``): nothing in it is unpickled.

What simulated clients keep between rounds (error-feedback residuals, one model-sized
vector each), and what the server keeps per client (the model each holds, under
``federate.download = change``), is too large to rewrite every round; each client's
vector is written once when it changes, as ``memory/KEY-ROUND.npy``
(``residual-7-12.npy``: client 7's residual as of round 12), and the checkpoint names
the file of each key, so a resumed run reads exactly what its clients held then.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedticket import paths
from fedticket.errors import FedticketError
from fedticket.federated.strategy import Memory, RoundLog, TicketStrategy
from fedticket.io import atomic_write, atomic_write_text, load_states, save_states

FORMAT = 1


class CheckpointError(FedticketError):
    """A checkpoint that cannot be used (damaged, foreign, of another spec): exit 2."""


def save(folder: Path, round_: int, strategy: TicketStrategy, run_name: str,
         memory: dict[str, int] | None = None) -> None:
    """Checkpoint ``strategy`` after ``round_``; ``memory`` names, by key, the round of
    the file that holds it (:class:`MemoryFiles`)."""
    state, meta = strategy.state_dict()
    blob = json.dumps({"format": FORMAT, "run_name": run_name, "round": round_,
                       "threads": torch.get_num_threads(), "strategy": meta,
                       "memory": dict(sorted((memory or {}).items()))})
    save_states(folder / paths.CHECKPOINT, {
        "global": state, "meta": {"json": torch.frombuffer(bytearray(blob.encode()),
                                                          dtype=torch.uint8)}})


def load(folder: Path, run_name: str) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(round, global state, meta)`` of the checkpoint in ``folder``, or None if there
    is none. A checkpoint that cannot be read, or that belongs to another run, is an
    error naming the file."""
    path = folder / paths.CHECKPOINT
    if not path.is_file():
        return None
    try:
        groups = load_states(path)
        meta = json.loads(bytes(groups["meta"]["json"].numpy()).decode())
        state = groups["global"]
        round_ = meta["round"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged ({type(e).__name__}); delete "
                              f"{folder} to start the run over") from None
    if meta.get("format") != FORMAT or meta.get("run_name") != run_name:
        raise CheckpointError(f"checkpoint {path} belongs to run {meta.get('run_name')!r}, "
                              f"not {run_name!r}; move {folder} away")
    if not isinstance(round_, int) or round_ < 0 or not all(
            isinstance(t, torch.Tensor) and t.is_floating_point() for t in state.values()):
        raise CheckpointError(f"checkpoint {path} is damaged (bad round or tensors); delete "
                              f"{folder} to start the run over")
    return round_, state, meta


SERVER_PREFIX = "holds-"
"""The keys of :class:`MemoryFiles` that are the server's, not a client's."""


class MemoryFiles:
    """The simulated clients' residuals on disk, beside the checkpoint: a client's file
    is written when its residual changed since the last checkpoint, and removed once a
    later checkpoint names a newer one."""

    def __init__(self, folder: Path, memory: Memory, server: Memory | None = None):
        self.dir, self.memory = folder / paths.MEMORY, memory
        self.server = {} if server is None else server
        """What the server keeps per client (``holds-7``: the model client 7 holds, under
        ``federate.download = change``), kept the same way."""
        self.files: dict[str, int] = {}  # key -> round of its file
        self._saved: dict[str, np.ndarray] = {}  # the arrays those files hold

    def write(self, round_: int) -> dict[str, int]:
        """Write what changed; return the files a checkpoint of ``round_`` names."""
        for key, value in sorted({**self.memory, **self.server}.items()):
            if self._saved.get(key) is not value:
                with atomic_write(self.dir / f"{key}-{round_}.npy") as f:
                    np.save(f, value, allow_pickle=False)
                self.files[key], self._saved[key] = round_, value
        return dict(self.files)

    def prune(self) -> None:
        """Remove the files no checkpoint names any more."""
        named = {f"{k}-{r}.npy" for k, r in self.files.items()}
        for path in self.dir.glob("*.npy") if self.dir.is_dir() else ():
            if path.name not in named:
                path.unlink()

    def load(self, named: dict[str, int]) -> None:
        """Read back the files a checkpoint names into the memory."""
        for key, round_ in named.items():
            path = self.dir / f"{key}-{round_}.npy"
            try:
                residual = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise CheckpointError(f"client memory {path} is missing or damaged "
                                      f"({type(e).__name__}); delete {self.dir.parent} to "
                                      "start the run over") from None
            (self.server if key.startswith(SERVER_PREFIX) else self.memory)[key] = residual
            self.files[key], self._saved[key] = round_, residual


class Checkpointer:
    """A round callback: flush ``flushables``, then checkpoint after round 0, every
    ``every`` rounds and after the last round (``every`` 0: never), with the
    simulated clients' ``memory`` if there is one."""

    def __init__(self, folder: Path, strategy: TicketStrategy, run_name: str, every: int,
                 rounds: int, flushables: list[Any], memory: MemoryFiles | None = None):
        self.folder, self.strategy, self.run_name = folder, strategy, run_name
        self.every, self.rounds, self.flushables = every, rounds, flushables
        self.memory = memory
        self.last: int | None = None

    def on_round(self, log: RoundLog) -> None:
        if self.every <= 0 or (log.round % self.every and log.round != self.rounds):
            return
        for f in self.flushables:
            f.flush()
        named = None if self.memory is None else self.memory.write(log.round)
        save(self.folder, log.round, self.strategy, self.run_name, named)
        if self.memory is not None:
            self.memory.prune()
        self.last = log.round


def trim_jsonl(path: Path, last_round: int) -> list[dict]:
    """Keep the rows of ``path`` up to ``last_round``; a half-written final line (the
    process was killed while writing it) is dropped. Returns the kept rows."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise CheckpointError(f"{path} line {i + 1} is damaged; delete {path.parent} "
                                  "to start the run over") from None
        if row.get("round", 0) <= last_round:
            rows.append(row)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write_text(path, text)
    return rows
