"""From a score to the answers behind it: the same few questions of one benchmark as every variant of a
pair answered them, as Markdown and HTML (``results/samples/{pair}/{benchmark}.{md,html}``), with a
link to each variant's full predictions.json.

The questions are chosen by a rule, not a random state: the `SAMPLE_SIZE` whose sha256 of
"{benchmark}/{index}" is smallest, in question order. Every variant answered the same questions in
the same order (the benchmark's), so each question is shown once with every variant's answer, its
verdict and its partial credit where the evaluation recorded them (shadowft.evaluation.results).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shadowft.evaluation.results import CORRECT
from shadowft.evaluation.spec import PARTIAL_CREDIT
from shadowft.io import atomic_write_text
from shadowft.report.answers import in_order
from shadowft.report.document import SAMPLE_SIZE, Block, Heading, Links, Paragraph, TextTable
from shadowft.report.render import render_html, render_markdown
from shadowft.report.tables import variant_name_label
from shadowft.workflow.sweep import Variant

# Long prompts (few-shot examples) and answers (chains of thought) are cut here; the file linked holds them whole.
PROMPT_CHARACTERS = 600
ANSWER_CHARACTERS = 300


@dataclass(frozen=True)
class VariantAnswers:
    """One variant's predictions of a benchmark: its name, its predictions.json and what it holds."""

    variant: str
    path: Path
    datasets: Mapping[str, Mapping[str, Mapping]]

    @classmethod
    def read(cls, variant: str, path: Path) -> VariantAnswers:
        return cls(variant, Path(path), json.loads(Path(path).read_text(encoding="utf-8")))


def chosen(benchmark: str, count: int, size: int = SAMPLE_SIZE) -> list[int]:
    """The question indices shown: the `size` with the smallest sha256 of "{benchmark}/{index}", in order."""
    rank = sorted(range(count), key=lambda index: hashlib.sha256(f"{benchmark}/{index}".encode()).hexdigest())
    return sorted(rank[:size])


def sample_document(pair: str, benchmark: str, answers: Sequence[VariantAnswers], out_dir: Path) -> list[Block]:
    """The sample's blocks: what it is, the links to every variant's predictions (relative to
    `out_dir`, where the files are written), then per dataset and chosen question a table of answers."""
    if not answers:
        raise ValueError(f"{pair}/{benchmark}: no predictions to sample")
    first = answers[0]
    labels = _labels([a.variant for a in answers])
    blocks: list[Block] = [
        Heading(1, f"{pair}: {benchmark}, answer by answer"),
        Paragraph(
            f"The same questions for every variant: {SAMPLE_SIZE} per dataset, chosen by a rule (the smallest "
            f'sha256 of "{benchmark}/{{index}}"), not for what any variant answered. The prompt is the last turn '
            f"the model was asked (cut at {PROMPT_CHARACTERS} characters), an answer is cut at {ANSWER_CHARACTERS}; "
            "right: the evaluator's verdict on the answer, where it gave one per question."
        ),
        Links(
            "Every answer of each variant (predictions.json)",
            [(label, os.path.relpath(a.path, out_dir)) for label, a in zip(labels, answers, strict=True)],
        ),
    ]
    for dataset, predictions in first.datasets.items():
        entries = in_order(predictions)
        for index in chosen(benchmark if len(first.datasets) == 1 else f"{benchmark}/{dataset}", len(entries)):
            entry = entries[index]
            title = f"Question {index + 1} of {len(entries)}" + (f" ({dataset})" if len(first.datasets) > 1 else "")
            blocks.append(Heading(2, title))
            blocks.append(Paragraph(f"Prompt: {_cut(_prompt(entry), PROMPT_CHARACTERS)}"))
            blocks.append(Paragraph(f"Gold: {_cut(_text(entry.get('gold')), ANSWER_CHARACTERS)}"))
            blocks.append(_answers_table(answers, labels, dataset, index))
    return blocks


def _labels(variants: Sequence[str]) -> list[str]:
    """Each variant's label in the tables, with its run's seed where runs of several seeds share one."""
    labels = [variant_name_label(variant) for variant in variants]
    for index, (label, variant) in enumerate(zip(labels, variants, strict=True)):
        run = Variant.parse(variant).run
        if labels.count(label) > 1 and run is not None:
            labels[index] = f"{label}, seed {run.seed}"
    return labels


def _answers_table(answers: Sequence[VariantAnswers], labels: Sequence[str], dataset: str, index: int) -> TextTable:
    entries = [in_order(a.datasets.get(dataset, {})) for a in answers]
    credits = [m for m in PARTIAL_CREDIT if any(index < len(e) and m in e[index] for e in entries)]
    lines = []
    for label, mine in zip(labels, entries, strict=True):
        if index >= len(mine):
            lines.append([label, "(no answer)", "–", *("–" for _ in credits)])
            continue
        entry = mine[index]
        verdict = entry.get(CORRECT)
        right = "–" if not isinstance(verdict, bool) else ("yes" if verdict else "no")
        values = [f"{100 * entry[m]:.0f}%" if isinstance(entry.get(m), (int, float)) else "–" for m in credits]
        answer = _cut(_text(entry.get("prediction")), ANSWER_CHARACTERS)
        lines.append([label, answer or "(empty)", right, *values])
    return TextTable("", ["Variant", "Answer", "Right", *credits], lines, text_columns=2)


def _prompt(entry: Mapping) -> str:
    """The last turn the model was asked (OpenCompass's origin_prompt: a string, or a list of turns)."""
    prompt = entry.get("origin_prompt")
    if isinstance(prompt, list) and prompt:
        last = prompt[-1]
        return _text(last.get("prompt") if isinstance(last, Mapping) else last)
    return _text(prompt)


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _cut(text: str, limit: int) -> str:
    """The text on one line (a line break shown as ⏎), cut at `limit` characters."""
    text = " ".join(text.replace("\n", " ⏎ ").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_samples(
    pair: str, benchmark: str, predictions: Mapping[str, Path], out_md: Path, out_html: Path
) -> list[Block]:
    """Write the sample of one benchmark of a pair: `predictions` maps each variant's name (in report
    order) to its predictions.json."""
    answers = [VariantAnswers.read(variant, path) for variant, path in predictions.items()]
    blocks = sample_document(pair, benchmark, answers, Path(out_md).parent)
    atomic_write_text(Path(out_md), render_markdown(blocks))
    atomic_write_text(Path(out_html), render_html(blocks, title=f"{pair}: {benchmark}"))
    return blocks
