"""The report's figures (matplotlib, PNG): what ``shadowft.report``'s tables say, drawn.

Per pair: ``plot_scores`` (grouped bars, one panel per sweep setting), ``plot_alpha`` (score
against the graft strength), ``plot_learning_rate`` (score against the learning rate, only
where a setting ran more than one), ``plot_similarity`` (the paper's weight-similarity
figure: sigma per layer and per tensor type, from shadowft.engine.sigma's CSV) and
``plot_training_loss`` (each run's loss curves on BASE and INSTRUCT, from the trainer's state).
Where several seeds ran a variant, its mean is drawn with the standard deviation as an error bar.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from shadowft.engine.sigma import tensor_type
from shadowft.evaluation.benchmarks import Scoring
from shadowft.report.records import read_summary
from shadowft.report.tables import BASELINE, REFERENCE, ScoreTable, learning_rate_swept, pair_tables, read_similarity
from shadowft.workflow.sweep import Run

_UNTUNED_COLOURS = {"base": "0.6", "instruct": "0.15"}
_KIND_COLOURS = {"base_ft": "C1", "instruct_ft": "C0"}
_PANEL_COLUMNS = 3


def save_png(figure: Figure, out_png: Path) -> Path:
    """Write the figure to out_png atomically (temporary file, then rename), as shadowft.io does for text."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    partial = out_png.with_name(f".{out_png.name}.tmp-{secrets.token_hex(4)}")
    try:
        figure.savefig(partial, format="png", dpi=120)
        os.replace(partial, out_png)
    finally:
        partial.unlink(missing_ok=True)
    return out_png


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _panels(figure: Figure, count: int) -> list:
    columns = min(count, _PANEL_COLUMNS)
    rows = math.ceil(count / columns)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in axes[count:]:
        unused.set_visible(False)
    return list(axes[:count])


def _alpha_colours(tables: Sequence[ScoreTable]) -> dict[float, object]:
    alphas = sorted({row.alpha for table in tables for row in table.rows if row.kind == "shadow"})
    cmap = colormaps["autumn"]
    return {alpha: cmap(0.75 * rank / max(1, len(alphas) - 1)) for rank, alpha in enumerate(alphas)}


def _row_colour(row, alpha_colours) -> object:
    if row.kind == "shadow":
        return alpha_colours[row.alpha]
    return _UNTUNED_COLOURS.get(row.kind) or _KIND_COLOURS[row.kind]


def _spread(cells) -> list[float] | None:
    """Error bars (standard deviation over seeds) where any cell has one, else None."""
    sds = [cell.sd for cell in cells]
    return None if all(sd is None for sd in sds) else [sd or 0.0 for sd in sds]


def plot_scores(tables: Sequence[ScoreTable], out_png: Path) -> Path:
    """Grouped bars: per sweep setting a panel, per column (benchmark, group, average) a group, per variant a bar."""
    pair = tables[0].pair
    widest = max(len(table.rows) * len(table.columns) for table in tables)
    figure = _figure(max(7.0, 0.28 * widest + 3.5), 3.4 * len(tables) + 0.6)
    axes = figure.subplots(len(tables), 1, squeeze=False)[:, 0]
    alpha_colours = _alpha_colours(tables)
    for ax, table in zip(axes, tables, strict=True):
        groups = np.arange(len(table.columns))
        width = 0.8 / len(table.rows)
        for position, row in enumerate(table.rows):
            cells = [row.cells[column] for column in table.columns]
            offsets = groups - 0.4 + width * (position + 0.5)
            means = [cell.mean for cell in cells]
            errors = _spread(cells)
            ax.bar(offsets, means, width, color=_row_colour(row, alpha_colours), label=row.label)
            if errors is not None:
                ax.errorbar(offsets, means, yerr=errors, fmt="none", ecolor="black", capsize=2, linewidth=0.8)
        ax.set_xticks(list(groups), table.columns)
        ax.set_xlabel("benchmark")
        ax.set_ylabel("score (higher is better)")
        ax.set_title(table.setting.title if table.setting else "untuned variants")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    figure.suptitle(f"{pair}: score of every variant per benchmark" + _seed_note(tables))
    return save_png(figure, out_png)


def plot_alpha(tables: Sequence[ScoreTable], out_png: Path) -> Path:
    """Score against the graft strength alpha: a line per sweep setting, with Instruct and each baseline as levels."""
    pair = tables[0].pair
    columns = tables[0].columns
    settings = [table for table in tables if any(row.kind == "shadow" for row in table.rows)]
    if not settings:
        raise ValueError(f"pair {pair!r} has no grafts: no alpha curve to draw")
    figure = _figure(
        4.2 * min(len(columns), _PANEL_COLUMNS) + 2.5, 3.4 * math.ceil(len(columns) / _PANEL_COLUMNS) + 0.6
    )
    for ax, column in zip(_panels(figure, len(columns)), columns, strict=True):
        _levels(ax, tables[0], column, kinds=("base", REFERENCE))
        for index, table in enumerate(settings):
            colour = f"C{index % 10}"
            shadows = sorted((row for row in table.rows if row.kind == "shadow"), key=lambda row: row.alpha)
            cells = [row.cells[column] for row in shadows]
            ax.errorbar(
                [row.alpha for row in shadows],
                [cell.mean for cell in cells],
                yerr=_spread(cells),
                color=colour,
                marker="o",
                capsize=3,
                label=f"Shadow-{table.setting.tuning_label} ({_setting_detail(table)})",
            )
            baseline = table.row(BASELINE)
            if baseline is not None:
                ax.axhline(
                    baseline.cells[column].mean,
                    color=colour,
                    linestyle="--",
                    linewidth=1,
                    label=f"{baseline.label} ({_setting_detail(table)})",
                )
        ax.set_xlabel("graft strength α (W_I + α·Δ)")
        ax.set_ylabel("score")
        ax.set_title(column)
        ax.grid(alpha=0.3)
    _figure_legend(figure)
    figure.suptitle(f"{pair}: score against graft strength α" + _seed_note(tables))
    return save_png(figure, out_png)


def plot_learning_rate(tables: Sequence[ScoreTable], out_png: Path) -> Path:
    """Score against the learning rate (log scale): per tuning, Instruct tuned directly and each graft."""
    pair = tables[0].pair
    if not learning_rate_swept(tables):
        raise ValueError(f"pair {pair!r} ran one learning rate per setting: no learning-rate curve to draw")
    columns = tables[0].columns
    lines: dict[tuple, list[tuple[float, object]]] = {}
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
    figure = _figure(
        4.2 * min(len(columns), _PANEL_COLUMNS) + 2.5, 3.4 * math.ceil(len(columns) / _PANEL_COLUMNS) + 0.6
    )
    tunings = list(dict.fromkeys((key[0], key[1], key[2]) for key in lines))
    alpha_colours = _alpha_colours(tables)
    markers = "osD^v<>"
    for ax, column in zip(_panels(figure, len(columns)), columns, strict=True):
        _levels(ax, tables[0], column, kinds=("base", REFERENCE))
        for key, points in lines.items():
            _, _, rank, kind, alpha, label = key
            points.sort(key=lambda point: point[0])
            cells = [row.cells[column] for _, row in points]
            ax.errorbar(
                [rate for rate, _ in points],
                [cell.mean for cell in cells],
                yerr=_spread(cells),
                color=_KIND_COLOURS.get(kind) or alpha_colours[alpha],
                marker=markers[tunings.index(key[:3]) % len(markers)],
                linestyle="--" if kind == BASELINE else "-",
                capsize=3,
                label=label + rank,
            )
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("score")
        ax.set_title(column)
        ax.grid(alpha=0.3)
    _figure_legend(figure)
    figure.suptitle(f"{pair}: score against learning rate" + _seed_note(tables))
    return save_png(figure, out_png)


def plot_similarity(similarity_csv: Path, out_png: Path, pair: str) -> Path:
    """The paper's weight-similarity figure: sigma per layer for each tensor type, and per tensor type overall."""
    table = read_similarity(similarity_csv)
    tensors = table[table["level"] == "tensor"]
    if tensors.empty:
        raise ValueError(f"{similarity_csv} has no tensor rows")
    overall = table.loc[table["level"] == "overall", "sigma"]
    in_layers = tensors[tensors["layer"].notna()].assign(type=lambda frame: frame["name"].map(tensor_type))
    others = tensors[tensors["layer"].isna()]
    figure = _figure(12.0, 5.8)
    by_layer, by_type = figure.subplots(1, 2, width_ratios=[3, 2])
    colours = colormaps["tab20"]
    types = list(dict.fromkeys(in_layers["type"]))
    for index, kind in enumerate(types):
        rows = in_layers[in_layers["type"] == kind].sort_values("layer")
        by_layer.plot(rows["layer"].astype(int), 100 * rows["sigma"], marker="o", color=colours(index % 20), label=kind)
    if len(overall) == 1:
        level = dict(color="black", linestyle="--", linewidth=1, label="overall σ (mean over layer tensors)")
        by_layer.axhline(100 * float(overall.iloc[0]), **level)
        by_type.axvline(100 * float(overall.iloc[0]), **level)
    if not in_layers.empty:
        by_layer.set_xticks(sorted(in_layers["layer"].astype(int).unique()))
    by_layer.set_xlabel("layer")
    by_layer.set_ylabel("σ (%)")
    by_layer.set_title("per layer, one line per tensor type")
    by_layer.grid(alpha=0.3)
    by_layer.legend(fontsize="x-small", ncols=3, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    names = [*types, *others["name"].map(lambda name: name.removesuffix(".weight"))]
    values = [100 * in_layers.loc[in_layers["type"] == kind, "sigma"].mean() for kind in types]
    values += list(100 * others["sigma"])
    bar_colours = [colours(index % 20) for index in range(len(types))] + ["0.55"] * len(others)
    by_type.barh(range(len(names)), values, color=bar_colours)
    by_type.set_yticks(range(len(names)), names, fontsize="small")
    by_type.invert_yaxis()
    by_type.set_xlabel("σ (%)")
    by_type.set_title("per tensor type, mean over layers\n(grey: tensors outside the layers)")
    by_type.grid(axis="x", alpha=0.3)
    summary = f", overall σ = {100 * float(overall.iloc[0]):.2f}%" if len(overall) == 1 else ""
    figure.suptitle(
        f"{pair}: weight difference between BASE and INSTRUCT\nσ = Σ|W_B − W_I| / (Σ|W_B| + Σ|W_I|) per tensor{summary}"
    )
    return save_png(figure, out_png)


#: The trainer's record of a run (Hugging Face Trainer): its log_history holds the loss per logging step.
TRAINER_STATE = "trainer_state.json"
_ROLE_COLOURS = {"base": "C1", "instruct": "C0"}
_ROLE_LABELS = {"base": "BASE (its update is grafted)", "instruct": "INSTRUCT (the baseline)"}


def training_losses(state_json: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) of one training run, from the Trainer's state file beside its model."""
    history = json.loads(Path(state_json).read_text(encoding="utf-8")).get("log_history", [])
    points = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]
    if not points:
        raise ValueError(f"{state_json}: no training loss logged (log_history has no 'loss' entries)")
    steps, losses = zip(*points, strict=True)
    return list(steps), list(losses)


def plot_training_loss(runs: Mapping[str, Mapping[str, Path]], out_png: Path, pair: str) -> Path:
    """Every run's training loss against the step, BASE and INSTRUCT side by side: one panel per
    setting (stage, tuning, learning rate, rank), one line per role and seed. `runs` maps a run's
    name (shadowft.workflow.sweep) to {role: its trainer_state.json}."""
    settings: dict[tuple, list[tuple[Run, Mapping[str, Path]]]] = {}
    for name, states in runs.items():
        run = Run.parse(name)
        settings.setdefault((run.stage, run.tuning, run.learning_rate, run.lora_rank), []).append((run, states))
    if not settings:
        raise ValueError(f"{pair}: no training runs to draw")
    figure = _figure(4.6 * min(len(settings), _PANEL_COLUMNS), 3.8 * math.ceil(len(settings) / _PANEL_COLUMNS))
    for ax, ((stage, tuning, learning_rate, rank), members) in zip(
        _panels(figure, len(settings)), settings.items(), strict=False
    ):
        for index, (_, states) in enumerate(sorted(members, key=lambda member: member[0].seed)):
            for role, state in sorted(states.items()):
                steps, losses = training_losses(state)
                label = _ROLE_LABELS[role] if index == 0 else None
                ax.plot(steps, losses, color=_ROLE_COLOURS[role], alpha=1.0 if index == 0 else 0.45, label=label)
        seeds = ", ".join(str(run.seed) for run, _ in members)
        rank_text = f", rank {rank}" if rank is not None else ""
        ax.set_title(f"{stage.upper()} {tuning}, lr {learning_rate:g}{rank_text}\nseed {seeds}", fontsize="medium")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{stage.upper()} training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", frameon=False)
    figure.suptitle(f"{pair}: training loss of each run, on BASE and on INSTRUCT")
    return save_png(figure, out_png)


# What a rule's named outputs draw: scripts/figures.py calls draw_figures with them.
FIGURES: dict[str, Callable[[Sequence[ScoreTable], Path], Path]] = {
    "scores": plot_scores,
    "alpha": plot_alpha,
    "learning_rate": plot_learning_rate,
}


def draw_figures(
    summary_csv: Path,
    pair: str,
    outputs: Mapping[str, Path],
    *,
    scoring: Scoring | None = None,
    similarity_csv: Path | None = None,
) -> list[Path]:
    """Draw the named figures (keys of FIGURES, or "similarity") of one pair from summary.csv."""
    unknown = sorted(set(outputs) - {*FIGURES, "similarity"})
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join([*FIGURES, 'similarity'])}")
    tables = pair_tables(read_summary(Path(summary_csv)), pair, scoring)
    drawn = []
    for name, out in outputs.items():
        if name == "similarity":
            if similarity_csv is None:
                raise ValueError("the similarity figure needs the pair's similarity CSV")
            drawn.append(plot_similarity(Path(similarity_csv), Path(out), pair))
        else:
            drawn.append(FIGURES[name](tables, Path(out)))
    return drawn


def _levels(ax, table: ScoreTable, column: str, kinds: Sequence[str]) -> None:
    """Horizontal lines for the untuned variants (Instruct is the graft at alpha 0)."""
    for kind in kinds:
        row = table.row(kind)
        if row is not None:
            label = "Instruct (= graft at α=0)" if kind == REFERENCE else row.label
            ax.axhline(row.cells[column].mean, color=_UNTUNED_COLOURS[kind], linestyle=":", linewidth=1.5, label=label)


def _setting_detail(table: ScoreTable) -> str:
    setting = table.setting
    parts = [f"lr {setting.learning_rate:g}"] if setting.learning_rate is not None else []
    parts += [f"rank {setting.lora_rank}"] if setting.lora_rank is not None else []
    parts += [setting.stage.upper()] if setting.stage not in (None, "sft") else []
    return ", ".join(parts)


def _figure_legend(figure: Figure) -> None:
    """One legend for all panels (they share their lines), below the panels."""
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(
        handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize="small", frameon=False
    )


def _seed_note(tables: Sequence[ScoreTable]) -> str:
    seeds = sorted({seed for table in tables for seed in table.seeds})
    if len(seeds) > 1:
        return f"\n(mean ± standard deviation over seeds {', '.join(map(str, seeds))})"
    return f" (seed {seeds[0]})" if seeds else ""
