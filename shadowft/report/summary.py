"""The report's files: the tidy summary.csv (each score with its interval), the paired differences as
paired.csv, the paper's tables with the verdict and the glossary as summary.md and summary.html,
and the verdict and glossary alone as reStructuredText for the landing page of ``snakemake --report``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from shadowft.evaluation.benchmarks import Scoring
from shadowft.evaluation.results import PREDICTIONS_FILE
from shadowft.io import atomic_write_text
from shadowft.report.answers import read_outcomes
from shadowft.report.document import Context, glossary_blocks, report_document, verdict_blocks
from shadowft.report.overlap import RunOverlap
from shadowft.report.records import ScoreRecord, parse_records, tidy_scores
from shadowft.report.render import render_html, render_markdown, render_rst
from shadowft.report.tables import PairSection, overall_sigma, report_sections, summary_intervals
from shadowft.versions import EnvironmentVersions, Hardware, hardware_sentence, versions_sentence

PAIRED_COLUMNS = (
    "pair",
    "stage",
    "tuning",
    "learning_rate",
    "lora_rank",
    "seed",
    "column",
    "variant",
    "against",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "test",
    "n",
)


def summarize(
    records: Sequence[Mapping | ScoreRecord],
    out_csv: Path,
    out_md: Path,
    *,
    out_html: Path | None = None,
    out_paired: Path | None = None,
    out_rst: Path | None = None,
    scoring: Scoring | None = None,
    similarity: Mapping[str, Path] | None = None,
    overlap: Sequence[Path] = (),
    versions: Sequence[EnvironmentVersions] = (),
    machines: Sequence[Hardware] = (),
    descriptions: Mapping[str, str] | None = None,
    digits: int = 1,
) -> pd.DataFrame:
    """Write the tidy ``out_csv`` and the paper-style tables to ``out_md`` (and ``out_html``, the
    paired differences to ``out_paired``, the verdict and glossary to ``out_rst``).

    ``scoring`` (shadowft.evaluation.benchmarks.scoring of the config) says how a benchmark's
    datasets make its score, which groups get a column of their mean, what the Average averages,
    each benchmark's partial credit and role; default: each benchmark's first metric, no groups.
    Each record's predictions.json, where it lies beside its scores.csv, gives the questions'
    values that intervals and paired tests resample. ``similarity`` maps a pair to its similarity
    CSV (shadowft.engine.sigma), whose overall sigma is quoted with the pair's tables. ``overlap``
    lists the runs' overlap CSVs (results/{pair}/{run}/overlap.csv), a sentence each. ``versions``,
    the environments that ran (shadowft.versions), and ``machines``, where the evaluations ran, are
    stated under the title; ``descriptions`` say what each benchmark measures (the glossary).
    Returns the tidy frame written to ``out_csv``.
    """
    scoring = scoring or Scoring()
    parsed = parse_records(records)
    summary = tidy_scores(parsed)
    beside = {(r.pair, r.variant, r.benchmark): r.scores.with_name(PREDICTIONS_FILE) for r in parsed}
    outcomes = read_outcomes(summary, scoring, lambda *key: beside[key])
    summary = summary_intervals(summary, scoring, outcomes)
    sigmas = {pair: overall_sigma(Path(path)) for pair, path in (similarity or {}).items()}
    overlaps: dict[str, list[str]] = {}
    for path in overlap:
        run = RunOverlap.read(Path(path))
        overlaps.setdefault(run.pair, []).append(run.sentence())
    sections = report_sections(summary, scoring, sigmas, outcomes, overlaps)
    context = Context(
        scoring,
        dict(descriptions or {}),
        versions_sentence(versions) if versions else None,
        hardware_sentence(machines, "The evaluations ran on") if machines else None,
    )
    blocks = report_document(sections, context, digits=digits)
    atomic_write_text(Path(out_csv), summary.to_csv(index=False))
    atomic_write_text(Path(out_md), render_markdown(blocks))
    if out_html is not None:
        atomic_write_text(Path(out_html), render_html(blocks))
    if out_paired is not None:
        atomic_write_text(Path(out_paired), paired_differences(sections).to_csv(index=False))
    if out_rst is not None:
        landing = verdict_blocks(sections, scoring, digits) + glossary_blocks(sections, context)
        atomic_write_text(Path(out_rst), render_rst(landing))
    return summary


def paired_differences(sections: Sequence[PairSection]) -> pd.DataFrame:
    """Every paired comparison of the tables in tidy form (PAIRED_COLUMNS): one row per pair, run,
    column and reference, the variants by their names (shadowft.workflow.sweep)."""
    rows, untuned = [], set()
    for section in sections:
        for table in section.tables:
            for comparison in table.comparisons:
                for run in comparison.differences:
                    # An untuned row (Base) is in every setting's table: its comparison once, in no setting.
                    setting = table.setting if run.seed is not None else None
                    if setting is None:
                        key = (section.pair, comparison.column, run.variant)
                        if key in untuned:
                            continue
                        untuned.add(key)
                    difference = run.difference
                    rows.append(
                        {
                            "pair": section.pair,
                            "stage": setting.stage if setting else None,
                            "tuning": setting.tuning if setting else None,
                            "learning_rate": setting.learning_rate if setting else None,
                            "lora_rank": setting.lora_rank if setting else None,
                            "seed": run.seed,
                            "column": comparison.column,
                            "variant": run.variant,
                            "against": run.against,
                            "difference": difference.value,
                            "ci_low": difference.low,
                            "ci_high": difference.high,
                            "p_value": difference.p_value,
                            "test": difference.test,
                            "n": difference.questions,
                        }
                    )
    frame = pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))
    return frame.astype({"seed": "Int64", "lora_rank": "Int64", "n": "Int64"})
