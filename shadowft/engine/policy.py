"""Selection policies: which tensors an extract or graft touches, and what each graft did to a tensor."""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from typing import Any

from shadowft.engine.layout import DeltaError

#: Which tensors a graft touches. "official" matches the official Shadow-FT
#: apply_diff.py: the attention and MLP projections only; embeddings, lm_head
#: and norms keep the instruct model's values.
PRESETS: dict[str, str | None] = {
    "all": None,
    "official": r"\.(?:q|k|v|o|gate|up|down)_proj\.(?:weight|bias)$",
}


class Action(enum.Enum):
    """What a graft does to one tensor of the instruct model (the words its manifest records)."""

    GRAFTED = "grafted"
    PARTIALLY_GRAFTED = "partially grafted"
    KEPT = "kept"


@dataclass(frozen=True)
class Selection:
    """Which tensors take part: a preset, then include / exclude regexes (re.search on the name)."""

    preset: str = "all"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise DeltaError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        patterns = [PRESETS[self.preset] or "", *self.include, *self.exclude]
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise DeltaError(f"invalid regular expression {pattern!r}: {exc}") from None

    @functools.cached_property
    def _compiled(self) -> tuple[re.Pattern | None, list[re.Pattern], list[re.Pattern]]:
        preset = PRESETS[self.preset]
        return (
            re.compile(preset) if preset else None,
            [re.compile(p) for p in self.include],
            [re.compile(p) for p in self.exclude],
        )

    def selects(self, name: str) -> bool:
        preset, include, exclude = self._compiled
        return (
            (preset is None or bool(preset.search(name)))
            and (not include or any(p.search(name) for p in include))
            and not any(p.search(name) for p in exclude)
        )

    def describe(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "preset_pattern": PRESETS[self.preset],
            "include": list(self.include),
            "exclude": list(self.exclude),
        }

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> Selection:
        return cls(description["preset"], tuple(description["include"]), tuple(description["exclude"]))
