"""What summary.md and summary.html say, as one list of blocks (``Heading``, ``Paragraph``,
``TextTable``) that ``shadowft.report.render`` writes as Markdown or as HTML: the captions, the
cells as text (each score with its differences from Instruct and from the paper's baseline), the
notes on each pair, the seeds, the versions, and the mark on rows whose models ran their own code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shadowft.evaluation.benchmarks import AUTHORS_SUMMARIZER, GROUPS
from shadowft.report.tables import AVERAGE, BASELINE, REFERENCE, Cell, Columns, PairSection, Row, ScoreTable

TITLE = "Shadow-FT results"
REMOTE_CODE_MARK = "†"
REMOTE_CODE_NOTE = (
    f"{REMOTE_CODE_MARK} Its models ran their own code (trust_remote_code, which the model's entry or "
    "family file enables): in its evaluation, or, for a graft, also in the training of the base it carries."
)


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class TextTable:
    """A table as text: its caption, the header line and one line per row."""

    caption: str
    header: list[str]
    lines: list[list[str]]


Block = Heading | Paragraph | TextTable


def report_document(sections: Sequence[PairSection], versions: str | None = None, *, digits: int = 1) -> list[Block]:
    """The report's blocks: the title, the seeds and versions, then per pair its notes and tables."""
    blocks: list[Block] = [Heading(1, TITLE), Paragraph(_seeds_sentence(sections))]
    if versions:
        blocks.append(Paragraph(versions))
    number = 0
    for section in sections:
        blocks.append(Heading(2, section.pair))
        blocks.extend(Paragraph(note) for note in _pair_notes(section))
        for table in section.tables:
            number += 1
            if table.setting:
                blocks.append(Heading(3, table.setting.title))
            cells = table_cells(table, digits)
            blocks.append(TextTable(table_caption(number, table), cells[0], cells[1:]))
            if any(row.trust_remote_code for row in table.rows):
                blocks.append(Paragraph(REMOTE_CODE_NOTE))
    return blocks


def table_caption(number: int, table: ScoreTable) -> str:
    """What a table shows, in a sentence or three: the rows, the cells, the differences."""
    title = f"Table {number}: {table.pair}" + (f", {table.setting.title}" if table.setting else "")
    has_reference = table.row(REFERENCE) is not None
    has_baseline = table.row(BASELINE) is not None
    if has_reference and has_baseline:
        compared = (
            f"in parentheses the difference from Instruct, then, for the graft and the tuned base, "
            f"from {table.baseline_label} (Instruct tuned directly, the paper's baseline)"
        )
    elif has_reference:
        compared = "in parentheses the difference from Instruct"
    elif has_baseline:
        compared = f"in parentheses, for the graft and the tuned base, the difference from {table.baseline_label}"
    else:
        compared = "no Instruct scores to compare with"
    parts = [f"{title}. Score per benchmark (higher is better); {compared}."]
    if table.rules is not None:
        parts.extend(_rule_sentences(table.rules))
    seeds = table.seeds
    if len(seeds) > 1:
        parts.append(
            f"Tuned variants: mean ± standard deviation over seeds {', '.join(map(str, seeds))} (n={len(seeds)}); "
            "differences are between means."
        )
    elif seeds:
        parts.append(f"One seed ({seeds[0]}).")
    return " ".join(parts)


def _rule_sentences(rules: Columns) -> list[str]:
    """What each number of a table is: the benchmarks' scores, the groups' means, the Average."""
    by_rule: dict[str, list[str]] = {}
    for benchmark, rule in rules.benchmarks.items():
        by_rule.setdefault(rule, []).append(benchmark)
    sentences = [
        "Each benchmark's score: " + "; ".join(f"{rule} ({', '.join(names)})" for rule, names in by_rule.items()) + "."
    ]
    if rules.groups:
        partial = [
            f"{column} over {', '.join(members)} only ({len(members)} of its {len(GROUPS[group])})"
            for column, members in rules.groups.items()
            if (group := column.removesuffix(" avg")) in GROUPS and len(members) < len(GROUPS[group])
        ]
        sentences.append(
            f"{', '.join(rules.groups)}: unweighted mean of the group's benchmark scores"
            + (f"; {'; '.join(partial)}" if partial else "")
            + "."
        )
    if rules.by_groups:
        # What the Average leaves out: the groups not averaged, and the benchmarks of no group.
        outside = [group for group in rules.groups if group not in rules.averaged]
        outside += [b for b in rules.benchmarks if not any(b in members for members in rules.groups.values())]
        sentences.append(
            f"{AVERAGE}: unweighted mean of {', '.join(rules.averaged)}, the Shadow-FT authors' overall average "
            f"(their OpenCompass summarizer {AUTHORS_SUMMARIZER})"
            + (f"; {', '.join(outside)} not in it" if outside else "")
            + "."
        )
    else:
        sentences.append(f"{AVERAGE}: unweighted mean of every benchmark's score.")
    return sentences


def table_cells(table: ScoreTable, digits: int = 1) -> list[list[str]]:
    """The table as text: a header line, then one line per variant."""
    reference = table.row(REFERENCE)
    baseline = table.row(BASELINE)
    lines = [["Variant", *table.columns]]
    for row in table.rows:
        cells = [_row_label(row)]
        for column in table.columns:
            cell = row.cells[column]
            differences = []
            if reference is not None and row.kind != REFERENCE:
                differences.append(cell.mean - reference.cells[column].mean)
            if baseline is not None and row.kind in ("base_ft", "shadow"):
                differences.append(cell.mean - baseline.cells[column].mean)
            cells.append(_cell(cell, differences, digits))
        lines.append(cells)
    return lines


def _row_label(row: Row) -> str:
    return f"{row.label} {REMOTE_CODE_MARK}" if row.trust_remote_code else row.label


def _seeds_sentence(sections: Sequence[PairSection]) -> str:
    seeds = sorted({seed for section in sections for table in section.tables for seed in table.seeds})
    if len(seeds) > 1:
        return (
            f"Seeds {', '.join(map(str, seeds))}: each tuned variant shows the mean ± the standard deviation over "
            "the seeds that ran it."
        )
    if seeds:
        return (
            f"One seed, {seeds[0]}. Scores move between seeds: compare runs of several seeds before reading a "
            "difference as a finding."
        )
    return "No tuned variants."


def _pair_notes(section: PairSection) -> list[str]:
    notes = []
    if section.sigma is not None:
        notes.append(
            f"Weight difference between base and instruct: sigma = {100 * section.sigma:.2f}% "
            "(sum|W_B - W_I| / (sum|W_B| + sum|W_I|), mean over the layers' tensors; "
            "the paper reports under 2% for Llama-3.1-8B)."
        )
    if section.learning_rates:
        rates = "; ".join(
            f"{label} {', '.join(f'{r:g}' for r in values)}" for label, values in section.learning_rates.items()
        )
        if section.learning_rate_swept:
            notes.append(f"Learning rates: {rates} (the learning-rate figure plots the scores against them).")
        else:
            notes.append(f"Learning rates: {rates}; one per setting, so there is no learning-rate figure.")
    notes.extend(section.overlaps)
    return notes


def _cell(cell: Cell, differences: Sequence[float], digits: int) -> str:
    if math.isnan(cell.mean):
        return "–"
    text = f"{cell.mean:.{digits}f}"
    if cell.sd is not None:
        text += f" ± {cell.sd:.{digits}f}"
    shown = [d for d in differences if not math.isnan(d)]
    if not shown or len(shown) != len(differences):
        return text
    # Adding 0.0 turns a rounded -0.0 into 0.0, so no difference reads "-0.0".
    return text + " (" + ", ".join(f"{round(d, digits) + 0.0:+.{digits}f}" for d in shown) + ")"
