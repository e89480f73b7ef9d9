"""The report's blocks (``shadowft.report.document``) written out: summary.md and summary.html.

Each renderer only says how a block looks in its format; what the report says is the document's.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from shadowft.report.document import TITLE, Block, Heading, Paragraph

_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em}td{text-align:right;font-variant-numeric:tabular-nums}"
    "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}caption{caption-side:top;"
    "text-align:left;max-width:60em;padding:.3em 0;font-size:.9em}"
)


def render_markdown(blocks: Sequence[Block]) -> str:
    """summary.md: a blank line between blocks, each table as a pipe table under its caption."""
    return "\n".join(_markdown(block) + "\n" for block in blocks)


def render_html(blocks: Sequence[Block]) -> str:
    """summary.html: the same blocks as one self-contained page (for the HTML report)."""
    body = "\n".join(_html(block) for block in blocks)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(TITLE)}</title>'
        f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _markdown(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Paragraph):
        return block.text
    lines = [
        "| " + " | ".join(_escape(cell) for cell in block.header) + " |",
        "| :-- | " + " | ".join("--:" for _ in block.header[1:]) + " |",
        *("| " + " | ".join(_escape(cell) for cell in line) + " |" for line in block.lines),
    ]
    return f"{block.caption}\n\n" + "\n".join(lines)


def _html(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    rows = ["<tr>" + "".join(f"<th>{html.escape(cell)}</th>" for cell in block.header) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in line) + "</tr>" for line in block.lines]
    return f"<table><caption>{html.escape(block.caption)}</caption>" + "".join(rows) + "</table>"


def _escape(text: str) -> str:
    return str(text).replace("|", r"\|")
