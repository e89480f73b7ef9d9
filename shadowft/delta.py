"""The delta engine's public face: extract an update, graft it (Shadow-FT).

    W_shadow = W_instruct + alpha * Delta

The work is done in modules with one job each (docs/architecture.md has the
map): `shadowft.extraction` (the `Delta` and `extract_delta`),
`shadowft.grafting` (`graft`), `shadowft.delta_options` (the options both share),
`shadowft.policy` (selection), `shadowft.adapters` (PEFT LoRA), `shadowft.parts`
(dense and low-rank updates). This module re-exports their public names, so
``from shadowft.delta import graft`` is the one import scripts and users need.
"""

from shadowft.delta_options import DeltaOptions
from shadowft.extraction import (
    DELTA_FORMAT,
    FORMAT_VERSION,
    GRAFT_MANIFEST,
    Delta,
    DeltaRecord,
    ExtractOptions,
    extract_delta,
)
from shadowft.grafting import GraftOptions, graft
from shadowft.layout import DELTA_MANIFEST, VOCAB_POLICIES, CheckpointError, DeltaError
from shadowft.parts import DeltaEntry, FullPart, LoraPart
from shadowft.policy import PRESETS, Action, Selection

__all__ = [
    "DELTA_FORMAT",
    "DELTA_MANIFEST",
    "FORMAT_VERSION",
    "GRAFT_MANIFEST",
    "PRESETS",
    "VOCAB_POLICIES",
    "Action",
    "CheckpointError",
    "Delta",
    "DeltaEntry",
    "DeltaError",
    "DeltaOptions",
    "DeltaRecord",
    "ExtractOptions",
    "FullPart",
    "GraftOptions",
    "LoraPart",
    "Selection",
    "extract_delta",
    "graft",
]
