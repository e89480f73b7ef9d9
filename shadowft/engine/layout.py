"""What files and tensor names mean: the facts every part of the engine shares.

One place for them: which file suffixes hold weights (and which of those are
pickles), the names of the manifests shadowft writes, PEFT's key prefix, how an
embedding or output head is recognised, and the shared-rows rule for tensors
whose vocabularies differ. Standard library only, so ``shadowft.data.hub`` and
``shadowft.training.resources`` use the same facts without numpy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Pickle weight files: loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Every suffix a weight file may have (not copied beside a graft as a "model file").
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES, ".h5", ".msgpack", ".gguf", ".onnx")

#: Manifest of a model folder shadowft made: a download (``shadowft.data.hub``) or a graft.
MODEL_MANIFEST = "shadowft_manifest.json"
#: Manifest of a delta directory (``shadowft.engine``).
DELTA_MANIFEST = "manifest.json"
#: Manifest of a prepared training dataset folder (``shadowft.data.datasets``).
DATASET_MANIFEST = "shadowft_dataset.json"

#: PEFT prefixes adapter keys with the wrapper's path to the wrapped model.
PEFT_PREFIX = "base_model.model."

#: Multimodal wrappers whose module tree (what PEFT names) differs from their checkpoint's
#: tensor names: transformers >= 4.52 renames on load (the classes'
#: ``_checkpoint_conversion_mapping``), e.g. Gemma-3's runtime ``model.language_model.layers.0``
#: is ``language_model.model.layers.0`` on disk. (runtime prefix, checkpoint prefix) pairs.
RUNTIME_CHECKPOINT_PREFIXES = (
    ("model.language_model.", "language_model.model."),  # Gemma-3, LLaVA, PaliGemma, Mistral-3
    ("model.language_model.", "model."),  # Qwen2-VL, Qwen2.5-VL
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)

#: What to do with embeddings / lm_head whose vocabulary sizes differ.
VOCAB_POLICIES = ("error", "shared", "keep")

_EMBEDDING = re.compile(r"(?:^|\.)(?:embed_tokens|wte|word_embeddings|tok_embeddings|embed_in)\.weight$")
_HEAD = re.compile(r"(?:^|\.)(?:lm_head|embed_out)\.weight$|^output\.weight$")


class CheckpointError(ValueError):
    """An input or output checkpoint is unusable; the message names the file or tensor."""


class DeltaError(CheckpointError):
    """A delta cannot be built, saved or grafted as asked; the message names the tensor or key."""


def is_pickle_name(name: str) -> bool:
    """Whether a file name is a pickle weight file (by suffix)."""
    return name.endswith(PICKLE_SUFFIXES)


def is_output_head(name: str) -> bool:
    return bool(_HEAD.search(name))


def is_vocab_indexed(name: str) -> bool:
    """Whether a tensor's first dimension is the vocabulary (input embeddings or output head)."""
    return bool(_EMBEDDING.search(name) or _HEAD.search(name))


def embedding_and_head(names: Iterable[str]) -> tuple[str | None, str | None]:
    """The input-embedding and output-head tensor names among `names` (None when absent)."""
    names = list(names)
    embeddings = [n for n in names if _EMBEDDING.search(n)]
    heads = [n for n in names if _HEAD.search(n)]
    return (embeddings[0] if len(embeddings) == 1 else None, heads[0] if len(heads) == 1 else None)


def check_vocab_policy(policy: str) -> None:
    if policy not in VOCAB_POLICIES:
        raise DeltaError(f"unknown vocab_mismatch policy {policy!r}: choose one of {', '.join(VOCAB_POLICIES)}")


def shared_rows(
    name: str, shape: tuple[int, ...], other: tuple[int, ...], labels: tuple[str, str], policy: str
) -> int | None:
    """Leading rows two same-named tensors have in common, or None when the policy leaves it out.

    Only a vocabulary-indexed tensor (embeddings, lm_head) may differ, and only
    in its first dimension; anything else is an error naming the tensor.
    """
    if shape == other:
        return shape[0] if shape else 1
    if is_vocab_indexed(name) and len(shape) == len(other) >= 1 and shape[1:] == other[1:]:
        if policy == "shared":
            return min(shape[0], other[0])
        if policy == "keep":
            return None
        raise DeltaError(
            f"vocabulary size differs for {name!r}: {labels[0]} has shape {list(shape)}, "
            f"{labels[1]} has {list(other)}; choose vocab_mismatch='shared' (update the shared rows) "
            f"or 'keep' (leave the tensor out of the update)"
        )
    raise DeltaError(f"shape mismatch for {name!r}: {labels[0]} has shape {list(shape)}, {labels[1]} has {list(other)}")
