"""Loading a study: its file, its grid of cells (partitions x methods x seeds) and its
variants (a sweep's settings), as experiment specs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedticket.errors import ConfigError
from fedticket.spec import METHODS, ExperimentSpec, load_config, parse_set, read_toml
from fedticket.study.questions import Questions, parse_questions


@dataclass(frozen=True)
class Study:
    name: str
    config: Path
    partitions: tuple[str, ...]
    seeds: tuple[int, ...]
    targets: tuple[float, ...]
    overrides: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    """A subset of the base config's methods (empty: all of them)."""
    variants: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = ()
    """A sweep: (name, ``--set`` items, methods) per variant; each runs for its own
    methods or, when it names none, the study's. ``fedavg`` (the baseline) runs once per
    partition with none of the settings."""
    runs: str = ""
    """The run folder's name under OUT (default: the study's name). Sweeps share the
    main grid's, so its finished cells and server stages are reused."""

    questions: Questions = Questions()
    """What the study asks (its ``[questions]``), kept in its summary."""

    @property
    def folder_name(self) -> str:
        return self.runs or self.name


def partition_settings(name: str) -> list[str]:
    """``--set`` items of a partition name: ``iid``, ``dirichlet-0.5``, ``shards-2``."""
    kind, _, arg = name.partition("-")
    try:
        if kind == "iid" and not arg:
            return ['data.partition="iid"']
        if kind == "dirichlet":
            return ['data.partition="dirichlet"', f"data.dirichlet_alpha={float(arg)}"]
        if kind == "shards":
            return ['data.partition="shards"', f"data.shards_per_client={int(arg)}"]
    except ValueError:
        pass
    raise ConfigError(f"unknown partition {name!r}; use iid, dirichlet-ALPHA or shards-K")


def load_study(path: str | Path, quick: bool = False) -> Study:
    """Read a study file; with ``quick``, apply its ``[quick]`` section."""
    p = Path(path)
    raw = read_toml(p, "study")
    unknown = set(raw) - {"study", "quick", "variants", "questions"}
    if unknown or "study" not in raw:
        raise ConfigError(f"{p} needs a [study] section (and optionally [quick], "
                          f"[variants], [questions]); unknown: {sorted(unknown)}")
    base, q = raw["study"], raw.get("quick", {})
    keys = {"config", "partitions", "seeds", "targets", "methods", "runs"}
    for section, allowed, d in (("study", keys, base),
                                ("quick", {"partitions", "seeds", "targets", "set"}, q)):
        extra = set(d) - allowed
        if extra:
            raise ConfigError(f"unknown keys in [{section}] of {p}: {sorted(extra)}")
    merged = base | (q if quick else {})
    try:
        targets = tuple(float(t) for t in merged["targets"])
        study = Study(
            name=p.stem + ("-quick" if quick else ""),
            config=p.parent / str(merged["config"]),
            partitions=tuple(str(x) for x in merged["partitions"]),
            seeds=tuple(int(s) for s in merged["seeds"]),
            targets=targets,
            overrides=tuple(str(x) for x in (q.get("set", []) if quick else [])),
            methods=tuple(str(m) for m in merged.get("methods", [])),
            variants=tuple(_variant(p, str(k), v) for k, v in raw.get("variants", {}).items()),
            runs=str(merged.get("runs", "")) + ("-quick" if quick and "runs" in merged else ""),
            questions=parse_questions(raw.get("questions", {}), str(p)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{p}: [study] needs config, partitions, seeds and targets ({e})"
                          ) from None
    for t in study.targets:
        if not 0 < t <= 1:
            raise ConfigError(f"{p}: targets are accuracies in (0, 1], got {t}")
    for name in study.partitions:
        partition_settings(name)
    cells(study)  # unknown methods and bad settings fail here, before any run
    return study


def _variant(p: Path, name: str, value: Any) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """``NAME = ["--set item", ...]`` or ``NAME = {set = [...], methods = [...]}``."""
    if isinstance(value, list):
        value = {"set": value}
    if not isinstance(value, dict) or set(value) - {"set", "methods"} or not all(
            isinstance(x, list) and all(isinstance(i, str) for i in x) for x in value.values()):
        raise ConfigError(f"{p}: variant {name!r} must be a list of --set items or a table "
                          "with lists `set` and `methods`")
    items = tuple(value.get("set", []))
    parse_set(list(items))
    return name, items, tuple(value.get("methods", []))


def cells(study: Study) -> dict[str, list[ExperimentSpec]]:
    """The specs of every partition, in order (every variant's, for a sweep)."""
    return {part: [spec for group in by_variant.values() for spec in group]
            for part, by_variant in variant_cells(study).items()}


BASE = "base"
"""The variant name of a sweep's baseline runs (the base config, no variant settings)."""


def variant_cells(study: Study) -> dict[str, dict[str, list[ExperimentSpec]]]:
    """partition -> variant -> specs. A plain study has one variant, ``base``; a sweep
    has ``base`` (its baseline method's runs) and then its named variants."""
    config = replace(load_config(study.config), seeds=study.seeds)
    unknown = [m for m in (*study.methods, *(m for v in study.variants for m in v[2]))
               if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown methods {unknown} in the study; choose from "
                          f"{', '.join(METHODS)}")
    if study.methods:
        config = replace(config, methods=study.methods)
    targets = "[" + ", ".join(str(t) for t in study.targets) + "]"
    out: dict[str, dict[str, list[ExperimentSpec]]] = {}
    for name in study.partitions:
        items = [*partition_settings(name), *study.overrides, f"federate.targets={targets}"]
        if not study.variants:
            out[name] = {BASE: config.specs(parse_set(items))}
            continue
        baseline = replace(config, methods=(study.questions.baseline,))
        out[name] = {BASE: baseline.specs(parse_set(items))}
        for variant, settings, methods in study.variants:
            mine = replace(config, methods=methods) if methods else config
            out[name][variant] = mine.specs(parse_set([*items, *settings]))
    return out
