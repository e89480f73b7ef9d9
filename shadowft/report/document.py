"""What summary.md and summary.html say, as one list of blocks (``Heading``, ``Paragraph``,
``Bullets``, ``Links``, ``TextTable``) that ``shadowft.report.render`` writes as Markdown, HTML or
reStructuredText: the verdict and the glossary first, then the seeds, versions and machines, then per
pair its notes, its links to the answers, and per setting the paper's table (each score with its
95% interval) and the table of differences (each row against Instruct and the paper's baseline,
paired on the same questions), and the mark on rows whose models ran their own code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shadowft.evaluation.benchmarks import AUTHORS_SUMMARIZER, GROUPS, Scoring
from shadowft.report.evidence import BOOTSTRAP, MCNEMAR, NOT_AVAILABLE, WILSON, Difference
from shadowft.report.stats import LEVEL, RESAMPLES
from shadowft.report.tables import (
    AGAINST_BASELINE,
    AVERAGE,
    BASELINE,
    REFERENCE,
    Cell,
    Columns,
    Comparison,
    PairSection,
    Row,
    ScoreTable,
)
from shadowft.report.verdict import Claim, Evidence, claims

TITLE = "Shadow-FT results"
REMOTE_CODE_MARK = "†"
REMOTE_CODE_NOTE = (
    f"{REMOTE_CODE_MARK} Its models ran their own code (trust_remote_code, which the model's entry or "
    "family file enables): in its evaluation, or, for a graft, also in the training of the base it carries."
)
# Where the sample answers lie, relative to summary.md and summary.html ({ext}: the reader's format),
# and how many questions of each dataset they show (shadowft.report.samples).
SAMPLES_HREF = "samples/{pair}/{benchmark}.{ext}"
SAMPLE_SIZE = 10


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Links:
    """A sentence that ends in links: `lead`, then each (label, href); an href's ``{ext}`` is the
    extension of the format being written (md, html), for files the report writes in both."""

    lead: str
    links: list[tuple[str, str]]


@dataclass(frozen=True)
class TextTable:
    """A table as text: its caption, the header line, one line per row, how many leading columns are
    text (left-aligned), and per body cell a note (the HTML tooltip; empty: none)."""

    caption: str
    header: list[str]
    lines: list[list[str]]
    text_columns: int = 1
    notes: list[list[str]] = field(default_factory=list)


Block = Heading | Paragraph | Bullets | Links | TextTable


@dataclass(frozen=True)
class Context:
    """What the report states beside its tables: the scoring rule (roles, partial credit), each
    benchmark's description, the versions and the machines, in words."""

    scoring: Scoring = field(default_factory=Scoring)
    descriptions: Mapping[str, str] = field(default_factory=dict)
    versions: str | None = None
    machines: str | None = None


def report_document(sections: Sequence[PairSection], context: Context | None = None, *, digits: int = 1) -> list[Block]:
    """The report's blocks: the title, the verdict, the glossary, the seeds, versions and machines,
    then per pair its notes and tables."""
    context = context or Context()
    blocks: list[Block] = [Heading(1, TITLE)]
    blocks += verdict_blocks(sections, context.scoring, digits)
    blocks += glossary_blocks(sections, context)
    blocks.append(Paragraph(_seeds_sentence(sections)))
    blocks += [Paragraph(text) for text in (context.versions, context.machines) if text]
    number = 0
    for section in sections:
        blocks += pair_blocks(section, context)
        for table in section.tables:
            number += 1
            if table.setting:
                blocks.append(Heading(3, table.setting.title))
            blocks.append(score_table(number, table, digits))
            if any(row.trust_remote_code for row in table.rows):
                blocks.append(Paragraph(REMOTE_CODE_NOTE))
            if table.comparisons:
                blocks.append(difference_table(number, table, digits))
    return blocks


# --- The verdict and the glossary --------------------------------------------------------------


def verdict_blocks(sections: Sequence[PairSection], scoring: Scoring, digits: int = 1) -> list[Block]:
    """The verdict: one line per half of the claim, pair and setting, each with what decides it."""
    found = claims(sections, scoring)
    blocks: list[Block] = [Heading(2, "Verdict")]
    if not found:
        blocks.append(
            Paragraph(
                "No verdict: it needs Instruct, Instruct tuned directly and a graft in one setting, and benchmarks "
                "to compare them on (a benchmark's role, task or retention, or an Average)."
            )
        )
        return blocks
    blocks.append(
        Paragraph(
            "The paper's claim, half by half, decided by 95% intervals of paired differences (the graft at α=1, "
            "the paper's): reproduced where every comparison lies wholly on the claimed side of 0, not "
            "reproduced where one lies wholly on the other side or at 0, undecided otherwise."
        )
    )
    blocks.append(Bullets([claim_line(claim, digits) for claim in found]))
    return blocks


def claim_line(claim: Claim, digits: int = 1) -> str:
    """``demo, SFT, LoRA, ...: tuning INSTRUCT directly costs its skills: reproduced (...)``."""
    where = claim.pair + (f", {claim.table.setting.title}" if claim.table.setting else "")
    reasons = "; ".join(_evidence_words(evidence, digits) for evidence in claim.evidence)
    return f"{where}: {claim.statement}: {claim.status.upper()} ({reasons})."


def _evidence_words(evidence: Evidence, digits: int) -> str:
    where = f"{evidence.column} ({evidence.role})" if evidence.role else f"the {AVERAGE} (no benchmark declares a role)"
    return (
        f"{evidence.row.label} − {evidence.against.label} on {where}: "
        f"{_comparison_text(evidence.comparison, digits)}, {evidence.outcome}"
    )


def glossary_blocks(sections: Sequence[PairSection], context: Context) -> list[Block]:
    """What every benchmark measures, what every row is, and how to read a number."""
    blocks: list[Block] = [Heading(2, "Glossary")]
    rules: dict[str, str] = {}
    questions: dict[str, int | None] = {}
    labels: dict[str, str] = {}
    for section in sections:
        for table in section.tables:
            rules |= table.rules.benchmarks if table.rules else {}
            for column in table.benchmark_columns:
                for row in table.rows:
                    if column not in questions or questions[column] is None:
                        estimate = row.cells[column].estimate
                        questions[column] = estimate.questions if estimate else None
            for row in table.rows:
                labels.setdefault(_kind_label(row, table), _kind_meaning(row.kind))
    lines = [
        [
            benchmark,
            context.scoring.roles.get(benchmark, "–"),
            "–" if questions.get(benchmark) is None else str(questions[benchmark]),
            rule + (f"; beside it {credit}" if (credit := context.scoring.partial_credit.get(benchmark)) else ""),
            context.descriptions.get(benchmark) or "no description (evaluation.benchmarks.NAME.description)",
        ]
        for benchmark, rule in rules.items()
    ]
    caption = (
        "The benchmarks: role in the claim (task: what fine-tuning teaches; retention: the skills INSTRUCT "
        "had), questions asked (n), how a score is made, and what it measures."
    )
    blocks.append(TextTable(caption, ["Benchmark", "Role", "n", "Score", "What it measures"], lines, text_columns=5))
    blocks.append(Bullets([f"{label}: {meaning}" for label, meaning in labels.items()]))
    blocks.append(Bullets(NOTATION))
    return blocks


NOTATION = [
    f"52.0 [45.1, 58.8]: a score in percent and its {LEVEL:.0%} interval: {WILSON}'s for a share of questions "
    f"answered right, else a {BOOTSTRAP} over the questions ({RESAMPLES} resamples, each dataset within "
    f"itself, a group or the Average from its benchmarks'); a score without brackets has none: its questions "
    "cannot be resampled (no per-question grades, and no share of questions); summary.csv says "
    f"'{NOT_AVAILABLE}' there.",
    "token_accuracy: partial credit beside exact match, never in its place: the share of the gold answer's "
    "tokens the answer has in their place.",
    f"Δ: a difference in points between two variants on the same questions, with its {LEVEL:.0%} interval "
    f"(paired {BOOTSTRAP}) and p, the two-sided p-value of no difference ({MCNEMAR} test on the questions "
    "only one of the two got right, for one dataset graded right or wrong; else the paired bootstrap's).",
    "mean ± sd (lo–hi): over the seeds that ran a variant, with the lowest and highest seed's value; each "
    "seed's interval is in summary.csv and its paired tests in paired.csv.",
]


def _kind_label(row: Row, table: ScoreTable) -> str:
    if row.kind == "shadow":
        return f"Shadow-{table.setting.tuning_label if table.setting else ''} (α=a)"
    return row.label


def _kind_meaning(kind: str) -> str:
    return {
        "base": "BASE as released.",
        "instruct": "INSTRUCT as released; the graft at α=0.",
        "instruct_ft": "INSTRUCT fine-tuned directly on the training data: the paper's baseline.",
        "base_ft": "BASE fine-tuned on the same data: the update the graft carries, scored on its own.",
        "shadow": "the graft, INSTRUCT + α × (BASE fine-tuned − BASE); α=1 is the paper's.",
    }[kind]


# --- Per pair ----------------------------------------------------------------------------------


def pair_blocks(section: PairSection, context: Context) -> list[Block]:
    """A pair's heading, its notes, and its links to the answers."""
    blocks: list[Block] = [Heading(2, section.pair)]
    blocks += [Paragraph(note) for note in _pair_notes(section)]
    benchmarks = list(dict.fromkeys(b for table in section.tables for b in table.benchmark_columns))
    blocks.append(
        Links(
            f"The same {SAMPLE_SIZE} questions of each benchmark's datasets answered by every variant, with links "
            "to each variant's full predictions",
            [
                (benchmark, SAMPLES_HREF.format(pair=section.pair, benchmark=benchmark, ext="{ext}"))
                for benchmark in benchmarks
            ],
        )
    )
    return blocks


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


def _seeds_sentence(sections: Sequence[PairSection]) -> str:
    seeds = sorted({seed for section in sections for table in section.tables for seed in table.seeds})
    if len(seeds) > 1:
        return (
            f"Seeds {', '.join(map(str, seeds))}: each tuned variant shows the mean ± the standard deviation over "
            "the seeds that ran it, and the lowest and highest seed's value."
        )
    if seeds:
        return (
            f"One seed, {seeds[0]}. The intervals say how far a score moves with the questions asked; scores move "
            "between seeds too: compare runs of several seeds before reading a difference as a finding."
        )
    return "No tuned variants."


# --- The tables --------------------------------------------------------------------------------


def score_table(number: int, table: ScoreTable, digits: int = 1) -> TextTable:
    """The paper's table: a row per variant, a cell per column (score and interval, or mean ± sd
    over seeds), each cell's differences as its note."""
    lines, notes = [], []
    for row in table.rows:
        lines.append([_row_label(row), *(_cell(row.cells[column], digits) for column in table.columns)])
        notes.append(["", *(_cell_note(table, row, column, digits) for column in table.columns)])
    return TextTable(score_caption(number, table), ["Variant", *table.columns], lines, notes=notes)


def score_caption(number: int, table: ScoreTable) -> str:
    """What the paper's table shows: the rows, the cells, the questions, each number's rule."""
    title = f"Table {number}: {table.pair}" + (f", {table.setting.title}" if table.setting else "")
    parts = [f"{title}. Score per benchmark in percent (higher is better) with its {LEVEL:.0%} interval in brackets."]
    if table.comparisons:
        parts.append(f"The differences between rows are in Table {number}b (and in each cell's tooltip in HTML).")
    if table.row(REFERENCE) is None:
        parts.append("No Instruct scores to compare with.")
    if _lacks_interval(table):
        parts.append(
            "A score of one run without brackets has no interval: it is no share of questions answered right, "
            "and predictions.json holds no per-question grades to resample."
        )
    questions = _questions(table)
    if questions:
        parts.append("Questions (n): " + ", ".join(f"{name} {count}" for name, count in questions.items()) + ".")
    if table.rules is not None:
        parts.extend(_rule_sentences(table.rules))
    seeds = table.seeds
    if len(seeds) > 1:
        parts.append(
            f"Tuned variants: mean ± standard deviation over seeds {', '.join(map(str, seeds))} (n={len(seeds)}), "
            "then the lowest and highest seed's value."
        )
    elif seeds:
        parts.append(f"One seed ({seeds[0]}).")
    return " ".join(parts)


def difference_table(number: int, table: ScoreTable, digits: int = 1) -> TextTable:
    """Each row against Instruct and, for the graft and the tuned base, against the paper's baseline,
    column by column: the difference, its interval and p-value, in labelled columns."""
    has_reference, has_baseline = table.row(REFERENCE) is not None, table.row(BASELINE) is not None
    against = [kind for kind, present in ((REFERENCE, has_reference), (BASELINE, has_baseline)) if present]
    header = ["Column", "Variant"]
    for kind in against:
        header += [f"Δ vs {_against_label(table, kind)}", "p"]
    lines = []
    for column in table.columns:
        for row in table.rows:
            if row.kind == REFERENCE:
                continue
            cells = []
            for kind in against:
                comparison = table.comparison(row, kind, column)
                cells += ["", ""] if comparison is None else _difference_cells(comparison, digits)
            if any(cells):
                lines.append([column, _row_label(row), *cells])
    minus = " and, for the graft and the tuned base, minus ".join(_against_label(table, k) for k in against)
    caption = (
        f"Table {number}b: {table.pair}" + (f", {table.setting.title}" if table.setting else "") + ". "
        f"Differences in points, each variant minus {minus}, "
        f"on the same questions, with the {LEVEL:.0%} interval of the difference and the p-value of no "
        f"difference ({MCNEMAR} for one dataset graded right or wrong, else a paired {BOOTSTRAP}; no interval "
        "and p '–': no per-question grades to pair). "
        + (
            "Over several seeds: the mean difference, the lowest and highest seed's, and each seed's p-value."
            if len(table.seeds) > 1
            else ""
        )
    )
    return TextTable(caption.strip(), header, lines, text_columns=2)


def _against_label(table: ScoreTable, kind: str) -> str:
    return "Instruct" if kind == REFERENCE else table.baseline_label


def _difference_cells(comparison: Comparison, digits: int) -> list[str]:
    differences = [run.difference for run in comparison.differences]
    if len(differences) == 1:
        return [_difference_text(differences[0], digits), _p_text(differences[0])]
    values = [difference.value for difference in differences]
    text = f"{_signed(comparison.mean, digits)} ({_signed(min(values), digits)} to {_signed(max(values), digits)})"
    return [text, ", ".join(_p_text(difference) for difference in differences)]


def _comparison_text(comparison: Comparison, digits: int) -> str:
    """A comparison in words for the verdict: the difference, its interval and p, seed by seed."""

    def said(difference: Difference) -> str:
        p = _p_text(difference)
        return _difference_text(difference, digits) + (f", {p}" if p != "–" else "")

    if len(comparison.differences) == 1:
        return said(comparison.differences[0].difference)
    return "; ".join(f"seed {run.seed}: {said(run.difference)}" for run in comparison.differences)


def _difference_text(difference: Difference, digits: int) -> str:
    if math.isnan(difference.value):
        return "–"
    if difference.low is None or difference.high is None:
        return _signed(difference.value, digits)  # no brackets: no interval (the caption says why)
    return (
        f"{_signed(difference.value, digits)} [{_signed(difference.low, digits)}, {_signed(difference.high, digits)}]"
    )


def _p_text(difference: Difference) -> str:
    if difference.p_value is None:
        return "–"
    return "p < 0.001" if difference.p_value < 0.001 else f"p = {difference.p_value:.3f}"


def _signed(value: float, digits: int) -> str:
    # Adding 0.0 turns a rounded -0.0 into 0.0, so no difference reads "-0.0"; a minus sign, not a hyphen.
    return f"{round(value, digits) + 0.0:+.{digits}f}".replace("-", "−")


def _lacks_interval(table: ScoreTable) -> bool:
    """Whether a score of one run in the table has no interval."""
    return any(
        cell.n == 1 and not math.isnan(cell.mean) and (cell.estimate is None or cell.estimate.low is None)
        for row in table.rows
        for cell in row.cells.values()
    )


def _questions(table: ScoreTable) -> dict[str, int]:
    """The questions behind each benchmark column (the same for every row), where known."""
    found = {}
    for column in table.benchmark_columns:
        for row in table.rows:
            estimate = row.cells[column].estimate
            if estimate is not None and estimate.questions:
                found[column] = estimate.questions
                break
    return found


def _rule_sentences(rules: Columns) -> list[str]:
    """What each number of a table is: the benchmarks' scores, partial credit, the groups' means, the Average."""
    by_rule: dict[str, list[str]] = {}
    for benchmark, rule in rules.benchmarks.items():
        by_rule.setdefault(rule, []).append(benchmark)
    sentences = [
        "Each benchmark's score: " + "; ".join(f"{rule} ({', '.join(names)})" for rule, names in by_rule.items()) + "."
    ]
    if rules.credit:
        sentences.append(f"{', '.join(rules.credit)}: partial credit, beside the benchmark's own score and in no mean.")
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
    elif rules.averaged:
        sentences.append(f"{AVERAGE}: unweighted mean of every benchmark's score.")
    else:
        sentences.append(
            f"No {AVERAGE}: the benchmarks measure different roles (the task, the skills kept), and a mean of "
            "the two would rank a model that lost its skills beside one that kept them; the verdict compares each."
        )
    return sentences


def _row_label(row: Row) -> str:
    return f"{row.label} {REMOTE_CODE_MARK}" if row.trust_remote_code else row.label


def _cell(cell: Cell, digits: int) -> str:
    if math.isnan(cell.mean):
        return "–"
    if cell.n > 1:
        text = f"{cell.mean:.{digits}f}"
        if cell.sd is not None:
            text += f" ± {cell.sd:.{digits}f}"
        return text + f" ({min(cell.values):.{digits}f}–{max(cell.values):.{digits}f})"
    estimate = cell.estimate
    if estimate is None or estimate.low is None or estimate.high is None:
        return f"{cell.mean:.{digits}f}"  # no brackets: no interval (the caption says why)
    return f"{cell.mean:.{digits}f} [{estimate.low:.{digits}f}, {estimate.high:.{digits}f}]"


def _cell_note(table: ScoreTable, row: Row, column: str, digits: int) -> str:
    """A cell's differences from Instruct and, for the graft and the tuned base, from the baseline."""
    notes = []
    for kind in (REFERENCE, BASELINE):
        if kind == row.kind or (kind == BASELINE and row.kind not in AGAINST_BASELINE):
            continue
        comparison = table.comparison(row, kind, column)
        if comparison is not None:
            difference, p = _difference_cells(comparison, digits)
            notes.append(f"Δ vs {_against_label(table, kind)}: {difference}" + (f", {p}" if p != "–" else ""))
    return "; ".join(notes)
