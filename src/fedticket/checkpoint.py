"""Checkpoints of a run in progress, so a killed run resumes where it stopped.

A checkpoint is one ``.npz`` in the run's temporary folder, replaced atomically after
every ``federate.checkpoint_every`` rounds (and after round 0): the global model and,
as JSON, the strategy's state (sampling generator, mask holders, targets reached,
ledger), the round and the run's name. The metrics files are flushed first, so they
always hold at least the checkpoint's rounds; on resume, lines of later rounds are cut.
It is read as plain arrays (``allow_pickle=False``): nothing in it is unpickled.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch

from fedticket import paths
from fedticket.errors import FedticketError
from fedticket.federated.strategy import RoundLog, TicketStrategy
from fedticket.io import atomic_write_text, load_states, save_states

FORMAT = 1


class CheckpointError(FedticketError):
    """A checkpoint that cannot be used (damaged, foreign, of another spec): exit 2."""


def save(folder: Path, round_: int, strategy: TicketStrategy, run_name: str) -> None:
    state, meta = strategy.state_dict()
    blob = json.dumps({"format": FORMAT, "run_name": run_name, "round": round_,
                       "threads": torch.get_num_threads(), "strategy": meta})
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


class Checkpointer:
    """A round callback: flush ``flushables``, then checkpoint after round 0, every
    ``every`` rounds and after the last round (``every`` 0: never)."""

    def __init__(self, folder: Path, strategy: TicketStrategy, run_name: str, every: int,
                 rounds: int, flushables: list[Any]):
        self.folder, self.strategy, self.run_name = folder, strategy, run_name
        self.every, self.rounds, self.flushables = every, rounds, flushables
        self.last: int | None = None

    def on_round(self, log: RoundLog) -> None:
        if self.every <= 0 or (log.round % self.every and log.round != self.rounds):
            return
        for f in self.flushables:
            f.flush()
        save(self.folder, log.round, self.strategy, self.run_name)
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
