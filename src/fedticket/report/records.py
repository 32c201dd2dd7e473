"""The result records: what :func:`~fedticket.report.compare.compare` returns, what a
study summary keeps, and the one place each metric's name is defined.

A summary is JSON, so the records are ``TypedDict`` s: the files stay as they are, and
the type checker rejects a misspelt field anywhere a record is read (``mypy`` runs in
CI). Every other module takes the names from here: the costs to a target and the row
keys they are summed from (:data:`COST_FIELDS`), the whole run's costs
(:data:`RUN_FIELDS`), the savings against the baseline (:data:`SAVING_FIELDS`), and
the fields a study summary keeps (:data:`KEPT_FIELDS`).
"""

from __future__ import annotations

from typing import Literal, TypedDict, get_args


class Stat(TypedDict, total=False):
    """One field over seeds: mean and sample std of the non-null values and their count;
    ``seeds`` holds the value per seed (None where it was not reached) when the runs can
    be paired, ``lo``/``hi`` a saving's 95% interval."""

    mean: float | None
    std: float | None
    n: int
    lo: float | None
    hi: float | None
    seeds: dict[str, float | None]


Cost = Literal["rounds_to_target", "traffic_bytes_to_target", "client_flops_to_target",
               "client_wall_s_to_target", "client_cpu_s_to_target"]
"""A cost to reach the target: its value at the first round a run reaches it."""
RunCost = Literal["traffic_bytes_run", "client_cpu_s_run", "mask_bytes_run"]
"""A whole run's cost (its last metrics row): a lower bound on a missed target's cost."""
SavingField = Literal["traffic_saving_pct", "client_flops_saving_pct",
                      "client_wall_s_saving_pct", "client_cpu_s_saving_pct",
                      "rounds_saving_pct"]

COST_FIELDS: dict[Cost, tuple[str, ...]] = {
    "rounds_to_target": ("round",),
    "traffic_bytes_to_target": ("cum_down_bytes", "cum_up_bytes"),
    "client_flops_to_target": ("cum_client_flops",),
    "client_wall_s_to_target": ("cum_client_wall_s",),
    "client_cpu_s_to_target": ("cum_client_cpu_s",),
}
"""Each cost to a target -> the metrics row's keys summed at the first round reaching it."""
RUN_FIELDS: dict[RunCost, tuple[str, ...]] = {
    "traffic_bytes_run": ("cum_down_bytes", "cum_up_bytes"),
    "client_cpu_s_run": ("cum_client_cpu_s",),
    "mask_bytes_run": ("cum_mask_bytes",),
}
"""Each whole-run cost -> the keys of the run's last metrics row it sums."""
SAVING_FIELDS: dict[SavingField, Cost] = {
    "traffic_saving_pct": "traffic_bytes_to_target",
    "client_flops_saving_pct": "client_flops_to_target",
    "client_wall_s_saving_pct": "client_wall_s_to_target",
    "client_cpu_s_saving_pct": "client_cpu_s_to_target",
    "rounds_saving_pct": "rounds_to_target",
}
"""Each saving against the baseline -> the cost it compares."""

assert set(get_args(Cost)) == set(COST_FIELDS) and set(get_args(RunCost)) == set(RUN_FIELDS)
assert set(get_args(SavingField)) == set(SAVING_FIELDS)

JudgedCost = Literal["traffic_bytes_to_target", "client_flops_to_target",
                     "client_cpu_s_to_target"]
"""The costs a study's first question judges: traffic, FLOPs and client CPU time."""
COSTS: tuple[JudgedCost, ...] = get_args(JudgedCost)


class KeptFields(TypedDict, total=False):
    """A method's fields that a study summary keeps (:data:`KEPT_FIELDS`)."""

    final_accuracy: Stat
    best_accuracy: Stat
    rounds_to_target: Stat
    rounds_to_target_smoothed: Stat
    traffic_bytes_to_target: Stat
    client_flops_to_target: Stat
    client_cpu_s_to_target: Stat
    client_wall_s_to_target: Stat
    traffic_bytes_run: Stat
    client_cpu_s_run: Stat
    mask_bytes_run: Stat


class MethodResult(KeptFields, total=False):
    """Everything :func:`~fedticket.report.compare.compare` gives one method: the kept
    fields, the smoothed costs, the savings against the baseline and the mask density."""

    traffic_bytes_to_target_smoothed: Stat
    client_flops_to_target_smoothed: Stat
    client_wall_s_to_target_smoothed: Stat
    client_cpu_s_to_target_smoothed: Stat
    traffic_saving_pct: Stat
    client_flops_saving_pct: Stat
    client_wall_s_saving_pct: Stat
    client_cpu_s_saving_pct: Stat
    rounds_saving_pct: Stat
    density: Stat


KEPT_FIELDS: tuple[str, ...] = tuple(KeptFields.__annotations__)
"""The fields of each method a study summary keeps (the tables need no others)."""

assert {f"{c}_smoothed" for c in COST_FIELDS} | set(SAVING_FIELDS) | set(KEPT_FIELDS) | {
    "density"} == set(MethodResult.__annotations__) | set(KEPT_FIELDS)


class TargetResult(TypedDict):
    """:func:`~fedticket.report.compare.compare` at one target: per method (in the
    preset table's order) its fields; ``oracles`` names the methods that use labels the
    method does without."""

    target: float
    baseline: str
    oracles: list[str]
    methods: dict[str, MethodResult]
