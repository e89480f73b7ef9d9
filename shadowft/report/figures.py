"""The report's figures (matplotlib, PNG): what ``shadowft.report``'s tables say, drawn.

Per pair: ``plot_scores`` (grouped bars, one panel per sweep setting), ``plot_alpha`` (score
against the graft strength, from Instruct at alpha 0), ``plot_claim`` (the task against the skills
kept: the paper's claim in one picture), ``plot_learning_rate`` (score against the learning rate,
only where a setting ran more than one), ``plot_similarity`` (the paper's weight-similarity figure:
sigma per layer and per tensor type, from shadowft.engine.sigma's CSV) and ``plot_training_loss``
(each run's loss curves on BASE and INSTRUCT, from the trainer's state).

Every variant has one colour in every figure (``shadowft.report.palette``). A score of one run is
drawn with its 95% interval as an error bar; where several seeds ran a variant, its mean with the
standard deviation, and each seed's value as a dot. A bar of height 0 is marked by a dot at 0, so
that every variant shows. Sizes and fonts are chosen for the width at which the HTML report shows
a figure (about 1000 pixels).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from functools import wraps
from pathlib import Path

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from shadowft.engine.sigma import tensor_type
from shadowft.evaluation.benchmarks import Scoring
from shadowft.report.answers import Outcomes, predictions_beside, read_outcomes
from shadowft.report.palette import KIND_COLOURS, ROLE_COLOURS, variant_colour
from shadowft.report.records import read_summary
from shadowft.report.tables import (
    BASELINE,
    REFERENCE,
    Cell,
    Row,
    ScoreTable,
    credit_column,
    learning_rate_swept,
    pair_tables,
    read_similarity,
)
from shadowft.report.verdict import paper_graft, role_columns
from shadowft.workflow.sweep import Run

_PANEL_COLUMNS = 2
# Legible at about 1000 pixels wide: figures of at most 11 inches at 110 dots per inch, 12-point text.
_DPI = 110
_STYLE = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "legend.fontsize": 11,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "figure.titlesize": 14,
}
# The similarity the paper reports for its pairs (Llama-3.1-8B: under 2%): Shadow-FT assumes as close a pair.
PAPER_SIGMA = 0.02
# The settings of one alpha figure are drawn this share of the alpha range apart, so that lines that
# coincide (two settings both at 0) are both seen.
_DODGE = 0.012
_SETTING_STYLES = (("o", "-"), ("s", "--"), ("D", "-."), ("^", ":"))


def _styled(draw: Callable) -> Callable:
    """Draw with the report's text sizes, whatever matplotlib's defaults are where it runs."""

    @wraps(draw)
    def styled(*args, **kwargs):
        with rc_context(_STYLE):
            return draw(*args, **kwargs)

    return styled


def save_png(figure: Figure, out_png: Path) -> Path:
    """Write the figure to out_png atomically (temporary file, then rename), as shadowft.io does for text."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    partial = out_png.with_name(f".{out_png.name}.tmp-{secrets.token_hex(4)}")
    try:
        figure.savefig(partial, format="png", dpi=_DPI)
        os.replace(partial, out_png)
    finally:
        partial.unlink(missing_ok=True)
    return out_png


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(min(width, 11.0), height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _panels(figure: Figure, count: int, columns: int = _PANEL_COLUMNS) -> list:
    columns = min(count, columns)
    rows = math.ceil(count / columns)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in axes[count:]:
        unused.set_visible(False)
    return list(axes[:count])


def _alphas(tables: Sequence[ScoreTable]) -> list[float]:
    return sorted({row.alpha for table in tables for row in table.rows if row.kind == "shadow"})


def _colour(row: Row, alphas: Sequence[float]) -> object:
    return variant_colour(row.kind, row.alpha, alphas)


def _error(cell: Cell) -> tuple[float, float]:
    """How far below and above the drawn value a cell's error bar reaches: its 95% interval for one
    run, the standard deviation over several seeds, nothing where neither is known."""
    if math.isnan(cell.mean):
        return 0.0, 0.0
    if cell.n > 1:
        return (cell.sd or 0.0, cell.sd or 0.0)
    estimate = cell.estimate
    if estimate is None or estimate.low is None or estimate.high is None:
        return 0.0, 0.0
    return max(0.0, cell.mean - estimate.low), max(0.0, estimate.high - cell.mean)


def _errorbar(ax, xs, cells: Sequence[Cell], **style) -> None:
    """Points (or a line) with each cell's error bar, and each seed's value as a dot where several ran."""
    means = [cell.mean for cell in cells]
    errors = np.array([_error(cell) for cell in cells]).T
    ax.errorbar(xs, means, yerr=errors, capsize=3, elinewidth=1.0, **style)
    _seed_dots(ax, xs, cells, style.get("color", "black"))


def _seed_dots(ax, xs, cells: Sequence[Cell], colour) -> None:
    for x, cell in zip(xs, cells, strict=True):
        if cell.n > 1:
            ax.scatter([x] * len(cell.values), cell.values, s=12, color=colour, edgecolor="black", lw=0.4, zorder=4)


@_styled
def plot_scores(tables: Sequence[ScoreTable], out_png: Path) -> Path:
    """Grouped bars: per sweep setting a panel, per column (benchmark, group, average) a group, per variant a bar."""
    pair = tables[0].pair
    alphas = _alphas(tables)
    figure = _figure(11.0, 3.8 * len(tables) + 0.8)
    axes = figure.subplots(len(tables), 1, squeeze=False)[:, 0]
    for ax, table in zip(axes, tables, strict=True):
        groups = np.arange(len(table.columns))
        width = 0.84 / len(table.rows)
        for position, row in enumerate(table.rows):
            cells = [row.cells[column] for column in table.columns]
            offsets = groups - 0.42 + width * (position + 0.5)
            means = np.array([cell.mean for cell in cells])
            colour = _colour(row, alphas)
            ax.bar(offsets, means, width, color=colour, edgecolor="black", linewidth=0.4, label=row.label)
            errors = np.array([_error(cell) for cell in cells]).T
            # Black on a white halo: seen on the black and grey bars too.
            for ecolor, linewidth in (("white", 2.4), ("black", 0.9)):
                ax.errorbar(offsets, means, yerr=errors, fmt="none", ecolor=ecolor, capsize=2, linewidth=linewidth)
            _seed_dots(ax, offsets, cells, colour)
            # A bar of height 0 has no area: a dot at 0 in its colour shows it is there.
            zero = np.isclose(means, 0.0)
            ax.scatter(offsets[zero], means[zero], s=22, color=colour, edgecolor="black", lw=0.6, zorder=5)
        ax.set_xticks(list(groups), [_wrapped(column) for column in table.columns])
        ax.set_ylabel("score (%)")
        ax.set_ylim(-4, 108)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(table.setting.title if table.setting else "untuned variants")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.suptitle(f"{pair}: every variant's score per benchmark" + _bars_note(tables))
    return save_png(figure, out_png)


def _wrapped(column: str) -> str:
    """A column's name on two lines where it has a metric in parentheses (the partial-credit columns)."""
    return column.replace(" (", "\n(")


@_styled
def plot_alpha(tables: Sequence[ScoreTable], out_png: Path) -> Path:
    """Score against the graft strength alpha, from Instruct at alpha 0: a line per sweep setting,
    with Base, Instruct tuned directly and the tuned base as levels."""
    pair = tables[0].pair
    columns = tables[0].columns
    settings = [table for table in tables if any(row.kind == "shadow" for row in table.rows)]
    if not settings:
        raise ValueError(f"pair {pair!r} has no grafts: no alpha curve to draw")
    alphas = _alphas(settings)
    top = max(alphas)
    figure = _figure(11.0, 3.9 * math.ceil(len(columns) / _PANEL_COLUMNS) + 1.4)
    for ax, column in zip(_panels(figure, len(columns)), columns, strict=True):
        base = tables[0].row("base")
        if base is not None:
            ax.axhline(base.cells[column].mean, color=KIND_COLOURS["base"], linestyle=":", linewidth=1.8)
        for index, table in enumerate(settings):
            marker, line = _SETTING_STYLES[index % len(_SETTING_STYLES)]
            dodge = (index - (len(settings) - 1) / 2) * _DODGE * top
            for kind in (BASELINE, "base_ft"):
                level = table.row(kind)
                if level is not None:
                    ax.axhline(level.cells[column].mean, color=KIND_COLOURS[kind], linestyle=line, linewidth=1.4)
            path = [row for row in (table.row(REFERENCE), *_grafts(table)) if row is not None]
            xs = [(row.alpha or 0.0) + dodge for row in path]
            cells = [row.cells[column] for row in path]
            ax.plot(xs, [cell.mean for cell in cells], color=KIND_COLOURS["shadow"], linestyle=line, linewidth=1.4)
            for x, row, cell in zip(xs, path, cells, strict=True):
                _errorbar(
                    ax, [x], [cell], color=_colour(row, alphas), marker=marker, markersize=7, mec="black", mew=0.5
                )
        ax.set_xticks([0.0, *alphas], ["0\n(Instruct)", *(f"{a:g}" for a in alphas)])
        ax.set_xlabel("graft strength α (W_I + α·Δ)")
        ax.set_ylabel("score (%)")
        ax.set_ylim(-4, 104)
        ax.set_title(column)
        ax.grid(alpha=0.3)
    figure.legend(
        handles=_alpha_legend(tables[0], settings),
        loc="outside lower center",
        ncols=3,
        frameon=False,
    )
    figure.suptitle(f"{pair}: score against graft strength α" + _bars_note(tables))
    return save_png(figure, out_png)


def _grafts(table: ScoreTable) -> list[Row]:
    return sorted((row for row in table.rows if row.kind == "shadow"), key=lambda row: row.alpha)


def _alpha_legend(table: ScoreTable, settings: Sequence[ScoreTable]) -> list[Line2D]:
    """The alpha figure's key: the levels' colours, and each setting's marker and line."""
    handles = [
        Line2D([], [], color=KIND_COLOURS["base"], linestyle=":", linewidth=1.8, label="Base"),
        Line2D([], [], color=KIND_COLOURS[REFERENCE], marker="o", linestyle="", label="Instruct (α = 0)"),
    ]
    for index, setting in enumerate(settings):
        marker, line = _SETTING_STYLES[index % len(_SETTING_STYLES)]
        detail = f" ({_setting_detail(setting)})" if len(settings) > 1 and _setting_detail(setting) else ""
        label = f"{_graft_label(setting)}{detail}"
        handles.append(Line2D([], [], color=KIND_COLOURS["shadow"], marker=marker, linestyle=line, label=label))
        for kind in (BASELINE, "base_ft"):
            row = setting.row(kind)
            if row is not None:
                handles.append(Line2D([], [], color=KIND_COLOURS[kind], linestyle=line, label=f"{row.label}{detail}"))
    return handles


def _graft_label(table: ScoreTable) -> str:
    return f"Shadow-{table.setting.tuning_label}" if table.setting else "the graft"


@_styled
def plot_claim(tables: Sequence[ScoreTable], out_png: Path, scoring: Scoring) -> Path:
    """The paper's claim in one picture: the task against the skills kept (retention), each variant a
    point with its intervals both ways; the graft's path from Instruct (alpha 0) to the full update,
    one per setting; Instruct tuned directly and the tuned base as points. One panel for the
    benchmarks' own scores and, where both declare one, one for their partial credit."""
    pair = tables[0].pair
    settings = [table for table in tables if paper_graft(table) is not None]
    if not settings:
        raise ValueError(f"pair {pair!r} has no grafts: no claim figure to draw")
    task = [column for column, role in role_columns(settings[0], scoring, "task") if role]
    retention = [column for column, role in role_columns(settings[0], scoring, "retention") if role]
    if not task or not retention:
        raise ValueError(f"pair {pair!r}: the claim figure needs a benchmark of role task and one of role retention")
    axes_pairs = [(retention[0], task[0], "the benchmarks' scores")]
    credits = [scoring.partial_credit.get(name) for name in (retention[0], task[0])]
    if all(credits) and credit_column(retention[0], credits[0]) in settings[0].columns:
        axes_pairs.append(
            (credit_column(retention[0], credits[0]), credit_column(task[0], credits[1]), "their partial credit")
        )
    alphas = _alphas(settings)
    figure = _figure(5.3 * len(axes_pairs) + 0.4, 6.2)
    for ax, (x_column, y_column, what) in zip(_panels(figure, len(axes_pairs)), axes_pairs, strict=True):
        for kind in ("base", REFERENCE):
            row = settings[0].row(kind)
            if row is not None:
                _point(ax, row, x_column, y_column, KIND_COLOURS[kind], "o", 9)
        for index, table in enumerate(settings):
            marker, line = _SETTING_STYLES[index % len(_SETTING_STYLES)]
            path = [row for row in (table.row(REFERENCE), *_grafts(table)) if row is not None]
            ax.plot(
                [row.cells[x_column].mean for row in path],
                [row.cells[y_column].mean for row in path],
                color=KIND_COLOURS["shadow"],
                linestyle=line,
                linewidth=1.4,
            )
            for row in path[1:]:
                _point(ax, row, x_column, y_column, _colour(row, alphas), marker, 8)
                # Every alpha named on the first path, the paper's on each: the shades say the rest.
                if index == 0 or row.alpha == max(alphas):
                    ax.annotate(
                        f"α={row.alpha:g}",
                        (row.cells[x_column].mean, row.cells[y_column].mean),
                        textcoords="offset points",
                        xytext=(4, 8 + 14 * index),
                        fontsize=10,
                        color=KIND_COLOURS["shadow"],
                    )
            for kind in (BASELINE, "base_ft"):
                row = table.row(kind)
                if row is not None:
                    _point(ax, row, x_column, y_column, KIND_COLOURS[kind], marker, 9)
        ax.set_xlim(-4, 104)
        ax.set_ylim(-4, 104)
        ax.set_xlabel(f"{x_column}: skills kept (retention, %)")
        ax.set_ylabel(f"{y_column}: the task (%)")
        ax.set_title(what)
        ax.grid(alpha=0.3)
    figure.legend(handles=_claim_legend(settings), loc="outside lower center", ncols=3, frameon=False)
    figure.suptitle(
        f"{pair}: the task against the skills kept. The claim: the graft (vermilion, from Instruct at α = 0) rises\n"
        "above Instruct (the task learned) and stays right of Instruct tuned directly (blue: the skills kept)"
        + _bars_note(tables)
    )
    return save_png(figure, out_png)


def _point(ax, row: Row, x_column: str, y_column: str, colour, marker: str, size: float) -> None:
    x, y = row.cells[x_column], row.cells[y_column]
    ax.errorbar(
        [x.mean],
        [y.mean],
        xerr=np.array([_error(x)]).T,
        yerr=np.array([_error(y)]).T,
        color=colour,
        marker=marker,
        markersize=size,
        mec="black",
        mew=0.6,
        capsize=3,
        elinewidth=1.0,
        zorder=4,
    )


def _claim_legend(settings: Sequence[ScoreTable]) -> list[Line2D]:
    """The claim figure's key: the points drawn (Base only where it was scored), each setting's path."""
    labels = {"base": "Base", REFERENCE: "Instruct (α = 0)"}
    handles = [
        Line2D([], [], color=KIND_COLOURS[kind], marker="o", linestyle="", mec="black", label=label)
        for kind, label in labels.items()
        if settings[0].row(kind) is not None
    ]
    for index, table in enumerate(settings):
        marker, line = _SETTING_STYLES[index % len(_SETTING_STYLES)]
        handles.append(
            Line2D([], [], color=KIND_COLOURS["shadow"], marker=marker, linestyle=line, label=_graft_label(table))
        )
        for kind in (BASELINE, "base_ft"):
            row = table.row(kind)
            if row is not None:
                handles.append(
                    Line2D([], [], color=KIND_COLOURS[kind], marker=marker, linestyle="", mec="black", label=row.label)
                )
    return handles


@_styled
def plot_learning_rate(tables: Sequence[ScoreTable], out_png: Path) -> Path:
    """Score against the learning rate (log scale): per tuning, Instruct tuned directly and each graft."""
    pair = tables[0].pair
    if not learning_rate_swept(tables):
        raise ValueError(f"pair {pair!r} ran one learning rate per setting: no learning-rate curve to draw")
    columns = tables[0].columns
    lines: dict[tuple, list[tuple[float, Row]]] = {}
    for table in tables:
        setting = table.setting
        if setting is None or setting.learning_rate is None:
            continue
        for row in table.rows:
            if row.kind in ("base", REFERENCE):
                continue
            rank = f", rank {setting.lora_rank}" if setting.lora_rank is not None else ""
            key = (setting.stage, setting.tuning_label, rank, row.kind, row.alpha, row.label)
            lines.setdefault(key, []).append((setting.learning_rate, row))
    figure = _figure(11.0, 3.9 * math.ceil(len(columns) / _PANEL_COLUMNS) + 1.4)
    tunings = list(dict.fromkeys((key[0], key[1], key[2]) for key in lines))
    alphas = _alphas(tables)
    for ax, column in zip(_panels(figure, len(columns)), columns, strict=True):
        for kind in ("base", REFERENCE):
            row = tables[0].row(kind)
            if row is not None:
                label = "Instruct (α = 0)" if kind == REFERENCE else row.label
                ax.axhline(row.cells[column].mean, color=KIND_COLOURS[kind], linestyle=":", linewidth=1.8, label=label)
        for key, points in lines.items():
            _, _, rank, kind, alpha, label = key
            points.sort(key=lambda point: point[0])
            marker, line = _SETTING_STYLES[tunings.index(key[:3]) % len(_SETTING_STYLES)]
            _errorbar(
                ax,
                [rate for rate, _ in points],
                [row.cells[column] for _, row in points],
                color=variant_colour(kind, alpha, alphas),
                marker=marker,
                linestyle=line,
                label=label + rank,
            )
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("score (%)")
        ax.set_title(column)
        ax.grid(alpha=0.3)
    _figure_legend(figure)
    figure.suptitle(f"{pair}: score against learning rate" + _bars_note(tables))
    return save_png(figure, out_png)


@_styled
def plot_similarity(similarity_csv: Path, out_png: Path, pair: str) -> Path:
    """The paper's weight-similarity figure: sigma per layer for each tensor type, and per tensor type
    overall, with the pair's overall sigma and the paper's 2% beside it."""
    table = read_similarity(similarity_csv)
    tensors = table[table["level"] == "tensor"]
    if tensors.empty:
        raise ValueError(f"{similarity_csv} has no tensor rows")
    overall = table.loc[table["level"] == "overall", "sigma"]
    in_layers = tensors[tensors["layer"].notna()].assign(type=lambda frame: frame["name"].map(tensor_type))
    others = tensors[tensors["layer"].isna()]
    figure = _figure(11.0, 6.4)
    by_layer, by_type = figure.subplots(1, 2, width_ratios=[3, 2])
    # Tensor types are no variants: a categorical palette of their own.
    colours = colormaps["tab20"]
    types = list(dict.fromkeys(in_layers["type"]))
    for index, kind in enumerate(types):
        rows = in_layers[in_layers["type"] == kind].sort_values("layer")
        by_layer.plot(rows["layer"].astype(int), 100 * rows["sigma"], marker="o", color=colours(index % 20), label=kind)
    levels = [(100 * PAPER_SIGMA, dict(color="0.35", linestyle="-.", linewidth=1.6, label="the paper's pairs: < 2%"))]
    if len(overall) == 1:
        style = dict(color="black", linestyle="--", linewidth=1.2, label="overall σ (mean over layer tensors)")
        levels.append((100 * float(overall.iloc[0]), style))
    for value, style in levels:
        by_layer.axhline(value, **style)
        by_type.axvline(value, **style)
    by_layer.set_ylim(bottom=0)
    if not in_layers.empty:
        layers = sorted(in_layers["layer"].astype(int).unique())
        by_layer.set_xticks(layers[:: max(1, math.ceil(len(layers) / 16))])
    by_layer.set_xlabel("layer")
    by_layer.set_ylabel("σ (%)")
    by_layer.set_title("per layer, one line per tensor type")
    by_layer.grid(alpha=0.3)
    figure.legend(*by_layer.get_legend_handles_labels(), loc="outside lower center", ncols=4, frameon=False)
    names = [*types, *others["name"].map(lambda name: name.removesuffix(".weight"))]
    values = [100 * in_layers.loc[in_layers["type"] == kind, "sigma"].mean() for kind in types]
    values += list(100 * others["sigma"])
    bar_colours = [colours(index % 20) for index in range(len(types))] + ["0.55"] * len(others)
    by_type.barh(range(len(names)), values, color=bar_colours)
    # After the bars: a limit set before them would stop the axis growing to hold them.
    by_type.set_xlim(left=0, right=1.05 * max([*values, *(value for value, _ in levels)]))
    by_type.set_yticks(range(len(names)), names, fontsize="small")
    by_type.invert_yaxis()
    by_type.set_xlabel("σ (%)")
    by_type.set_title("per tensor type, mean over layers\n(grey: tensors outside the layers)")
    by_type.grid(axis="x", alpha=0.3)
    summary = f", overall σ = {100 * float(overall.iloc[0]):.2f}%" if len(overall) == 1 else ""
    figure.suptitle(
        f"{pair}: weight difference between BASE and INSTRUCT{summary}\n"
        "σ = Σ|W_B − W_I| / (Σ|W_B| + Σ|W_I|) per tensor; dash-dot: the paper's pairs, under 2%"
    )
    return save_png(figure, out_png)


#: The trainer's record of a run (Hugging Face Trainer): its log_history holds the loss per logging step.
TRAINER_STATE = "trainer_state.json"
_ROLE_LABELS = {"base": "BASE (its update is grafted)", "instruct": "INSTRUCT (the baseline)"}


def training_losses(state_json: Path, key: str = "loss") -> tuple[list[int], list[float]]:
    """(steps, losses) of one training run, from the Trainer's state file beside its model: the
    training loss, or with `key` ``eval_loss`` the validation loss (empty where none was logged)."""
    history = json.loads(Path(state_json).read_text(encoding="utf-8")).get("log_history", [])
    points = [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]
    if not points:
        if key != "loss":
            return [], []
        raise ValueError(f"{state_json}: no training loss logged (log_history has no 'loss' entries)")
    steps, losses = zip(*points, strict=True)
    return list(steps), list(losses)


@_styled
def plot_training_loss(runs: Mapping[str, Mapping[str, Path]], out_png: Path, pair: str) -> Path:
    """Every run's training loss (log scale) against the step, BASE and INSTRUCT side by side, and the
    validation loss where the trainer logged one: one panel per setting (stage, tuning, learning rate,
    rank), one line per role and seed. `runs` maps a run's name (shadowft.workflow.sweep) to
    {role: its trainer_state.json}."""
    settings: dict[tuple, list[tuple[Run, Mapping[str, Path]]]] = {}
    for name, states in runs.items():
        run = Run.parse(name)
        settings.setdefault((run.stage, run.tuning, run.learning_rate, run.lora_rank), []).append((run, states))
    if not settings:
        raise ValueError(f"{pair}: no training runs to draw")
    figure = _figure(5.4 * min(len(settings), _PANEL_COLUMNS) + 0.4, 4.4 * math.ceil(len(settings) / _PANEL_COLUMNS))
    for ax, ((stage, tuning, learning_rate, rank), members) in zip(
        _panels(figure, len(settings)), settings.items(), strict=False
    ):
        for index, (_, states) in enumerate(sorted(members, key=lambda member: member[0].seed)):
            for role, state in sorted(states.items()):
                shade = 1.0 if index == 0 else 0.45
                steps, losses = training_losses(state)
                label = _ROLE_LABELS[role] if index == 0 else None
                ax.plot(steps, losses, color=ROLE_COLOURS[role], alpha=shade, label=label)
                steps, losses = training_losses(state, "eval_loss")
                if steps:
                    label = f"{role.upper()} validation" if index == 0 else None
                    ax.plot(
                        steps, losses, color=ROLE_COLOURS[role], alpha=shade, linestyle="--", marker="o", label=label
                    )
        seeds = ", ".join(str(run.seed) for run, _ in members)
        rank_text = f", rank {rank}" if rank is not None else ""
        ax.set_title(f"{stage.upper()} {tuning}, lr {learning_rate:g}{rank_text}\nseed {seeds}")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{stage.upper()} loss (log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(frameon=False)
    figure.suptitle(f"{pair}: training loss of each run, on BASE and on INSTRUCT")
    return save_png(figure, out_png)


# What a rule's named outputs draw: the table figures, and those that also need the scoring rule.
FIGURES: dict[str, Callable[[Sequence[ScoreTable], Path], Path]] = {
    "scores": plot_scores,
    "alpha": plot_alpha,
    "learning_rate": plot_learning_rate,
}
SCORED_FIGURES: dict[str, Callable[[Sequence[ScoreTable], Path, Scoring], Path]] = {"claim": plot_claim}


def draw_figures(
    summary_csv: Path,
    pair: str,
    outputs: Mapping[str, Path],
    *,
    scoring: Scoring | None = None,
    similarity_csv: Path | None = None,
    results: Path | None = None,
) -> list[Path]:
    """Draw the named figures (keys of FIGURES or SCORED_FIGURES, or "similarity") of one pair from
    summary.csv; `results` (the folder holding results/) is where the predictions the intervals and
    paired tests resample are found."""
    known = [*FIGURES, *SCORED_FIGURES, "similarity"]
    unknown = sorted(set(outputs) - set(known))
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(known)}")
    scoring = scoring or Scoring()
    summary = read_summary(Path(summary_csv))
    outcomes: Outcomes = {} if results is None else read_outcomes(summary, scoring, predictions_beside(results))
    tables = pair_tables(summary, pair, scoring, outcomes)
    drawn = []
    for name, out in outputs.items():
        if name == "similarity":
            if similarity_csv is None:
                raise ValueError("the similarity figure needs the pair's similarity CSV")
            drawn.append(plot_similarity(Path(similarity_csv), Path(out), pair))
        elif name in SCORED_FIGURES:
            drawn.append(SCORED_FIGURES[name](tables, Path(out), scoring))
        else:
            drawn.append(FIGURES[name](tables, Path(out)))
    return drawn


def _setting_detail(table: ScoreTable) -> str:
    setting = table.setting
    parts = [f"lr {setting.learning_rate:g}"] if setting.learning_rate is not None else []
    parts += [f"rank {setting.lora_rank}"] if setting.lora_rank is not None else []
    parts += [setting.stage.upper()] if setting.stage not in (None, "sft") else []
    return ", ".join(parts)


def _figure_legend(figure: Figure) -> None:
    """One legend for all panels (they share their lines), below the panels."""
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), frameon=False)


def _bars_note(tables: Sequence[ScoreTable]) -> str:
    """What the error bars are, and the seeds."""
    seeds = sorted({seed for table in tables for seed in table.seeds})
    if len(seeds) > 1:
        return (
            f"\nmean ± standard deviation over seeds {', '.join(map(str, seeds))} (dots: each seed); "
            "the graft paler at smaller α"
        )
    return "\nerror bars: 95% intervals" + (f"; seed {seeds[0]}" if seeds else "") + "; the graft paler at smaller α"
