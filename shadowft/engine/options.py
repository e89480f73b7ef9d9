"""The options extraction and grafting share, defined once: which tensors take part and how the output streams.

`shadowft.engine.extraction.ExtractOptions` and `shadowft.engine.grafting.GraftOptions` add their own
fields to `DeltaOptions`. A field with a ``help`` in its metadata is also a flag of the `shadowft`
command (shadowft/cli.py makes one per field: ``shadowft extract-delta --help``, ``shadowft graft
--help``), so the record, the keywords and the flags are one list.

The preset defaults to ``all``: the engine is a general task-arithmetic tool and applies the whole
update it is given, every tensor the delta holds, as a merge tool does. Shadow-FT's recipe, the
attention and MLP projections only (``official``, the official code's), is what the workflow's
config defaults to (``graft.preset``) and what README's command-line examples pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shadowft.engine.layout import VOCAB_POLICIES, check_vocab_policy
from shadowft.engine.numerics import CHUNK_ELEMENTS
from shadowft.engine.policy import PRESETS, Selection
from shadowft.engine.streaming import WriteOptions


# Keyword-only: a subclass's own fields come after these, so a positional call would bind
# them to the wrong names.
@dataclass(frozen=True, kw_only=True)
class DeltaOptions:
    """The selection (preset, include, exclude), the vocabulary-mismatch policy, whether pickle
    weights may be read, and the streaming (shard size, threads, progress bar, block size)."""

    preset: str = field(
        default="all",
        metadata={
            "help": "'official': only the q/k/v/o/gate/up/down projections, like the official apply_diff.py; "
            "'all': every tensor",
            "choices": tuple(sorted(PRESETS)),
        },
    )
    include: Iterable[str] = field(
        default=(), metadata={"help": "only tensors whose name matches (re.search); repeatable", "metavar": "REGEX"}
    )
    exclude: Iterable[str] = field(
        default=(), metadata={"help": "skip tensors whose name matches (re.search); repeatable", "metavar": "REGEX"}
    )
    vocab_mismatch: str = field(
        default="error",
        metadata={
            "help": "embeddings/lm_head of different vocabulary sizes: 'error', graft the 'shared' rows, "
            "or 'keep' the instruct tensor",
            "choices": VOCAB_POLICIES,
        },
    )
    max_shard_size: int | str = field(
        default="5GB", metadata={"help": "largest output shard, e.g. 5GB, 500MB", "metavar": "SIZE"}
    )
    allow_pickle: bool = field(
        default=False, metadata={"help": "also read pickle weights (.bin/.pt); they can run code when loaded"}
    )
    threads: int | None = field(
        default=None, metadata={"help": "worker threads (default: usable CPUs, at most 8)", "type": int, "metavar": "N"}
    )
    progress: bool = field(default=True, metadata={"help": "draw a progress bar on stderr"})
    chunk_elements: int = CHUNK_ELEMENTS
    # derived from the fields above in __post_init__
    write: WriteOptions = field(init=False, repr=False, compare=False)
    selection: Selection = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_vocab_policy(self.vocab_mismatch)
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(
            self, "write", WriteOptions(self.max_shard_size, self.threads, self.progress, self.chunk_elements)
        )
        object.__setattr__(self, "selection", Selection(self.preset, self.include, self.exclude))
