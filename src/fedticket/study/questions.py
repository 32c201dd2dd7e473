"""What a study asks: the methods its questions are about, named in the study file's
``[questions]`` section and kept in its summary, so that judging and rendering a summary
needs no method name of its own.

.. code-block:: toml

    [questions]
    baseline = "fedavg"                    # savings are against it (default: spec.BASELINE)
    q1 = {ticket = "dae-ticket", against = ["fedavg", "fedavg-dae"]}
    q2 = ["dae-ticket", "dae-ticket-fast", "dae-ticket-rewind"]
    peers = {tickets = ["dae-ticket-fast"], rivals = ["fedavg", "feddst"]}
    q3 = ["dae-ticket", "dae-ticket-fast"] # a sweep's accuracy-against-bytes question
    pareto = true                          # draw the sweep's Pareto figure

Every key is optional; a question with no methods is not asked. The bars each question
sets are :mod:`fedticket.study.judge`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedticket.errors import ConfigError
from fedticket.spec import BASELINE, METHODS

KEYS = ("baseline", "q1", "q2", "peers", "q3", "pareto")


@dataclass(frozen=True)
class Questions:
    baseline: str = BASELINE
    """The method every saving is measured against, and a sweep's baseline runs."""
    q1_ticket: str = ""
    """Q1: does this method save 35% of traffic, FLOPs and CPU time to the target ..."""
    q1_against: tuple[str, ...] = ()
    """... against each of these?"""
    q2: tuple[str, ...] = ()
    """Q2 (and Q2 over a sweep's variants): does one of these end within 0.5 points of the
    baseline's final accuracy with 25x less traffic and 3x less client CPU time?"""
    peer_tickets: tuple[str, ...] = ()
    """The peers' question: does each of these need less traffic and less client CPU time
    than every one of :attr:`rivals` ..."""
    rivals: tuple[str, ...] = ()
    """... (the grid's other methods get a row each but do not decide the answer)?"""
    q3: tuple[str, ...] = ()
    """Q3 (a bits sweep): 100x less traffic and 10x less CPU time at 0.80 within 0.5
    points, per (variant, one of these)."""
    pareto: bool = False
    """A sweep's figure of final accuracy against the whole run's bytes."""

    def as_dict(self) -> dict[str, Any]:
        """The summary's ``questions`` (the TOML section's shape)."""
        out: dict[str, Any] = {"baseline": self.baseline}
        if self.q1_ticket:
            out["q1"] = {"ticket": self.q1_ticket, "against": list(self.q1_against)}
        if self.q2:
            out["q2"] = list(self.q2)
        if self.peer_tickets:
            out["peers"] = {"tickets": list(self.peer_tickets), "rivals": list(self.rivals)}
        if self.q3:
            out["q3"] = list(self.q3)
        if self.pareto:
            out["pareto"] = True
        return out


def _names(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: [questions] {key} must be a list of method names")
    unknown = [v for v in value if v.partition("+")[0] not in METHODS]
    if unknown:
        raise ConfigError(f"{where}: [questions] {key} names unknown methods {unknown}; "
                          f"choose from {', '.join(METHODS)}")
    return tuple(value)


def parse_questions(raw: dict[str, Any], where: str = "study") -> Questions:
    """A ``[questions]`` table (a study file's, or a summary's ``questions``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [questions] must be a table")
    extra = set(raw) - set(KEYS)
    if extra:
        raise ConfigError(f"{where}: unknown keys in [questions]: {sorted(extra)}; "
                          f"use {', '.join(KEYS)}")
    baseline = raw.get("baseline", BASELINE)
    if not isinstance(baseline, str) or baseline not in METHODS:
        raise ConfigError(f"{where}: [questions] baseline must be a method name, got "
                          f"{baseline!r}")
    q1, peers = raw.get("q1", {}), raw.get("peers", {})
    for key, table, fields in (("q1", q1, {"ticket", "against"}),
                               ("peers", peers, {"tickets", "rivals"})):
        if not isinstance(table, dict) or set(table) != fields and table:
            raise ConfigError(f"{where}: [questions] {key} must be a table with "
                              f"{' and '.join(sorted(fields))}")
    ticket = _names(where, "q1.ticket", [q1["ticket"]])[0] if q1 else ""
    return Questions(
        baseline=baseline,
        q1_ticket=ticket,
        q1_against=_names(where, "q1.against", q1["against"]) if q1 else (),
        q2=_names(where, "q2", raw.get("q2", [])),
        peer_tickets=_names(where, "peers.tickets", peers["tickets"]) if peers else (),
        rivals=_names(where, "peers.rivals", peers["rivals"]) if peers else (),
        q3=_names(where, "q3", raw.get("q3", [])),
        pareto=bool(raw.get("pareto", False)),
    )


def questions_of(summary: dict[str, Any], path: Path | str = "summary") -> Questions:
    """The questions a summary keeps; an old summary without them asks none."""
    return parse_questions(summary.get("questions", {}), str(path))
