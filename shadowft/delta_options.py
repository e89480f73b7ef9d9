"""The options extraction and grafting share, defined once: which tensors take part and how the output streams.

`shadowft.extraction.ExtractOptions` and `shadowft.grafting.GraftOptions` add their own fields
to `DeltaOptions`; the command line sets them from the flags both subcommands have
(``shadowft extract-delta --help``, ``shadowft graft --help``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shadowft.layout import check_vocab_policy
from shadowft.numerics import CHUNK_ELEMENTS
from shadowft.policy import Selection
from shadowft.streaming import WriteOptions


# Keyword-only: a subclass's own fields come after these, so a positional call would bind
# them to the wrong names.
@dataclass(frozen=True, kw_only=True)
class DeltaOptions:
    """The selection (preset, include, exclude), the vocabulary-mismatch policy, whether pickle
    weights may be read, and the streaming (shard size, threads, progress bar, block size)."""

    preset: str = "all"
    include: Iterable[str] = ()
    exclude: Iterable[str] = ()
    vocab_mismatch: str = "error"
    max_shard_size: int | str = "5GB"
    allow_pickle: bool = False
    threads: int | None = None
    progress: bool = True
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
