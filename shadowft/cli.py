"""The `shadowft` command: the delta engine without Snakemake.

shadowft extract-delta --base BASE (--tuned TUNED | --adapter ADAPTER) --out DELTA
shadowft graft --instruct INSTRUCT (--delta DELTA | --base BASE (--tuned T | --adapter A)) --out OUT
shadowft similarity MODEL_A MODEL_B --out sigma.csv
shadowft delta-to-lora --delta DELTA (--rank R | --energy E) --out ADAPTER
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shadowft.io import raise_on_sigterm
from shadowft.layout import VOCAB_POLICIES, CheckpointError
from shadowft.policy import PRESETS


def _add_io_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-shard-size",
        default="5GB",
        metavar="SIZE",
        help="largest output shard, e.g. 5GB, 500MB (default: %(default)s)",
    )
    _add_runtime_options(parser)


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-pickle", action="store_true", help="also read pickle weights (.bin/.pt); they can run code when loaded"
    )
    parser.add_argument("--threads", type=int, metavar="N", help="worker threads (default: usable CPUs, at most 8)")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="do not draw a progress bar on stderr"
    )


def _add_policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="all",
        help="'official': only q/k/v/o/gate/up/down projections, like the official "
        "apply_diff.py; 'all': every tensor (default: %(default)s)",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="REGEX",
        help="only tensors whose name matches (re.search); repeatable",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="REGEX",
        help="skip tensors whose name matches (re.search); repeatable",
    )
    parser.add_argument(
        "--vocab-mismatch",
        choices=VOCAB_POLICIES,
        default="error",
        help="embeddings/lm_head of different vocabulary sizes: 'error', graft the "
        "'shared' rows, or 'keep' the instruct tensor (default: %(default)s)",
    )


def _add_extract(commands: argparse._SubParsersAction) -> None:
    """The extract-delta subcommand."""
    extract = commands.add_parser(
        "extract-delta",
        help="save the update of a fine-tuned model or LoRA adapter relative to its base",
        description="Write the update W_tuned - W_base (full fine-tuning) or (lora_alpha/r) * B @ A "
        "(a PEFT LoRA adapter) as a delta directory: safetensors plus manifest.json.",
    )
    extract.add_argument("--base", required=True, type=Path, help="the model that was fine-tuned")
    source = extract.add_mutually_exclusive_group(required=True)
    source.add_argument("--tuned", type=Path, help="the fully fine-tuned base model")
    source.add_argument("--adapter", type=Path, help="a PEFT LoRA adapter trained on the base")
    extract.add_argument("--out", required=True, type=Path, help="delta directory to write")
    _add_policy_options(extract)
    extract.add_argument(
        "--dtype", default="float32", help="storage dtype of dense updates; float32 is exact (default: %(default)s)"
    )
    _add_io_options(extract)
    extract.set_defaults(run=_run_extract)


def _add_graft(commands: argparse._SubParsersAction) -> None:
    """The graft subcommand."""
    graft = commands.add_parser(
        "graft",
        help="write W_instruct + alpha * delta as a Hugging Face model",
        description="Graft a delta onto the instruct model. The delta is a directory from "
        "extract-delta, or is computed on the fly from --base with --tuned or --adapter.",
    )
    graft.add_argument("--instruct", required=True, type=Path, help="the model that receives the update")
    graft.add_argument("--delta", type=Path, help="a delta directory written by extract-delta")
    graft.add_argument("--base", type=Path, help="base model (with --tuned or --adapter)")
    graft_source = graft.add_mutually_exclusive_group()
    graft_source.add_argument("--tuned", type=Path, help="fully fine-tuned base model")
    graft_source.add_argument("--adapter", type=Path, help="PEFT LoRA adapter trained on the base")
    graft.add_argument("--out", required=True, type=Path, help="model directory to write")
    graft.add_argument("--alpha", type=float, default=1.0, help="scale of the update (default: %(default)s)")
    _add_policy_options(graft)
    graft.add_argument("--dtype", help="output dtype of floating-point tensors (default: the instruct model's)")
    _add_io_options(graft)
    graft.set_defaults(run=functools.partial(_run_graft, graft))


def _add_similarity(commands: argparse._SubParsersAction) -> None:
    """The similarity subcommand."""
    similarity = commands.add_parser(
        "similarity",
        help="the paper's sigma between two models, per tensor, per layer and overall",
        description="sigma = sum|W_a - W_b| / (sum|W_a| + sum|W_b|) per tensor, written as CSV.",
    )
    similarity.add_argument("first", type=Path, metavar="MODEL_A")
    similarity.add_argument("second", type=Path, metavar="MODEL_B")
    similarity.add_argument("--out", required=True, type=Path, help="CSV file to write")
    _add_runtime_options(similarity)
    similarity.set_defaults(run=_run_similarity)


def _add_lowrank(commands: argparse._SubParsersAction) -> None:
    """The delta-to-lora subcommand."""
    lowrank = commands.add_parser(
        "delta-to-lora",
        help="approximate a full delta by a PEFT LoRA adapter (truncated SVD)",
        description="Factor each linear layer's update D ~= B @ A by truncated SVD and write a PEFT "
        "adapter; norms, biases and embeddings are left out. Reports the relative error "
        "||D - B A|| / ||D|| per module and overall (also in shadowft_lowrank.json).",
    )
    lowrank.add_argument("--delta", required=True, type=Path, help="a full delta written by extract-delta")
    lowrank.add_argument("--out", required=True, type=Path, help="adapter directory to write")
    keep = lowrank.add_mutually_exclusive_group(required=True)
    keep.add_argument("--rank", type=int, help="rank of every module")
    keep.add_argument(
        "--energy", type=float, help="per module, the smallest rank keeping this fraction of sum(sigma^2), e.g. 0.9"
    )
    lowrank.add_argument(
        "--no-progress", dest="progress", action="store_false", help="do not draw a progress bar on stderr"
    )
    lowrank.set_defaults(run=_run_lowrank)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shadowft",
        description="Shadow-FT: graft the update learned by fine-tuning a BASE model onto its INSTRUCT "
        "model, W_shadow = W_instruct + alpha * (W_base_tuned - W_base).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_extract(commands)
    _add_graft(commands)
    _add_similarity(commands)
    _add_lowrank(commands)
    return parser


def _shared_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of the options record that extract-delta and graft set from the same flags
    (`_add_policy_options`, --dtype, `_add_io_options`)."""
    return dict(
        preset=args.preset,
        include=args.include,
        exclude=args.exclude,
        vocab_mismatch=args.vocab_mismatch,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        allow_pickle=args.allow_pickle,
        threads=args.threads,
        progress=args.progress,
    )


def _run_extract(args: argparse.Namespace) -> str:
    from shadowft.delta import ExtractOptions, extract_delta

    options = ExtractOptions(**_shared_options(args))
    manifest = extract_delta(args.base, args.out, options, tuned=args.tuned, adapter=args.adapter)
    counts = manifest["counts"]
    return f"wrote {manifest['kind']} delta of {counts['tensors']} tensors to {args.out}"


def _run_graft(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """`parser` is the graft subcommand's, so usage errors show its usage line."""
    from shadowft.delta import Delta, GraftOptions, graft

    on_the_fly = args.tuned is not None or args.adapter is not None
    if (args.delta is not None) == on_the_fly:
        parser.error("give either --delta, or --base with --tuned or --adapter")
    if on_the_fly != (args.base is not None):
        parser.error("--base goes with --tuned or --adapter (and only with them)")
    options = GraftOptions(alpha=args.alpha, **_shared_options(args))
    if on_the_fly:
        opener = Delta.from_models if args.tuned is not None else Delta.from_adapter
        source = opener(
            args.base,
            args.tuned or args.adapter,
            vocab_mismatch=options.vocab_mismatch,
            selection=options.selection,
            allow_pickle=options.allow_pickle,
        )
    else:
        source = contextlib.nullcontext(args.delta)
    with source as delta:
        manifest = graft(args.instruct, delta, args.out, options)
    counts = manifest["counts"]
    return (
        f"wrote {args.out}: {counts['grafted']} tensors grafted, {counts['partially_grafted']} partially, "
        f"{counts['kept']} kept (alpha={args.alpha})"
    )


def _run_similarity(args: argparse.Namespace) -> str:
    from shadowft.similarity import similarity

    summary = similarity(
        args.first, args.second, args.out, allow_pickle=args.allow_pickle, threads=args.threads, progress=args.progress
    )
    return f"sigma = {summary['overall_sigma']:.6f} over {summary['tensors']} tensors; wrote {args.out}"


def _run_lowrank(args: argparse.Namespace) -> str:
    from shadowft.lowrank import delta_to_lora

    report = delta_to_lora(args.delta, args.out, rank=args.rank, energy=args.energy, progress=args.progress)
    return (
        f"wrote {args.out}: {len(report['modules'])} modules, overall relative error "
        f"{report['overall_relative_error']:.4g}, {len(report['left_out'])} tensors left out"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    raise_on_sigterm()
    try:
        message = args.run(args)
    except CheckpointError as exc:
        print(f"shadowft {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the system refused a read or write: a full disk, a read-only folder, ...
        where = f": {exc.filename}" if exc.filename else ""
        out = getattr(args, "out", None)
        target = f" while writing {out}; nothing was written there" if out is not None else ""
        print(f"shadowft {args.command}: error: {exc.strerror or exc}{where}{target}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"shadowft {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(message, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
