"""The report's blocks (``shadowft.report.document``) written out: summary.md, summary.html, and the
reStructuredText that the landing page of ``snakemake --report`` includes (the verdict and glossary).

Each renderer only says how a block looks in its format; what the report says is the document's.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from shadowft.report.document import TITLE, Block, Bullets, Heading, Links, Paragraph

_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:110em}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em}td{text-align:right;font-variant-numeric:tabular-nums}"
    "td.text,th.text{text-align:left}th{background:#f3f3f3}caption{caption-side:top;"
    "text-align:left;max-width:60em;padding:.3em 0;font-size:.9em}td[title]{cursor:help}"
    "li{margin:.3em 0;max-width:70em}"
)


def render_markdown(blocks: Sequence[Block]) -> str:
    """summary.md: a blank line between blocks, each table as a pipe table under its caption."""
    return "\n".join(_markdown(block) + "\n" for block in blocks)


def render_html(blocks: Sequence[Block], title: str = TITLE) -> str:
    """summary.html: the same blocks as one self-contained page (for the HTML report)."""
    body = "\n".join(_html(block) for block in blocks)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def render_rst(blocks: Sequence[Block]) -> str:
    """The blocks as reStructuredText, to be included in a page whose title uses ``=``: level 2
    headings underlined with ``-``, deeper ones with ``~``; links as their labels (the page that
    includes them is not beside the files)."""
    return "\n".join(_rst(block) + "\n" for block in blocks)


def _markdown(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Links):
        return f"{block.lead}: " + ", ".join(f"[{label}]({href.format(ext='md')})" for label, href in block.links) + "."
    align = [":--"] * block.text_columns + ["--:"] * (len(block.header) - block.text_columns)
    lines = [
        "| " + " | ".join(_escape(cell) for cell in block.header) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(_escape(cell) for cell in line) + " |" for line in block.lines),
    ]
    return (f"{block.caption}\n\n" if block.caption else "") + "\n".join(lines)


def _html(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Links):
        links = ", ".join(
            f'<a href="{html.escape(href.format(ext="html"))}">{html.escape(label)}</a>' for label, href in block.links
        )
        return f"<p>{html.escape(block.lead)}: {links}.</p>"

    def cell(tag: str, index: int, text: str, note: str = "") -> str:
        kind = ' class="text"' if index < block.text_columns else ""
        title = f' title="{html.escape(note)}"' if note else ""
        return f"<{tag}{kind}{title}>{html.escape(text)}</{tag}>"

    rows = ["<tr>" + "".join(cell("th", i, text) for i, text in enumerate(block.header)) + "</tr>"]
    for number, line in enumerate(block.lines):
        notes = block.notes[number] if number < len(block.notes) else [""] * len(line)
        rows.append("<tr>" + "".join(cell("td", i, text, notes[i]) for i, text in enumerate(line)) + "</tr>")
    caption = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
    return f"<table>{caption}" + "".join(rows) + "</table>"


def _rst(block: Block) -> str:
    if isinstance(block, Heading):
        text = _rst_text(block.text)
        return f"{text}\n{('-' if block.level <= 2 else '~') * len(text)}"
    if isinstance(block, Paragraph):
        return _rst_text(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {_rst_text(item)}" for item in block.items)
    if isinstance(block, Links):
        return _rst_text(f"{block.lead}: " + ", ".join(label for label, _ in block.links) + ".")
    lines = [f".. list-table:: {_rst_text(block.caption)}", "   :header-rows: 1", ""]
    for line in [block.header, *block.lines]:
        lines += [f"   * - {_rst_text(line[0]) or '–'}"] + [f"     - {_rst_text(cell) or '–'}" for cell in line[1:]]
    return "\n".join(lines)


def _rst_text(text: str) -> str:
    """Text as reStructuredText shows it literally: its markup characters escaped."""
    return re.sub(r"([\\`*_|\[\]])", r"\\\1", str(text))


def _escape(text: str) -> str:
    return str(text).replace("|", r"\|")
