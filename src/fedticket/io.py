"""Atomic file writes, safe state files and provenance."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from fedticket.errors import FedticketError


@contextmanager
def atomic_write(path: Path) -> Iterator[IO[bytes]]:
    """A binary file to write ``path`` through, so that after a crash or a power loss
    readers find the old file or the whole new one, never part of it: the bytes go to a
    temporary file beside ``path``, which is fsynced, renamed over ``path``, and then the
    folder is fsynced so that the rename is on disk too. On any error (a full disk, a
    read-only folder) the temporary file is removed and ``path`` is untouched. Every
    file fedticket writes goes through here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make the entries of ``folder`` (files created, renamed or removed) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and every folder in it: before a finished run
    folder is renamed into place, all it holds is on disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_folder(Path(root))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (:func:`atomic_write`)."""
    with atomic_write(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_states(path: Path, states: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Save named state dicts as one ``.npz`` (``group/param`` keys), atomically.

    ``.npz`` read with ``allow_pickle=False`` cannot run code, unlike a pickle.
    """
    arrays = {
        f"{group}/{name}": t.detach().cpu().numpy()
        for group, state in states.items()
        for name, t in state.items()
    }
    with atomic_write(path) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; any way it can be wrong (missing, unreadable, not
    UTF-8, not JSON, nested too deeply, not an object) is one :class:`FedticketError`
    naming the file, then ``fix``."""
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise FedticketError(f"missing {path}; {fix}") from None
    except RecursionError:
        raise FedticketError(f"{path} is nested too deeply to be ours; {fix}") from None
    except (OSError, ValueError) as e:  # JSON and UTF-8 errors are ValueErrors
        raise FedticketError(f"cannot read {path} ({e}); {fix}") from None
    if not isinstance(obj, dict):
        raise FedticketError(f"{path} holds a JSON {type(obj).__name__}, not an object; "
                             f"{fix}")
    return obj


def load_states(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            group, name = key.split("/", 1)
            out.setdefault(group, {})[name] = torch.from_numpy(z[key].copy())
    return out


def git_commit() -> dict[str, Any]:
    """Commit of the source tree this package runs from, and whether it had local changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def versions() -> dict[str, str]:
    from fedticket._version import __version__

    return {
        "fedticket": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "torch_threads": str(torch.get_num_threads()),
    }
