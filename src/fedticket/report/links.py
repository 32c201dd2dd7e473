"""Wall-clock time of a finished run on slow links and slow devices, modeled from its
ledger (``fedticket compare --links PROFILE``; docs/TIME.md).

A run's ``clients.jsonl`` holds, per round and sampled client, the bytes it downloaded
(model and mask) and uploaded and the CPU seconds its work took on one core of the
machine that ran it. A profile (``src/fedticket/links.toml``, or a TOML file of the same
form) gives each client a link class (down and up rates) and a device class (its share
of such a core), drawn by the client's id from the profile's shares with a fixed seed,
so every method of a comparison sees the same population. A client's time in a round is

    t = 8 (down + mask) / down_rate + cpu_s / cpu_share + 8 up / up_rate

and the round lasts as long as its slowest client plus ``overhead_s``, the framework's
own time per round (measured on an unshaped deployment; 0 unless given). A round whose
client did work before round 1 (SSFL's saliency) is round 0, and counts. The time to a
target is the sum over rounds up to the first that reaches it.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedticket.errors import FedticketError
from fedticket.report.compare import first_reaching
from fedticket.report.intervals import against, paired_saving
from fedticket.report.runs import Run, group_by_method

PROFILES = Path(__file__).resolve().parent.parent / "links.toml"
"""The profiles fedticket ships."""
DRAW_SEED = 0x11AC
"""The seed of the draw of each client's classes (one population for every run)."""


@dataclass(frozen=True)
class LinkClass:
    name: str
    down_mbit: float
    up_mbit: float


@dataclass(frozen=True)
class DeviceClass:
    name: str
    cpu_share: float


@dataclass(frozen=True)
class Profile:
    """A population: link and device classes with their shares."""

    name: str
    links: tuple[tuple[LinkClass, float], ...]
    devices: tuple[tuple[DeviceClass, float], ...]
    overhead_s: float = 0.0

    def classes(self, client: int) -> tuple[LinkClass, DeviceClass]:
        """Client ``client``'s link and device class: a draw from the shares seeded by
        the client's id alone."""
        rng = np.random.default_rng([DRAW_SEED, client])
        u, v = rng.random(2)
        return _pick(self.links, u), _pick(self.devices, v)

    def client_s(self, client: int, down: int, up: int, cpu_s: float) -> dict[str, float]:
        """The seconds of one client's round: download, compute, upload."""
        link, device = self.classes(client)
        return {"down_s": 8 * down / (link.down_mbit * 1e6),
                "compute_s": cpu_s / device.cpu_share,
                "up_s": 8 * up / (link.up_mbit * 1e6)}


def _pick(shares: tuple[tuple[Any, float], ...], u: float) -> Any:
    total = 0.0
    for item, share in shares:
        total += share
        if u < total:
            return item
    return shares[-1][0]


def _positive(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or not math.isfinite(value):
        raise FedticketError(f"{where} must be a positive number, got {value!r}")
    return float(value)


def load_profile(name: str, overhead_s: float = 0.0) -> Profile:
    """The profile ``name`` of the shipped file, or ``FILE.toml:NAME`` of another."""
    if ".toml:" in name:
        file, _, key = name.rpartition(":")
        path = Path(file)
    else:
        path, key = PROFILES, name
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise FedticketError(f"cannot read link profiles from {path}: {e}") from None
    profiles = data.get("profiles", {})
    if key not in profiles:
        raise FedticketError(f"no link profile {key!r} in {path}; it has "
                             f"{', '.join(sorted(profiles)) or 'none'}")
    spec = profiles[key]

    def classes(kind: str, make: Any) -> tuple[tuple[Any, float], ...]:
        shares = spec.get(kind) or {}
        if not shares:
            raise FedticketError(f"link profile {key!r} names no {kind}")
        out = []
        for cls, share in shares.items():
            if cls not in data.get(kind, {}):
                raise FedticketError(f"link profile {key!r} names {kind} class {cls!r}, "
                                     f"which {path} does not define")
            out.append((make(cls, data[kind][cls]),
                        _positive(f"profiles.{key}.{kind}.{cls}", share)))
        if abs(sum(s for _, s in out) - 1.0) > 1e-9:
            raise FedticketError(f"link profile {key!r}: the {kind} shares add up to "
                                 f"{sum(s for _, s in out)}, not 1")
        return tuple(out)

    links = classes("links", lambda n, d: LinkClass(
        n, _positive(f"links.{n}.down_mbit", d.get("down_mbit")),
        _positive(f"links.{n}.up_mbit", d.get("up_mbit"))))
    devices = classes("devices", lambda n, d: DeviceClass(
        n, _positive(f"devices.{n}.cpu_share", d.get("cpu_share"))))
    if not (math.isfinite(overhead_s) and overhead_s >= 0):
        raise FedticketError(f"the per-round overhead must be >= 0 seconds, got {overhead_s}")
    return Profile(key, links, devices, overhead_s)


def round_times(run: Run, profile: Profile) -> list[dict[str, Any]]:
    """Per round of ``run``: its modeled seconds, its slowest client and that client's
    split (download, compute, upload)."""
    path = run.path / "clients.jsonl"
    try:
        records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise FedticketError(f"cannot read {path}: {e}") from None
    rounds: dict[int, dict[str, Any]] = {}
    for r in records:
        split = profile.client_s(int(r["client"]), int(r["down_bytes"]) + int(r["mask_bytes"]),
                                 int(r["up_bytes"]), float(r["cpu_s"]))
        total = sum(split.values())
        row = rounds.setdefault(int(r["round"]), {"round": int(r["round"]), "slowest_s": -1.0})
        if total > row["slowest_s"]:
            row.update(slowest_s=total, client=int(r["client"]), **split)
    out = []
    for k in sorted(rounds):
        row = rounds[k]
        out.append(row | {"seconds": row["slowest_s"] + profile.overhead_s})
    return out


def time_to_target(run: Run, target: float, profile: Profile) -> float | None:
    """Modeled seconds until the first round reaching ``target`` (None: never)."""
    row = first_reaching(run, target)
    if row is None:
        return None
    return sum(r["seconds"] for r in round_times(run, profile) if r["round"] <= row["round"])


def compare_times(runs: list[Run], target: float, profile: Profile,
                  baseline: str) -> dict[str, Any]:
    """Per method: modeled minutes to ``target`` per seed and on average, the saving
    against ``baseline`` paired by seed with its 95% interval, and its verdict."""
    groups = group_by_method(runs)
    minutes: dict[str, dict[str, float | None]] = {}
    for method, group in groups.items():
        minutes[method] = {}
        for r in group:
            s = time_to_target(r, target, profile)
            minutes[method][str(r.seed)] = None if s is None else s / 60
    out: dict[str, Any] = {"profile": profile.name, "target": target, "baseline": baseline,
                           "overhead_s": profile.overhead_s, "methods": {}}
    base = minutes.get(baseline)
    for method, seeds in minutes.items():
        reached = [v for v in seeds.values() if v is not None]
        saving = (paired_saving(seeds, base) if base is not None
                  else {"mean": None, "lo": None, "hi": None, "n": 0})
        out["methods"][method] = {
            "minutes": seeds, "reached": f"{len(reached)}/{len(seeds)}",
            "mean_minutes": sum(reached) / len(reached) if reached else None,
            "saving_pct": saving,
            "verdict": "baseline" if method == baseline else against(saving, 0.0),
        }
    return out


def format_times(result: dict[str, Any]) -> str:
    """The table ``compare --links`` prints."""
    lines = [f"modeled time to {result['target']:.2f} on profile {result['profile']} "
             f"(per-round overhead {result['overhead_s']:g} s), saving against "
             f"{result['baseline']} paired by seed, 95% interval",
             f"{'method':<24} {'reached':>7} {'minutes':>9} {'saving %':>24}  verdict"]
    for method, m in result["methods"].items():
        s = m["saving_pct"]
        mean = "-" if m["mean_minutes"] is None else f"{m['mean_minutes']:.2f}"
        sav = "-" if s["mean"] is None else (
            f"{s['mean']:.1f}" + ("" if s["lo"] is None else f" [{s['lo']:.1f}, {s['hi']:.1f}]"))
        lines.append(f"{method:<24} {m['reached']:>7} {mean:>9} {sav:>24}  {m['verdict']}")
    return "\n".join(lines)
