"""How a pair's updates overlap, as the report says it: one sentence per run and a figure per pair,
from the CSVs that ``shadowft overlap`` writes (shadowft.engine.overlap, rule overlap):
``results/{pair}/{run}/overlap.csv``.

Δ_I = INSTRUCT - BASE (what instruction tuning changed), Δ_B = tuned BASE - BASE (what the graft
adds), Δ_F = tuned INSTRUCT - INSTRUCT (the same tuning on INSTRUCT, the paper's baseline).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from shadowft.engine.overlap import COLUMNS, MEASURES
from shadowft.report.figures import save_png


@dataclass(frozen=True)
class RunOverlap:
    """One run's overlap.csv: where it lies, its pair and run, and its rows (tensors, layers, overall)."""

    path: Path
    pair: str
    run: str
    table: pd.DataFrame

    @classmethod
    def read(cls, path: Path) -> RunOverlap:
        """An overlap CSV at results/{pair}/{run}/overlap.csv, checked for the columns the report reads."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"overlap table {path} does not exist")
        table = pd.read_csv(path, keep_default_na=False, na_values={column: [""] for column in COLUMNS[2:]})
        missing = [column for column in ("level", "layer", *MEASURES) if column not in table.columns]
        if missing:
            raise ValueError(f"{path} lacks column(s) {', '.join(missing)}")
        if (table["level"] == "overall").sum() != 1:
            raise ValueError(f"{path}: expected one row with level 'overall'")
        return cls(path, path.parent.parent.name, path.parent.name, table)

    @property
    def overall(self) -> dict[str, float]:
        row = self.table[self.table["level"] == "overall"].iloc[0]
        return {measure: float(row[measure]) for measure in MEASURES}

    @property
    def layers(self) -> pd.DataFrame:
        return self.table[self.table["level"] == "layer"].sort_values("layer")

    def sentence(self) -> str:
        """The report's line for this run."""
        overall = self.overall
        said = f"Updates' overlap, {self.run}: cos(Δ_I, Δ_B) = {_number(overall['cos_ib'])} over the layers"
        said += f", ‖Δ_B‖/‖Δ_I‖ = {_number(overall['ratio_bi'])}"
        if not math.isnan(overall["cos_bf"]):
            said += f"; the same tuning on INSTRUCT, cos(Δ_B, Δ_F) = {_number(overall['cos_bf'])}"
        return (
            said + f"; ‖Δ_I‖/‖W_B‖ = {_number(overall['rel_i'])} (Δ_I = INSTRUCT − BASE, Δ_B = tuned BASE − BASE, "
            "Δ_F = tuned INSTRUCT − INSTRUCT; the overlap figure draws it per layer)."
        )


def _number(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def plot_overlap(overlaps: Sequence[RunOverlap], out_png: Path, pair: str) -> Path:
    """Per layer, for every run: cos(Δ_I, Δ_B) and cos(Δ_B, Δ_F) (left), ‖Δ_B‖/‖Δ_I‖ and ‖Δ_I‖/‖W_B‖ (right)."""
    if not overlaps:
        raise ValueError(f"{pair}: no overlap tables to draw")
    figure = Figure(figsize=(12.0, 5.2), layout="constrained")
    FigureCanvasAgg(figure)
    cosines, norms = figure.subplots(1, 2)
    for index, overlap in enumerate(overlaps):
        layers = overlap.layers
        colour = f"C{index % 10}"
        x = layers["layer"].astype(int)
        overall = overlap.overall
        cosines.plot(
            x,
            layers["cos_ib"],
            color=colour,
            marker="o",
            label=f"{overlap.run}: Δ_I, Δ_B ({_number(overall['cos_ib'])})",
        )
        if layers["cos_bf"].notna().any():
            cosines.plot(
                x,
                layers["cos_bf"],
                color=colour,
                marker="s",
                linestyle="--",
                label=f"{overlap.run}: Δ_B, Δ_F ({_number(overall['cos_bf'])})",
            )
        norms.plot(
            x,
            layers["ratio_bi"],
            color=colour,
            marker="o",
            label=f"{overlap.run}: ‖Δ_B‖/‖Δ_I‖ ({_number(overall['ratio_bi'])})",
        )
    first = overlaps[0]
    norms.plot(
        first.layers["layer"].astype(int),
        first.layers["rel_i"],
        color="black",
        marker="^",
        linestyle=":",
        label=f"‖Δ_I‖/‖W_B‖, no training ({_number(first.overall['rel_i'])})",
    )
    cosines.axhline(0.0, color="0.5", linewidth=0.8)
    for ax, title, ylabel in (
        (cosines, "cosine between updates, per layer (overall in parentheses)", "cosine"),
        (norms, "norm ratios, per layer (overall in parentheses)", "ratio"),
    ):
        ax.set_xticks(sorted(first.layers["layer"].astype(int).unique()))
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    figure.suptitle(
        f"{pair}: how the updates overlap\nΔ_I = INSTRUCT − BASE, Δ_B = tuned BASE − BASE (grafted), "
        "Δ_F = tuned INSTRUCT − INSTRUCT"
    )
    return save_png(figure, out_png)
