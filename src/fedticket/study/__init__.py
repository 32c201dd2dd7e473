"""The reproduction study: one experiment config run under several client partitions,
summarised into small JSON files and rendered into tables and a verdict.

A study file (``configs/study.toml``) names the base experiment, the partitions
(``iid``, ``dirichlet-ALPHA``, ``shards-K``), the seeds and the targets; ``[quick]`` holds
overrides for a small smoke-test grid, and ``[questions]`` the methods its questions are
about (:mod:`.questions`; results are typed records, :mod:`fedticket.report.records`).
Four steps, a module each:

* :mod:`.load`: the study file and its grid of experiment specs (:func:`load_study`,
  :func:`cells`, :func:`variant_cells`);
* :mod:`.run`: every cell run, finished run folders skipped, so an interrupted study
  resumes where it stopped (:func:`run_study`);
* :mod:`.summarise`: what the tables need, kept in a small JSON file with its
  provenance (:func:`summarize`);
* :mod:`.judge`: savings with paired intervals and the answers to the study's
  questions, from a summary alone (:func:`verdict`, :func:`peer_verdict`, the Q2 and Q3
  functions).

:mod:`fedticket.report.study_render` writes a summary as markdown. The tables in
``docs/REPRODUCTION.md`` are that rendering of the committed summaries in
``docs/results/``, and a test checks that they still are.
"""

from fedticket.report.records import COSTS, KEPT_FIELDS
from fedticket.study.judge import (
    COST_NAMES,
    PEER_COSTS,
    Q1_BAR,
    Q2_ACCURACY_GAP,
    Q2_CPU_X,
    Q2_TRAFFIC_X,
    Q3_ACCURACY_GAP,
    Q3_CPU_X,
    Q3_TARGET,
    Q3_TRAFFIC_X,
    RUN_COSTS,
    _saving,
    at_least,
    best_variant,
    candidates,
    deciding,
    peer_verdict,
    q2_candidates,
    q3_rows,
    saving,
    verdict,
)
from fedticket.study.load import (
    BASE,
    Study,
    cells,
    load_study,
    partition_settings,
    variant_cells,
)
from fedticket.study.questions import Questions, parse_questions, questions_of
from fedticket.study.run import TIMING, run_study, timings
from fedticket.study.summarise import (
    plot_summary,
    read_summary,
    summarize,
    write_summary,
)

__all__ = [
    "BASE", "COSTS", "COST_NAMES", "KEPT_FIELDS", "PEER_COSTS", "Q1_BAR",
    "Q2_ACCURACY_GAP", "Q2_CPU_X", "Q2_TRAFFIC_X", "Q3_ACCURACY_GAP", "Q3_CPU_X", "Q3_TARGET",
    "Q3_TRAFFIC_X", "Questions", "RUN_COSTS", "TIMING", "Study", "_saving",
    "at_least", "best_variant", "candidates", "cells", "deciding", "load_study",
    "parse_questions", "partition_settings", "peer_verdict", "plot_summary", "q2_candidates",
    "q3_rows", "questions_of", "read_summary", "run_study", "saving", "summarize", "timings",
    "variant_cells", "verdict", "write_summary",
]
