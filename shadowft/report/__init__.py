"""The report: the evaluation scores as a tidy table and as the paper's tables (Markdown, HTML).

The workflow hands it one record per score file (``ScoreRecord``, ``records``): the pair, the
variant, every sweep dimension of its run (``DIMENSIONS``) and the scores.csv that
shadowft.opencompass wrote. ``summarize`` stacks them into summary.csv and writes the paper's
layout (``tables``: per pair and sweep setting one table, variants as rows, each score with
its difference from Instruct and, for the graft and the tuned base, from Instruct tuned
directly in the same setting; seeds averaged), as one document (``document``) rendered twice
(``render``). ``shadowft.figures`` draws the same tables.

The names below are what the rules, scripts and figures import.
"""

from shadowft.report.records import DIMENSIONS, SUMMARY_COLUMNS, ScoreRecord, read_summary, tidy_scores
from shadowft.report.summary import summarize
from shadowft.report.tables import (
    BASELINE,
    REFERENCE,
    ScoreTable,
    learning_rate_swept,
    pair_tables,
    pairs_sweeping_learning_rate,
    read_similarity,
    variant_name_label,
)

__all__ = [
    "BASELINE",
    "DIMENSIONS",
    "REFERENCE",
    "SUMMARY_COLUMNS",
    "ScoreRecord",
    "ScoreTable",
    "learning_rate_swept",
    "pair_tables",
    "pairs_sweeping_learning_rate",
    "read_similarity",
    "read_summary",
    "summarize",
    "tidy_scores",
    "variant_name_label",
]
