"""The report's one palette: a colour per kind of variant, the same in every figure (Okabe and Ito's
colours, told apart with any colour vision), and the graft's shades by alpha.

The graft is vermilion at alpha 1, the paper's, and paler the smaller its alpha (darker above 1),
so the paper's graft is always the strongest. The training figure colours each model by what its
training becomes: BASE's run is the update the graft carries (base_ft), INSTRUCT's the baseline.
"""

from __future__ import annotations

from collections.abc import Iterable

from matplotlib.colors import to_rgb

KIND_COLOURS = {
    "base": "#999999",  # grey
    "instruct": "#000000",  # black
    "instruct_ft": "#0072B2",  # blue
    "base_ft": "#009E73",  # bluish green: apart from the graft's vermilion shades
    "shadow": "#D55E00",  # vermilion: the graft at alpha 1
}
# How the tuned models of the training figure are coloured: by the variant each one becomes.
ROLE_COLOURS = {"base": KIND_COLOURS["base_ft"], "instruct": KIND_COLOURS["instruct_ft"]}
# The palest a graft is drawn (at the smallest alpha), as a share of the way to white.
_PALEST = 0.7


def shadow_colour(alpha: float, alphas: Iterable[float]) -> tuple[float, float, float]:
    """The graft's colour at `alpha` among `alphas`: vermilion at 1, mixed with white the further
    below 1 (the smallest alpha the palest), with black above 1."""
    alphas = sorted(set(alphas) | {alpha})
    base = to_rgb(KIND_COLOURS["shadow"])
    below = [a for a in alphas if a < 1.0]
    above = [a for a in alphas if a > 1.0]
    if alpha < 1.0:
        share = _PALEST * (1.0 - alpha) / (1.0 - min(below))
        return tuple(c + (1.0 - c) * share for c in base)
    if alpha > 1.0:
        share = 0.5 * (alpha - 1.0) / (max(above) - 1.0)
        return tuple(c * (1.0 - share) for c in base)
    return base


def variant_colour(kind: str, alpha: float | None = None, alphas: Iterable[float] = ()) -> object:
    """A variant's colour in every figure."""
    if kind == "shadow":
        return shadow_colour(alpha if alpha is not None else 1.0, alphas)
    return KIND_COLOURS[kind]
