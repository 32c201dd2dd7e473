"""The reproduction study: one experiment config run under several client partitions,
summarised into small JSON files and rendered into tables and a verdict.

A study file (``configs/study.toml``) names the base experiment, the partitions
(``iid``, ``dirichlet-ALPHA``, ``shards-K``), the seeds and the targets; ``[quick]`` holds
overrides for a small smoke-test grid. :func:`run_study` runs every cell (finished run
folders are skipped, so an interrupted study resumes where it stopped);
:func:`summarize` keeps what the tables need; :func:`render` turns a summary into
markdown. The tables in ``docs/REPRODUCTION.md`` are :func:`render`'s output on the
committed summaries in ``docs/results/``, and a test checks that they still are.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from fedticket.errors import ConfigError
from fedticket.io import git_commit, versions
from fedticket.paths import is_finished
from fedticket.report.compare import compare
from fedticket.report.runs import load_run
from fedticket.report.study_plots import curves, plot_curves, plot_sweep, provenance
from fedticket.spec import METHODS, ExperimentSpec, load_config, parse_set

COSTS = ("traffic_bytes_to_target", "client_flops_to_target", "client_cpu_s_to_target")


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
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"study file not found: {p}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p} is not a valid TOML study file: {e}") from None
    unknown = set(raw) - {"study", "quick", "variants"}
    if unknown or "study" not in raw:
        raise ConfigError(f"{p} needs a [study] section (and optionally [quick], "
                          f"[variants]); unknown: {sorted(unknown)}")
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
    has ``base`` (its fedavg baseline) and then its named variants."""
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
        baseline = replace(config, methods=("fedavg",))
        out[name] = {BASE: baseline.specs(parse_set(items))}
        for variant, settings, methods in study.variants:
            mine = replace(config, methods=methods) if methods else config
            out[name][variant] = mine.specs(parse_set([*items, *settings]))
    return out


def run_study(study: Study, out: Path, jobs: int = 1, stream: TextIO | None = sys.stderr,
              partitions: tuple[str, ...] = ()) -> Path:
    """Run every cell (finished ones are skipped) into one folder, ``OUT/STUDY``, so the
    partitions share the server stages' cache (pretraining once per seed)."""
    from fedticket.runner import run_parallel

    grid = cells(study)
    unknown = set(partitions) - set(grid)
    if unknown:
        raise ConfigError(f"the study has no partition {sorted(unknown)}; it has "
                          f"{', '.join(grid)}")
    specs = [s for name, group in grid.items() if not partitions or name in partitions
             for s in group]
    folder = out / study.folder_name
    if stream:
        print(f"study {study.name}: {len(specs)} runs in {folder}", file=stream, flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    before = _finished(folder)
    started, start = time.time(), time.perf_counter()
    stopped = True
    try:
        run_parallel(specs, folder, jobs, stream)
        stopped = False
    finally:  # an interrupted invocation records what it made, marked as stopped
        record: dict[str, Any] = {
            "study": study.name,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "partitions": sorted(partitions) or list(grid),
            "runs": len(specs),
            "ran": len(_finished(folder) - before),
            "jobs": jobs,
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


KEPT_FIELDS = ("final_accuracy", "best_accuracy", "rounds_to_target",
               "rounds_to_target_smoothed", *COSTS, "client_wall_s_to_target")


def _slim(result: dict[str, Any]) -> dict[str, Any]:
    """A compare result with only the fields the study's tables use (savings are
    recomputed from the means when rendering)."""
    return result | {"methods": {m: {k: f[k] for k in KEPT_FIELDS}
                                 for m, f in result["methods"].items()}}


def summarize(study: Study, folder: Path) -> dict[str, Any]:
    """What the tables need: per partition (and variant, for a sweep) and target,
    ``compare``'s result against ``fedavg`` over the grid's finished runs, plus the
    provenance of the runs. Runs are found by the names the grid's specs give them, so
    other studies' runs in a shared folder never enter."""
    grid = variant_cells(study)
    parts: dict[str, Any] = {}
    curve_data: dict[str, Any] = {}
    used = []
    for name, by_variant in grid.items():
        runs = {v: [load_run(folder / s.run_name()) for s in specs
                    if is_finished(folder / s.run_name())]
                for v, specs in by_variant.items()}
        if not any(runs.values()):
            continue
        for group in runs.values():
            used += group
        if not study.variants:
            parts[name] = {f"{t:.2f}": _slim(compare(runs[BASE], target=t, baseline="fedavg"))
                           for t in study.targets}
            curve_data[name] = curves(runs[BASE])
            continue
        parts[name] = {v: {f"{t:.2f}": _slim(compare(runs[BASE] + runs[v], target=t,
                                                     baseline="fedavg"))
                           for t in study.targets}
                       for v, _, _ in study.variants if runs[v]}
    summary = {
        "study": study.name,
        "config": study.config.name,
        "partitions": list(parts),
        "seeds": list(study.seeds),
        "targets": list(study.targets),
        "overrides": list(study.overrides),
        "git": git_commit(),
        "run_commits": sorted({str((r.spec.get("git") or {}).get("commit", "?"))[:10]
                               + ("+dirty" if (r.spec.get("git") or {}).get("dirty") else "")
                               for r in used}),
        "versions": versions(),
        "timings": [{k: r[k] for k in ("started", "partitions", "runs", "ran", "jobs",
                                         "cores", "wall_s", "stopped") if k in r}
                    for r in timings(folder, study.name)],
        "results": parts,
    }
    if curve_data:
        summary["curves"] = curve_data
    if study.variants:
        summary["methods"] = list(study.methods)
        summary["variants"] = {v: {"set": list(items), "methods": list(m or study.methods)}
                               for v, items, m in study.variants}
    return summary


def _mean(stat: dict[str, Any] | None) -> float | None:
    return None if stat is None else stat.get("mean")


def _fmt(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _saving(fields: dict, base: dict, key: str) -> float | None:
    m, b = _mean(fields.get(key)), _mean(base.get(key))
    n, bn = fields["final_accuracy"]["n"], base["final_accuracy"]["n"]
    if m is None or b is None or b == 0 or fields[key]["n"] < n or base[key]["n"] < bn:
        return None
    return 100 * (1 - m / b)


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """Question 1 for one partition and target: does ``dae-ticket`` reach the target with
    at least 35% less traffic and 35% less client compute (FLOPs and CPU time) than
    ``fedavg`` and than ``fedavg-dae``? Every seed must reach it."""
    methods = result["methods"]
    ticket = methods.get("dae-ticket")
    answer: dict[str, Any] = {}
    for base_name in ("fedavg", "fedavg-dae"):
        base = methods.get(base_name)
        if ticket is None or base is None:
            answer[base_name] = None
            continue
        savings = {k: _saving(ticket, base, k) for k in COSTS}
        ok = all(v is not None and v >= 35.0 for v in savings.values())
        answer[base_name] = {"yes": ok, "savings_pct": savings}
    return answer


def q2_candidates(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Question 2's candidates: fedticket's own methods whose final accuracy is within
    0.5 points of ``fedavg``'s, every seed of both reaching the target, with their
    traffic and client-CPU-time ratios to ``fedavg``."""
    methods = result["methods"]
    base = methods.get("fedavg")
    if base is None:
        return []
    rows = []
    for name in ("dae-ticket", "dae-ticket-fast", "dae-ticket-rewind"):
        f = methods.get(name)
        if f is None:
            continue
        acc, bacc = _mean(f["final_accuracy"]), _mean(base["final_accuracy"])
        t, bt = _mean(f["traffic_bytes_to_target"]), _mean(base["traffic_bytes_to_target"])
        c, bc = _mean(f["client_cpu_s_to_target"]), _mean(base["client_cpu_s_to_target"])
        if None in (acc, bacc, t, bt, c, bc) or not t or not c:
            continue
        if any(g[k]["n"] < g["final_accuracy"]["n"] for g in (f, base)
               for k in ("traffic_bytes_to_target", "client_cpu_s_to_target")):
            continue  # a seed that never reached the target: no ratio can be claimed
        assert acc is not None and bacc is not None and t and bt and c and bc
        if bacc - acc > 0.005:
            continue
        rows.append({"method": name, "accuracy_gap": bacc - acc, "traffic_x": bt / t,
                     "cpu_x": bc / c})
    return rows


def best_variant(result: dict[str, Any]) -> dict[str, Any] | None:
    """Question 2: of :func:`q2_candidates`, the one with the largest traffic ratio to
    target (how far its traffic and client-time ratios are from 25x and 3x)."""
    rows = q2_candidates(result)
    return max(rows, key=lambda r: r["traffic_x"]) if rows else None


def _pm(stat: dict[str, Any] | None, fmt: str, scale: float = 1.0) -> str:
    """``mean±std`` (or just the mean of a single value; — when there is none)."""
    if not stat or stat.get("mean") is None:
        return "—"
    if stat.get("n", 0) > 1 and stat.get("std") is not None:
        return f"{stat['mean'] * scale:{fmt}}±{stat['std'] * scale:{fmt}}"
    return f"{stat['mean'] * scale:{fmt}}"


def render_sweep(summary: dict[str, Any]) -> str:
    """The markdown tables of one sweep summary: per partition and target, one row per
    (variant, method), the fedavg baseline first; savings are against it."""
    commits = ", ".join(f"`{c}`" for c in summary.get("run_commits", [])) or "?"
    def describe(v: dict[str, list[str]]) -> str:
        text = f"`{' '.join(v['set'])}`" if v["set"] else "the base settings"
        if v["methods"] != summary["methods"]:
            text += f" ({', '.join(v['methods'])})"
        return text

    lines = [f"Sweep `{summary['study']}` ({summary['config']}; methods "
             f"{', '.join(summary['methods'])}; seeds {summary['seeds']}). Variants: "
             + "; ".join(f"**{name}** {describe(v)}" for name, v in
                         summary["variants"].items())
             + f". Runs made at commit {commits}.", ""]
    for t in summary.get("timings", []):
        lines.insert(-1, f"Sweep time: {t['ran']} of {t['runs']} runs in "
                         f"{t['wall_s'] / 60:.1f} min with `--jobs {t['jobs']}` on "
                         f"{t['cores']} cores (started {t['started']}"
                         f"{'; stopped before the end' if t.get('stopped') else ''}).")
    for part in summary["partitions"]:
        for target in (f"{t:.2f}" for t in summary["targets"]):
            lines += [f"#### {part}, target {target}", "",
                      "| variant | method | reached | final acc | best acc | rounds→target | "
                      "traffic MB | GFLOPs | CPU s | traffic save % | GFLOPs save % | "
                      "CPU save % |",
                      "| :-- | :-- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |"]
            first = True
            for variant, by_target in summary["results"][part].items():
                result = by_target[target]
                base = result["methods"].get("fedavg")
                for name, f in result["methods"].items():
                    if name == "fedavg" and not first:
                        continue
                    n = f["final_accuracy"]["n"]
                    save = [_saving(f, base, k) if base and name != "fedavg" else None
                            for k in COSTS]
                    lines.append(
                        f"| {BASE if name == 'fedavg' else variant} | {name} | "
                        f"{f['rounds_to_target']['n']}/{n} | "
                        f"{_pm(f['final_accuracy'], '.3f')} | {_pm(f['best_accuracy'], '.3f')} | "
                        f"{_pm(f['rounds_to_target'], '.1f')} | "
                        f"{_pm(f['traffic_bytes_to_target'], '.1f', 1e-6)} | "
                        f"{_pm(f['client_flops_to_target'], '.0f', 1e-9)} | "
                        f"{_pm(f['client_cpu_s_to_target'], '.0f')} | "
                        + " | ".join(_fmt(v, ".1f") for v in save) + " |")
                first = False
            at_target = {v: by_target[target] for v, by_target in summary["results"][part].items()}
            lines += ["", sweep_q2(at_target), ""]
    return "\n".join(lines).rstrip() + "\n"


def sweep_q2(results: dict[str, Any]) -> str:
    """Question 2 across a sweep's variants: every (variant, method) within 0.5 points of
    fedavg that reaches 25x less traffic and 3x less client CPU time, and the one with
    the largest traffic factor."""
    rows = [(v, r) for v, result in results.items() for r in q2_candidates(result)]
    if not rows:
        return ("- Q2: no fedticket variant ends within 0.5 points of fedavg with every "
                "seed reaching the target.")
    met = [f"{v} `{r['method']}` ({r['traffic_x']:.1f}x, {r['cpu_x']:.2f}x)"
           for v, r in rows if r["traffic_x"] >= 25 and r["cpu_x"] >= 3]
    v, b = max(rows, key=lambda row: row[1]["traffic_x"])
    return (f"- Q2 (final accuracy within 0.5 points of fedavg, every seed reaching the "
            f"target): largest traffic factor {v} `{b['method']}`, {b['traffic_x']:.1f}x less "
            f"traffic and {b['cpu_x']:.2f}x less client CPU time. 25x less traffic and 3x "
            f"less client CPU time both met by: {', '.join(met) or 'none'}.")


def render(summary: dict[str, Any]) -> str:
    """The markdown tables and verdict of one study summary (deterministic)."""
    if "variants" in summary:
        return render_sweep(summary)
    commits = ", ".join(f"`{c}`" for c in summary.get("run_commits", [])) or "?"
    lines = [f"Study `{summary['study']}` ({summary['config']}; seeds {summary['seeds']}; "
             f"overrides {summary['overrides'] or 'none'}). Runs made at commit {commits}; "
             f"summarised at `{summary['git'].get('commit', '?')[:10]}`"
             f"{' (with local changes)' if summary['git'].get('dirty') else ''}.", ""]
    for t in summary.get("timings", []):
        lines.insert(-1, f"Grid time: {t['ran']} of {t['runs']} runs "
                         f"({', '.join(t['partitions'])}) in {t['wall_s'] / 60:.1f} min with "
                         f"`--jobs {t['jobs']}` on {t['cores']} cores (started {t['started']}"
                         f"{'; stopped before the end' if t.get('stopped') else ''}).")
    for part in summary["partitions"]:
        for target, result in summary["results"][part].items():
            lines += [f"### {part}, target {target}", "",
                      "| method | reached | final acc | best acc | rounds→target | "
                      "rounds→held | traffic MB | GFLOPs | CPU s | traffic save % | "
                      "GFLOPs save % | CPU save % |",
                      "| :-- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |"]
            base = result["methods"].get("fedavg")
            oracles = set(result.get("oracles", ()))
            for name, f in result["methods"].items():
                n = f["final_accuracy"]["n"]
                label = f"{name} (oracle)" if name in oracles else name
                save = [_saving(f, base, k) if base else None for k in COSTS]
                lines.append(
                    f"| {label} | {f['rounds_to_target']['n']}/{n} | "
                    f"{_pm(f['final_accuracy'], '.3f')} | {_pm(f['best_accuracy'], '.3f')} | "
                    f"{_pm(f['rounds_to_target'], '.1f')} | "
                    f"{_pm(f['rounds_to_target_smoothed'], '.1f')} | "
                    f"{_pm(f['traffic_bytes_to_target'], '.1f', 1e-6)} | "
                    f"{_pm(f['client_flops_to_target'], '.0f', 1e-9)} | "
                    f"{_pm(f['client_cpu_s_to_target'], '.1f')} | "
                    + " | ".join(_fmt(v, ".1f") for v in save) + " |")
            v = verdict(result)
            lines.append("")
            for base_name, ans in v.items():
                if ans is None:
                    lines.append(f"- Q1 vs `{base_name}`: no runs to compare.")
                    continue
                s = ans["savings_pct"]
                lines.append(
                    f"- Q1 vs `{base_name}`: **{'yes' if ans['yes'] else 'no'}** "
                    f"(dae-ticket saves traffic {_fmt(s[COSTS[0]], '.1f')}%, FLOPs "
                    f"{_fmt(s[COSTS[1]], '.1f')}%, CPU time {_fmt(s[COSTS[2]], '.1f')}%; "
                    "35% of each needed, every seed reaching the target).")
            b = best_variant(result)
            if b is None:
                lines.append("- Q2: no fedticket variant ends within 0.5 points of fedavg "
                             "and reaches the target.")
            else:
                lines.append(
                    f"- Q2: best within 0.5 points of fedavg: `{b['method']}`, "
                    f"{b['traffic_x']:.1f}x less traffic (25x asked) and {b['cpu_x']:.1f}x less "
                    f"client CPU time (3x asked) to the target.")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def update_doc(doc: Path, summary_path: Path) -> None:
    """Put :func:`render` of the summary at ``summary_path`` into ``doc`` between the
    markers ``<!-- BEGIN NAME -->`` and ``<!-- END NAME -->`` (appended if missing)."""
    from fedticket.io import atomic_write_bytes

    name = summary_path.name
    begin, end = f"<!-- BEGIN {name} -->\n", f"<!-- END {name} -->"
    block = begin + render(read_summary(summary_path)) + end
    text = doc.read_text() if doc.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_bytes(doc, text.encode())


def write_summary(summary: dict[str, Any], path: Path) -> None:
    from fedticket.io import atomic_write_json

    atomic_write_json(path, summary)


def read_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def plot_summary(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """The study's figures from its summary: accuracy curves per partition for a grid,
    one panel figure for a sweep."""
    if "variants" in summary:
        return [plot_sweep(summary, out_dir)]
    return [p for part, by_method in summary.get("curves", {}).items()
            for p in plot_curves(summary["study"], part, by_method, summary["targets"], out_dir,
                                 note=provenance(summary))]
