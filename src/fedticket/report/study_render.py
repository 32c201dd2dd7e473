"""The study's summaries as markdown: the tables of a grid or a sweep, their Q1 and Q2
sentences, and the block a doc holds between ``<!-- BEGIN/END NAME -->`` markers. The
numbers and the yes / no / inconclusive answers come from :mod:`fedticket.study`; this
module only writes them down (deterministically: a test re-renders the committed
summaries and compares)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedticket.io import atomic_write_bytes
from fedticket.report.intervals import INCONCLUSIVE, MIN_SEEDS, factor
from fedticket.report.records import COSTS
from fedticket.report.table import NULL, format_stat
from fedticket.study.judge import (
    PEER_COSTS,
    Q1_BAR,
    Q2_ACCURACY_GAP,
    Q2_CPU_X,
    Q2_TRAFFIC_X,
    Q3_ACCURACY_GAP,
    Q3_CPU_X,
    Q3_TARGET,
    Q3_TRAFFIC_X,
    best_variant,
    deciding,
    peer_verdict,
    q2_candidates,
    q3_rows,
    saving,
    verdict,
)
from fedticket.study.load import BASE
from fedticket.study.questions import Questions, questions_of
from fedticket.study.summarise import read_summary


def _pct(stat: dict[str, Any]) -> str:
    """``88.4% [85.1, 91.0]``, or without the interval when there is none."""
    return _save_cell(stat, "%")


def _times(stat: dict[str, Any], fmt: str = ".1f") -> str:
    """A saving as a factor, ``22.9x [20.1, 25.3]``."""
    x = factor(stat["mean"])
    if x is None:
        return NULL
    lo, hi = factor(stat.get("lo")), factor(stat.get("hi"))
    text = f"{x:{fmt}}x"
    return text if lo is None or hi is None else f"{text} [{lo:{fmt}}, {hi:{fmt}}]"


def _acc_points(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return NULL
    text = f"{100 * stat['mean']:+.1f}"
    return text if stat.get("lo") is None else \
        f"{text} [{100 * stat['lo']:+.1f}, {100 * stat['hi']:+.1f}]"


def q2_line(best: dict[str, Any] | None, baseline: str, where: str = "") -> str:
    """The Q2 sentence of a table."""
    if best is None:
        return ("- Q2: **no**: no fedticket method reaches the target on every seed.")
    why = f"; {best['why']}" if best.get("why") and best["overall"] == INCONCLUSIVE else ""
    return (f"- Q2: **{best['overall']}** ({where}`{best['method']}`: {_times(best['traffic'])} "
            f"less traffic, {Q2_TRAFFIC_X:g}x asked; {_times(best['cpu'], '.2f')} less client "
            f"CPU time, {Q2_CPU_X:g}x asked; final accuracy {_acc_points(best['accuracy'])} "
            f"points against {baseline}, -{100 * Q2_ACCURACY_GAP:g} allowed{why}).")


def _pm(stat: dict[str, Any] | None, fmt: str, scale: float = 1.0) -> str:
    """A summary field's cell: ``mean±std`` (the mean of a single value; — for none)."""
    return format_stat(stat, scale, fmt)


def _save_cell(stat: Mapping[str, Any], unit: str = "") -> str:
    """A saving's cell: ``88.4 [85.1, 91.0]`` (``unit`` after the mean)."""
    return format_stat(stat, fmt=".1f", unit=unit)


def _has_values_per_seed(summary: dict[str, Any]) -> bool:
    return any("seeds" in f.get("final_accuracy", {}) for r in _all_results(summary)
               for f in r["methods"].values())


def _all_results(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for by in summary["results"].values():
        for value in by.values():
            out += [value] if "methods" in value else list(value.values())
    return out


def savings_note(summary: dict[str, Any]) -> str:
    """How the tables' savings were made, and why some have no interval."""
    if not _has_values_per_seed(summary):
        return (f"Savings: 100 x (1 - mean cost / {questions_of(summary).baseline}'s mean "
                "cost); this summary keeps no values per seed, so no intervals.")
    n = len(summary["seeds"])
    few = (f" With {n} seed{'s' if n != 1 else ''} there are no intervals."
           if len(summary["seeds"]) < MIN_SEEDS else "")
    return ("Savings: paired by seed, 100 x (1 - geometric mean of the per-seed cost "
            "ratios), with the 95% t-interval in brackets (none with fewer than "
            f"{MIN_SEEDS} seeds).{few}")


def probe_lines(summary: dict[str, Any]) -> list[str]:
    """One line per partition on the runs' speed probes (none before runs had them)."""
    tolerance = summary.get("probe_tolerance", 0.6)
    return [f"Speed probes, {part}: {p['min_s'] * 1e3:.0f}-{p['max_s'] * 1e3:.0f} ms over "
            f"{p['runs']} runs (spread {p['spread']:.1%}; runs more than {tolerance:.0%} "
            f"apart are not paired)." for part, p in summary.get("probes", {}).items()]


def render_sweep(summary: dict[str, Any]) -> str:
    """The markdown tables of one sweep summary: per partition and target, one row per
    (variant, method), the baseline first; savings are against it."""
    questions = questions_of(summary)
    baseline = questions.baseline
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
             + f". Runs made at commit {commits}.", savings_note(summary), ""]
    for t in summary.get("timings", []):
        lines.insert(-1, f"Sweep time: {t['ran']} of {t['runs']} runs in "
                         f"{t['wall_s'] / 60:.1f} min with `--jobs {t['jobs']}` on "
                         f"{t['cores']} cores (started {t['started']}"
                         f"{'; stopped before the end' if t.get('stopped') else ''}).")
    lines[-1:-1] = probe_lines(summary)
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
                base = result["methods"].get(baseline)
                for name, f in result["methods"].items():
                    if name == baseline and not first:
                        continue
                    n = f["final_accuracy"]["n"]
                    save = [_save_cell(saving(f, base, k)) if base and name != baseline
                            else NULL for k in COSTS]
                    lines.append(
                        f"| {BASE if name == baseline else variant} | {name} | "
                        f"{f['rounds_to_target']['n']}/{n} | "
                        f"{_pm(f['final_accuracy'], '.3f')} | {_pm(f['best_accuracy'], '.3f')} | "
                        f"{_pm(f['rounds_to_target'], '.1f')} | "
                        f"{_pm(f['traffic_bytes_to_target'], '.1f', 1e-6)} | "
                        f"{_pm(f['client_flops_to_target'], '.0f', 1e-9)} | "
                        f"{_pm(f['client_cpu_s_to_target'], '.0f')} | "
                        + " | ".join(save) + " |")
                first = False
            at_target = {v: by_target[target] for v, by_target in summary["results"][part].items()}
            lines.append("")
            if questions.q2:
                lines += [sweep_q2(at_target, questions), ""]
    return "\n".join(lines).rstrip() + "\n"


def sweep_q2(results: dict[str, Any], questions: Questions) -> str:
    """Question 2 across a sweep's variants: ``yes`` if some (variant, method) clears all
    three bars with its whole interval, ``no`` if every one fails one, else
    ``inconclusive``; with the (variant, method) that decides it (:func:`deciding`)."""
    rows = [r | {"variant": v} for v, result in results.items()
            for r in q2_candidates(result, questions)]
    best = deciding(rows)
    return q2_line(best, questions.baseline, "" if best is None else f"{best['variant']} ")


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Which of ``(bytes, accuracy)`` points no other point beats: none has at most its
    bytes and a higher accuracy, or fewer bytes and at least its accuracy."""
    return [not any((b2 <= b and a2 > a) or (b2 < b and a2 >= a) for b2, a2 in points)
            for b, a in points]


def bits_cells(summary: dict[str, Any], part: str) -> list[dict[str, Any]]:
    """Every (variant, method) of one partition of a bits sweep, the baseline first: mean
    final accuracy, the whole run's traffic and its mask share, and whether
    it is on the Pareto front of accuracy against traffic."""
    cells = []
    baseline = questions_of(summary).baseline
    results = summary["results"][part]
    for i, (variant, by_target) in enumerate(results.items()):
        for name, f in by_target[Q3_TARGET]["methods"].items():
            if name == baseline and i:
                continue
            run, mask = f.get("traffic_bytes_run") or {}, f.get("mask_bytes_run") or {}
            if f["final_accuracy"]["mean"] is None or run.get("mean") is None:
                continue
            cells.append({"variant": BASE if name == baseline else variant, "method": name,
                          "accuracy": f["final_accuracy"], "bytes": run["mean"],
                          "mask_share": (mask.get("mean") or 0.0) / run["mean"]})
    front = pareto([(c["bytes"], c["accuracy"]["mean"]) for c in cells])
    return [c | {"front": on} for c, on in zip(cells, front, strict=True)]


def q3_line(part: str, results: dict[str, Any], questions: Questions) -> str:
    """The Q3 sentence of one partition: the answer, the (variant, ticket) that decides
    it and what binds, and how many settings clear each bar."""
    rows = q3_rows(results, questions)
    best = deciding(rows)
    if best is None:
        return f"- Q3 ({part}): **no**: no setting reaches {Q3_TARGET} on every seed."
    binds = best["binds"]
    why = f"; {best['why']}" if best.get("why") and best["overall"] == INCONCLUSIVE else ""
    clear = {k: sum(1 for r in rows if r["bars"][k] == "yes" and r["reached"])
             for k in ("traffic", "CPU time", "accuracy")}
    return (f"- Q3 ({part}): **{best['overall']}** ({best['variant']} `{best['method']}`: "
            f"{_times(best['traffic'])} less traffic to {Q3_TARGET}, {Q3_TRAFFIC_X:g}x asked; "
            f"{_times(best['cpu'], '.2f')} less client CPU time, {Q3_CPU_X:g}x asked; final "
            f"accuracy {_acc_points(best['accuracy'])} points against {questions.baseline}, "
            f"-{100 * Q3_ACCURACY_GAP:g} allowed{why}"
            + (f"; not cleared: {_binds(best)}" if binds else "") + "). "
            f"Of {len(rows)} settings, {sum(r['reached'] for r in rows)} reach {Q3_TARGET} on "
            f"every seed; {clear['traffic']} clear the traffic bar, {clear['CPU time']} the "
            f"CPU bar, {clear['accuracy']} the accuracy bar, "
            f"{sum(1 for r in rows if r['answer'] == 'yes')} all three.")


def _binds(row: dict[str, Any]) -> str:
    """The bars a Q3 row does not clear, each with its answer: ``traffic (no), CPU time
    (inconclusive)``; ``rounds`` when some seed never reached the target."""
    return ", ".join(k if k == "rounds" else f"{k} ({row['bars'][k]})" for k in row["binds"])


def bits_lines(summary: dict[str, Any]) -> list[str]:
    """Per partition: every setting's final accuracy against its whole run's traffic,
    the mask's share of that traffic, the Pareto front, and the Q3 sentence."""
    lines = []
    questions = questions_of(summary)
    for part in summary["partitions"]:
        lines += [f"#### {part}: accuracy against bytes", "",
                  "Final accuracy (mean over seeds) against the whole run's traffic (every "
                  "round, down and up, masks included); ★ marks the Pareto front.", "",
                  "| variant | method | final acc | traffic MB (run) | mask share % | front |",
                  "| :-- | :-- | --: | --: | --: | :-: |"]
        for c in sorted(bits_cells(summary, part), key=lambda c: c["bytes"]):
            lines.append(f"| {c['variant']} | {c['method']} | {_pm(c['accuracy'], '.3f')} | "
                         f"{c['bytes'] / 1e6:.1f} | {100 * c['mask_share']:.1f} | "
                         f"{'★' if c['front'] else ''} |")
        lines += ["", q3_line(part, summary["results"][part], questions), "",
                  f"Every setting against Q3's bars at {Q3_TARGET} (factors against "
                  f"{questions.baseline}, "
                  "95% intervals over seeds; accuracy: final, in points):", "",
                  "| variant | method | traffic | client CPU | final accuracy | answer | "
                  "not cleared |",
                  "| :-- | :-- | --: | --: | --: | :-- | :-- |"]
        for r in q3_rows(summary["results"][part], questions):
            lines.append(f"| {r['variant']} | {r['method']} | {_times(r['traffic'])} | "
                         f"{_times(r['cpu'], '.2f')} | {_acc_points(r['accuracy'])} | "
                         f"{r['answer']} | {_binds(r)} |")
        lines.append("")
    return lines


def render(summary: dict[str, Any]) -> str:
    """The markdown tables and verdict of one study summary (deterministic): the
    questions its ``questions`` ask (:mod:`fedticket.study.questions`)."""
    questions = questions_of(summary)
    if "variants" in summary:
        text = render_sweep(summary)
        if questions.q3:
            text += "\n" + "\n".join(bits_lines(summary)).rstrip() + "\n"
        return text
    commits = ", ".join(f"`{c}`" for c in summary.get("run_commits", [])) or "?"
    lines = [f"Study `{summary['study']}` ({summary['config']}; seeds {summary['seeds']}; "
             f"overrides {summary['overrides'] or 'none'}). Runs made at commit {commits}; "
             f"summarised at `{summary['git'].get('commit', '?')[:10]}`"
             f"{' (with local changes)' if summary['git'].get('dirty') else ''}.",
             savings_note(summary), ""]
    for t in summary.get("timings", []):
        lines.insert(-1, f"Grid time: {t['ran']} of {t['runs']} runs "
                         f"({', '.join(t['partitions'])}) in {t['wall_s'] / 60:.1f} min with "
                         f"`--jobs {t['jobs']}` on {t['cores']} cores (started {t['started']}"
                         f"{'; stopped before the end' if t.get('stopped') else ''}).")
    lines[-1:-1] = probe_lines(summary)
    for part in summary["partitions"]:
        for target, result in summary["results"][part].items():
            lines += [f"### {part}, target {target}", "",
                      "| method | reached | final acc | best acc | rounds→target | "
                      "rounds→held | traffic MB | GFLOPs | CPU s | traffic save % | "
                      "GFLOPs save % | CPU save % |",
                      "| :-- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |"]
            base = result["methods"].get(questions.baseline)
            oracles = set(result.get("oracles", ()))
            for name, f in result["methods"].items():
                n = f["final_accuracy"]["n"]
                label = f"{name} (oracle)" if name in oracles else name
                save = [_save_cell(saving(f, base, k)) if base else NULL for k in COSTS]
                lines.append(
                    f"| {label} | {f['rounds_to_target']['n']}/{n} | "
                    f"{_pm(f['final_accuracy'], '.3f')} | {_pm(f['best_accuracy'], '.3f')} | "
                    f"{_pm(f['rounds_to_target'], '.1f')} | "
                    f"{_pm(f['rounds_to_target_smoothed'], '.1f')} | "
                    f"{_pm(f['traffic_bytes_to_target'], '.1f', 1e-6)} | "
                    f"{_pm(f['client_flops_to_target'], '.0f', 1e-9)} | "
                    f"{_pm(f['client_cpu_s_to_target'], '.1f')} | "
                    + " | ".join(save) + " |")
            v = verdict(result, questions)
            lines.append("")
            for base_name, ans in v.items():
                if ans is None:
                    lines.append(f"- Q1 vs `{base_name}`: no runs to compare.")
                    continue
                s = ans["savings"]
                why = f"; {ans['why']}" if ans["why"] else ""
                lines.append(
                    f"- Q1 vs `{base_name}`: **{ans['answer']}** ({questions.q1_ticket} saves "
                    f"traffic "
                    f"{_pct(s[COSTS[0]])}, FLOPs {_pct(s[COSTS[1]])}, CPU time "
                    f"{_pct(s[COSTS[2]])}; {Q1_BAR:g}% of each needed{why}).")
            if questions.q2:
                lines.append(q2_line(best_variant(result, questions), questions.baseline))
            lines.append("")
            if questions.peer_tickets:
                lines += peer_lines(result, questions)
    return "\n".join(lines).rstrip() + "\n"


def peer_lines(result: dict[str, Any], questions: Questions) -> list[str]:
    """The peers' question for one partition and target: per ticket, its traffic and
    client CPU saving against every other method, and the answer."""
    lines = []
    for ticket in questions.peer_tickets:
        v = peer_verdict(result, ticket, questions.rivals)
        if v is None:
            continue
        # the rivals first (they decide), then the other fedticket methods, marked
        order = sorted(v["methods"].items(), key=lambda kv: not kv[1]["rival"])
        wins = [n for n, r in order if r["rival"] and r["answer"] == "no"]
        # where a rival wins, that comes first
        lines += [f"- Peers: does `{ticket}` reach the target with less traffic and less "
                  f"client CPU time than dense FL and every peer? **{v['overall']}**"
                  + (f" (not against {', '.join(f'`{w}`' for w in wins)})." if wins else "."),
                  "", f"`{ticket}`'s saving against each method (above 0: it needs less):", "",
                  "| against | traffic save % | CPU save % | answer | why |",
                  "| :-- | --: | --: | :-- | :-- |"]
        for name, row in order:
            s = row["savings"]
            label = name if row["rival"] else f"{name} (fedticket)"
            lines.append(f"| {label} | {_save_cell(s[PEER_COSTS[0]])} | "
                         f"{_save_cell(s[PEER_COSTS[1]])} | {row['answer']} | "
                         f"{row['why'] or ''} |")
        lines.append("")
    return lines


def update_doc(doc: Path, summary_path: Path) -> None:
    """Put :func:`render` of the summary at ``summary_path`` into ``doc`` between the
    markers ``<!-- BEGIN NAME -->`` and ``<!-- END NAME -->`` (appended if missing)."""
    name = summary_path.name
    begin, end = f"<!-- BEGIN {name} -->\n", f"<!-- END {name} -->"
    block = begin + render(read_summary(summary_path)) + end
    text = doc.read_text() if doc.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_bytes(doc, text.encode())


def peer_result(summary: dict[str, Any], method: str, target: str = "0.80") -> str:
    """One method's cost to ``target`` per partition, for the README's peers table:
    ``142 MB, 17 CPU s / 370 MB, 42 CPU s``; the seeds that reached it when not all did
    (the mean is over those), ``never`` with the final accuracy when none did."""
    cells = []
    for by_target in summary["results"].values():
        f = by_target[target]["methods"][method]
        traffic, cpu, runs = (f["traffic_bytes_to_target"], f["client_cpu_s_to_target"],
                              f["final_accuracy"]["n"])
        if not traffic["n"]:
            cells.append(f"never (final {f['final_accuracy']['mean']:.3f})")
            continue
        cells.append(f"{traffic['mean'] / 1e6:.0f} MB, {cpu['mean']:.0f} CPU s"
                     + (f" ({traffic['n']}/{runs} seeds)" if traffic["n"] < runs else ""))
    return " / ".join(cells)
