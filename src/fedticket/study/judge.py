"""Judging a study: savings with paired intervals and the yes / no / inconclusive answers
to its questions (Q1 against each baseline, Q2 and Q3 over the sweeps' variants, and the
peers' question), from a summary only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from fedticket.report.compare import saving_pct
from fedticket.report.intervals import (
    INCONCLUSIVE,
    MIN_SEEDS,
    NO,
    YES,
    against,
    all_of,
    any_of,
    factor,
    paired_difference,
    seeds_to_settle,
)
from fedticket.report.records import COSTS, Cost, MethodResult, Stat
from fedticket.study.questions import Questions


def _mean(stat: dict[str, Any] | None) -> float | None:
    return None if stat is None else stat.get("mean")


def saving(fields: MethodResult, base: MethodResult, key: Cost) -> Stat:
    """The saving of ``key`` against ``base`` with its 95% interval, paired by seed
    (:func:`~fedticket.report.compare.saving_pct`); mean None unless every seed of both
    reached the target."""
    return saving_pct(fields[key], base[key], fields["final_accuracy"]["n"],
                      base["final_accuracy"]["n"])


def _saving(fields: MethodResult, base: MethodResult, key: Cost) -> float | None:
    return saving(fields, base, key)["mean"]


Q1_BAR = 35.0
"""Question 1's bar: percent saved of traffic, FLOPs and client CPU time to the target."""
Q2_TRAFFIC_X, Q2_CPU_X, Q2_ACCURACY_GAP = 25.0, 3.0, 0.005
"""Question 2's bars: 25x less traffic, 3x less client CPU time, and a final accuracy
no more than 0.5 points below the baseline's."""
COST_NAMES = {"traffic_bytes_to_target": "traffic", "client_flops_to_target": "FLOPs",
              "client_cpu_s_to_target": "CPU time"}


def _missed(fields: dict, key: str) -> int:
    return fields["final_accuracy"]["n"] - fields[key]["n"]


def _settle(stats: dict[str, tuple[Mapping[str, Any], float]], log_scale: dict[str, bool]) -> str:
    """What would settle an inconclusive answer: the straddling intervals, and how many
    seeds would clear them if their means and spreads held."""
    parts, needs = [], []
    for name, (stat, bar) in stats.items():
        if against(stat, bar) != INCONCLUSIVE:
            continue
        if stat.get("lo") is None and stat.get("n", 0) >= MIN_SEEDS:
            return ("this summary keeps no values per seed, so no interval; summarising "
                    "its runs again would settle it")
        if stat.get("lo") is None:
            return (f"{stat.get('n', 0)} seeds: no interval with fewer than {MIN_SEEDS}; "
                    f"{MIN_SEEDS} or more seeds would settle it")
        parts.append(name)
        needs.append(seeds_to_settle(stat, bar, log_scale.get(name, True)))
    if not parts:
        return ""
    known = [n for n in needs if n is not None]
    more = (f"about {max(known)} seeds would settle it if the means and spreads held"
            if len(known) == len(needs) else "its mean is too close to the bar for more "
            "seeds to settle it soon")
    verb = "interval of {} straddles" if len(parts) == 1 else "intervals of {} straddle"
    return f"the {verb.format(' and '.join(parts))} the bar; {more}"


def verdict(result: dict[str, Any], questions: Questions) -> dict[str, Any]:
    """Question 1 for one partition and target: does the study's Q1 ticket (the paper's
    method, ``dae-ticket``) reach the target with at least 35% less traffic and 35% less
    client compute (FLOPs and CPU time) than each method Q1 names? Per such method
    ``{"answer", "savings", "why"}``: ``yes`` when every saving's 95% interval over seeds
    is above 35%, ``no`` when one is below it (or some seed of the ticket never reached
    the target), ``inconclusive`` otherwise (:mod:`fedticket.report.intervals`)."""
    methods = result["methods"]
    name = questions.q1_ticket
    ticket = methods.get(name)
    answer: dict[str, Any] = {}
    for base_name in questions.q1_against:
        base = methods.get(base_name)
        if ticket is None or base is None:
            answer[base_name] = None
            continue
        savings = {k: saving(ticket, base, k) for k in COSTS}
        n = ticket["final_accuracy"]["n"]
        if _missed(ticket, COSTS[0]):
            word, why = NO, (f"{name} never reached the target on "
                             f"{_missed(ticket, COSTS[0])} of {n} seeds")
        elif _missed(base, COSTS[0]):
            word, why = INCONCLUSIVE, (
                f"{base_name} never reached the target on {_missed(base, COSTS[0])} of "
                f"{base['final_accuracy']['n']} seeds, so there is no saving to measure")
        else:
            word = all_of([against(v, Q1_BAR) for v in savings.values()])
            why = "" if word != INCONCLUSIVE else _settle(
                {COST_NAMES[k]: (v, Q1_BAR) for k, v in savings.items()}, {})
        answer[base_name] = {"answer": word, "savings": savings, "why": why}
    return answer


PEER_COSTS: tuple[Cost, ...] = ("traffic_bytes_to_target", "client_cpu_s_to_target")
"""What 'less' means against a peer: traffic and client CPU time to the target."""
RUN_COSTS = {"traffic_bytes_to_target": "traffic_bytes_run",
             "client_cpu_s_to_target": "client_cpu_s_run"}
"""Each peer cost's whole-run counterpart: a lower bound where the target was missed."""


def at_least(fields: dict[str, Any], key: str) -> dict[str, Any] | None:
    """``fields[key]`` with each seed that never reached the target given its whole run's
    cost instead (:data:`RUN_COSTS`): a lower bound on what that seed would have needed.
    None when the summary keeps no whole-run costs per seed."""
    run = fields.get(RUN_COSTS[key], {}).get("seeds")
    seeds = fields[key].get("seeds")
    if not run or seeds is None:
        return None
    bound = {s: v if v is not None else run.get(s) for s, v in seeds.items()}
    if any(v is None for v in bound.values()):
        return None
    return {"seeds": bound, "n": len(bound), "mean": sum(bound.values()) / len(bound)}


def peer_verdict(result: dict[str, Any], ticket: str,
                 rivals: tuple[str, ...]) -> dict[str, Any] | None:
    """The peers' question for one partition and target: does ``ticket`` reach the target
    with less traffic and less client CPU time than each other method of the grid? Per
    method ``{"answer", "savings", "why", "rival"}``, and ``overall`` (``yes`` only if it
    is ``yes`` against every one of ``rivals`` in the grid: the study's ``[questions]
    peers.rivals``; the grid's other methods get a row but do not decide it). ``yes`` when both
    savings' 95% intervals are above 0, ``no`` when one is below 0 or ``ticket`` missed
    the target on some seed; ``yes`` too when the other method never reached the target
    on any seed while ``ticket`` did on every one; ``inconclusive`` otherwise."""
    methods = result["methods"]
    mine = methods.get(ticket)
    if mine is None:
        return None
    n = mine["final_accuracy"]["n"]
    rows: dict[str, Any] = {}
    for name, other in methods.items():
        if name == ticket:
            continue
        savings = {k: saving(mine, other, k) for k in PEER_COSTS}
        missed, other_missed = _missed(mine, COSTS[0]), _missed(other, COSTS[0])
        if missed:
            word, why = NO, f"{ticket} never reached the target on {missed} of {n} seeds"
        elif other_missed == other["final_accuracy"]["n"]:
            word, why = YES, f"{name} never reached the target"
        elif other_missed:
            word, why = INCONCLUSIVE, (f"{name} never reached the target on {other_missed} "
                                       f"of {other['final_accuracy']['n']} seeds")
            bounds = {k: at_least(other, k) for k in PEER_COSTS}
            if all(b is not None for b in bounds.values()):
                low = {k: saving(mine, cast(MethodResult, {**other, k: b}), k)
                       for k, b in bounds.items()}
                if all_of([against(v, 0.0) for v in low.values()]) == YES:
                    savings, word = low, YES
                    why += ("; with its whole run's cost there (a lower bound), "
                            "both savings are still above 0")
        else:
            word = all_of([against(v, 0.0) for v in savings.values()])
            why = "" if word != INCONCLUSIVE else _settle(
                {COST_NAMES[k]: (v, 0.0) for k, v in savings.items()}, {})
        rows[name] = {"answer": word, "savings": savings, "why": why,
                      "rival": name in rivals}
    return {"overall": all_of([r["answer"] for r in rows.values() if r["rival"]]),
            "methods": rows}


def q2_candidates(result: dict[str, Any], questions: Questions) -> list[dict[str, Any]]:
    """Question 2 per method the study's Q2 names: does it end within 0.5 points of the
    baseline's final accuracy with 25x less traffic and 3x less client CPU time to the
    target? Each row has the paired accuracy difference, the two savings (factors: ``traffic_x``,
    ``cpu_x``) and its ``answer``; a method some seed of which never reached the target
    is ``no``."""
    return candidates(result, Q2_TRAFFIC_X, Q2_CPU_X, Q2_ACCURACY_GAP, questions.q2)


def candidates(result: dict[str, Any], traffic_x: float, cpu_x: float, gap: float,
               methods: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per method of ``methods``: does it end within ``gap`` of the baseline's (the
    result's ``baseline``) final accuracy with ``traffic_x`` times less traffic and
    ``cpu_x`` times less client CPU time to the target, each interval over seeds on the
    right side of its bar? Each row also names the bars that are not cleared (``binds``:
    ``rounds`` when some seed never reached the target)."""
    methods_ = result["methods"]
    base = methods_.get(result["baseline"])
    if base is None:
        return []
    rows = []
    # a run with other values is labelled ``dae-ticket+q8`` (method_label): its variant
    # names the values, so the row keeps the method's name
    found = [(name, f) for name in methods for label, f in methods_.items()
             if label == name or label.startswith(name + "+")]
    for name, f in found:
        acc = paired_difference(f["final_accuracy"].get("seeds", {}),
                                base["final_accuracy"].get("seeds", {}))
        if acc["mean"] is None and not f["final_accuracy"].get("seeds"):  # an old summary
            a, b = _mean(f["final_accuracy"]), _mean(base["final_accuracy"])
            acc = {"mean": None if None in (a, b) else a - b, "lo": None, "hi": None,  # type: ignore[operator]
                   "n": min(f["final_accuracy"]["n"], base["final_accuracy"]["n"])}
        traffic = saving(f, base, "traffic_bytes_to_target")
        cpu = saving(f, base, "client_cpu_s_to_target")
        reached = not (_missed(f, COSTS[0]) or _missed(base, COSTS[0]))
        bars = {"accuracy": (acc, -gap),
                "traffic": (traffic, 100 * (1 - 1 / traffic_x)),
                "CPU time": (cpu, 100 * (1 - 1 / cpu_x))}
        answers = {k: against(v, bar) for k, (v, bar) in bars.items()}
        word = all_of(list(answers.values())) if reached else NO
        binds = ([] if reached else ["rounds"]) + [k for k, a in answers.items()
                                                   if reached and a != YES]
        rows.append({"method": name, "answer": word, "reached": reached, "accuracy": acc,
                     "traffic": traffic, "cpu": cpu, "traffic_x": factor(traffic["mean"]),
                     "cpu_x": factor(cpu["mean"]), "binds": binds, "bars": answers,
                     "why": "" if word != INCONCLUSIVE else _settle(bars, {"accuracy": False})})
    return rows


Q3_TRAFFIC_X, Q3_CPU_X, Q3_ACCURACY_GAP = 100.0, 10.0, 0.005
"""Question 3's bars (the bits sweep, docs/BITS.md): 100x less traffic, 10x less client
CPU time to 0.80, and a final accuracy no more than 0.5 points below the baseline's."""
Q3_TARGET = "0.80"


def q3_rows(results: dict[str, Any], questions: Questions) -> list[dict[str, Any]]:
    """Question 3 for one partition of a sweep (variant -> target -> result): every
    (variant, method of the study's Q3) row at :data:`Q3_TARGET`."""
    return [r | {"variant": v} for v, by_target in results.items() if Q3_TARGET in by_target
            for r in candidates(by_target[Q3_TARGET], Q3_TRAFFIC_X, Q3_CPU_X,
                                Q3_ACCURACY_GAP, questions.q3)]


def deciding(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of Q2 rows, the one that decides the answer: a ``yes``; else, with the answer
    ``inconclusive``, the inconclusive one with the largest traffic factor; else the one
    with the largest traffic factor of those every seed of which reached the target."""
    word = any_of([r["answer"] for r in rows])
    pool = [r for r in rows if r["answer"] == word] if word != NO else \
        [r for r in rows if r["reached"] and r["traffic_x"] is not None]
    pool.sort(key=lambda r: -(r["traffic_x"] or 0.0))
    return pool[0] | {"overall": word} if pool else None


def best_variant(result: dict[str, Any], questions: Questions) -> dict[str, Any] | None:
    """Question 2's answer (``overall``) and the method that decides it (:func:`deciding`)."""
    return deciding(q2_candidates(result, questions))
