"""The report's files: the tidy summary.csv and the paper's tables as summary.md (and summary.html)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from shadowft.evaluation.benchmarks import Scoring
from shadowft.io import atomic_write_text
from shadowft.report.document import report_document
from shadowft.report.overlap import RunOverlap
from shadowft.report.records import ScoreRecord, tidy_scores
from shadowft.report.render import render_html, render_markdown
from shadowft.report.tables import overall_sigma, report_sections
from shadowft.versions import EnvironmentVersions, versions_sentence


def summarize(
    records: Sequence[Mapping | ScoreRecord],
    out_csv: Path,
    out_md: Path,
    *,
    out_html: Path | None = None,
    scoring: Scoring | None = None,
    similarity: Mapping[str, Path] | None = None,
    overlap: Sequence[Path] = (),
    versions: Sequence[EnvironmentVersions] = (),
    digits: int = 1,
) -> pd.DataFrame:
    """Write the tidy ``out_csv`` and the paper-style tables to ``out_md`` (and ``out_html``).

    ``scoring`` (shadowft.evaluation.benchmarks.scoring of the config) says how a benchmark's
    datasets make its score, which groups get a column of their mean, and what the Average
    averages; default: each benchmark's first metric, no groups. ``similarity`` maps a pair to its similarity CSV
    (shadowft.engine.sigma), whose overall sigma is quoted with the pair's tables. ``overlap``
    lists the runs' overlap CSVs (results/{pair}/{run}/overlap.csv), a sentence each. ``versions``,
    the environments that ran (shadowft.versions), are stated under the title. Returns the
    tidy frame written to ``out_csv``.
    """
    summary = tidy_scores(records)
    sigmas = {pair: overall_sigma(Path(path)) for pair, path in (similarity or {}).items()}
    overlaps: dict[str, list[str]] = {}
    for path in overlap:
        run = RunOverlap.read(Path(path))
        overlaps.setdefault(run.pair, []).append(run.sentence())
    sections = report_sections(summary, scoring or Scoring(), sigmas, overlaps)
    blocks = report_document(sections, versions_sentence(versions) if versions else None, digits=digits)
    atomic_write_text(Path(out_csv), summary.to_csv(index=False))
    atomic_write_text(Path(out_md), render_markdown(blocks))
    if out_html is not None:
        atomic_write_text(Path(out_html), render_html(blocks))
    return summary
