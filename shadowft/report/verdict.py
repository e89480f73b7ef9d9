"""The paper's claim, checked against the tables: one `Claim` per pair, setting and half of the claim,
decided by the paired differences and their 95% intervals, never by the scores alone.

Shadow-FT claims (1) that tuning INSTRUCT directly costs the skills instruction tuning gave it, and
(2) that the graft keeps them (it beats INSTRUCT tuned directly on them) and gains the task (it
beats INSTRUCT there). The benchmarks' roles (`Scoring.roles`: task, retention) say where each
half is measured; where no benchmark declares a role, both halves are measured on the Average, and
the claim says so. The graft is taken at the paper's alpha, 1 (else the alpha nearest it).

A comparison (`Evidence`) agrees with the claim where its interval lies wholly on the claimed side
of 0, disagrees where it lies wholly on the other side or at 0, and is unclear where it holds 0 or
there is none; over several seeds it agrees or disagrees only where every seed does. A claim is
reproduced where all its comparisons agree, not reproduced where one disagrees, else undecided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shadowft.evaluation.benchmarks import Scoring
from shadowft.report.evidence import Difference
from shadowft.report.tables import AVERAGE, BASELINE, REFERENCE, Comparison, PairSection, Row, ScoreTable

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
UNDECIDED = "undecided"
AGREES, DISAGREES, UNCLEAR = "as claimed", "against the claim", "unclear"
PAPER_ALPHA = 1.0
COSTS = "tuning INSTRUCT directly costs its skills"
KEEPS_AND_GAINS = "the graft keeps them and gains the task"


@dataclass(frozen=True)
class Evidence:
    """One comparison a claim rests on: `row` against the row `against` in `column`, where the claim
    expects a difference of sign `expected` (-1: a loss, +1: a gain)."""

    row: Row
    against: Row
    column: str
    role: str | None  # the column's role, or None for the Average standing in for one
    expected: int
    comparison: Comparison

    @property
    def outcome(self) -> str:
        outcomes = {_outcome(run.difference, self.expected) for run in self.comparison.differences}
        return outcomes.pop() if len(outcomes) == 1 else UNCLEAR


@dataclass(frozen=True)
class Claim:
    """One half of the paper's claim for one pair and setting, with what it rests on."""

    pair: str
    table: ScoreTable
    statement: str
    evidence: tuple[Evidence, ...]

    @property
    def status(self) -> str:
        outcomes = {evidence.outcome for evidence in self.evidence}
        if outcomes == {AGREES}:
            return REPRODUCED
        return NOT_REPRODUCED if DISAGREES in outcomes else UNDECIDED


def _outcome(difference: Difference, expected: int) -> str:
    if difference.low is None or difference.high is None:
        return UNCLEAR
    low, high = expected * difference.low, expected * difference.high
    if min(low, high) > 0:
        return AGREES
    if max(low, high) <= 0:
        return DISAGREES
    return UNCLEAR


def claims(sections: Sequence[PairSection], scoring: Scoring) -> list[Claim]:
    """Both halves of the claim for every pair and setting that has Instruct, Instruct tuned directly
    and a graft, in report order."""
    found = []
    for section in sections:
        for table in section.tables:
            reference, baseline = table.row(REFERENCE), table.row(BASELINE)
            graft = paper_graft(table)
            retention, task = role_columns(table, scoring, "retention"), role_columns(table, scoring, "task")
            if reference is None or baseline is None or graft is None or not retention or not task:
                continue
            costs = [_evidence(table, baseline, reference, column, role, -1) for column, role in retention]
            keeps = [_evidence(table, graft, baseline, column, role, +1) for column, role in retention]
            gains = [_evidence(table, graft, reference, column, role, +1) for column, role in task]
            found.append(Claim(section.pair, table, COSTS, tuple(costs)))
            found.append(Claim(section.pair, table, KEEPS_AND_GAINS, (*keeps, *gains)))
    return found


def paper_graft(table: ScoreTable) -> Row | None:
    """The table's graft at the paper's alpha, 1, else at the alpha nearest it (None: no graft)."""
    grafts = [row for row in table.rows if row.kind == "shadow"]
    return min(grafts, key=lambda row: (abs(row.alpha - PAPER_ALPHA), -row.alpha), default=None)


def role_columns(table: ScoreTable, scoring: Scoring, role: str) -> list[tuple[str, str | None]]:
    """(column, role) of each of the table's benchmarks with `role`; else the Average, role None."""
    columns = [(name, role) for name in scoring.with_role(role) if name in table.columns]
    return columns or ([(AVERAGE, None)] if AVERAGE in table.columns else [])


def _evidence(table: ScoreTable, row: Row, against: Row, column: str, role: str | None, expected: int) -> Evidence:
    comparison = table.comparison(row, against.kind, column)
    if comparison is None:
        raise ValueError(f"{table.pair}: {row.label} is not compared with {against.label} in {column}")
    return Evidence(row, against, column, role, expected, comparison)
