"""The `shadowft` command: the delta engine without Snakemake, and an experiment config checked
as the workflow will check it. The workflow's own rules call the same commands.

shadowft extract-delta --base BASE (--tuned TUNED | --adapter ADAPTER) --out DELTA
shadowft graft --instruct INSTRUCT (--delta DELTA | --base BASE (--tuned T | --adapter A)) --out OUT
shadowft similarity MODEL_A MODEL_B --out sigma.csv
shadowft overlap BASE INSTRUCT [--tuned T | --adapter A] [--instruct-tuned T | --instruct-adapter A] --out overlap.csv
shadowft delta-to-lora --delta DELTA (--rank R | --energy E) --out ADAPTER
shadowft check-pair BASE INSTRUCT --out preflight.json
shadowft check-config CONFIG.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shadowft.engine.extraction import ExtractOptions
from shadowft.engine.grafting import GraftOptions
from shadowft.engine.layout import CheckpointError
from shadowft.engine.options import DeltaOptions
from shadowft.io import raise_on_sigterm


class CommandError(Exception):
    """A command's input is wrong; the message says which and why."""


# The flags of the streaming fields that every command reading or writing models takes.
RUNTIME_FIELDS = ("allow_pickle", "threads", "progress")


def _add_option_flags(parser: argparse.ArgumentParser, options: type, only: Sequence[str] | None = None) -> None:
    """One flag per field of the options record `options` that has a ``help`` in its metadata
    (those named in `only`, when given): a boolean that defaults to true becomes ``--no-<name>``,
    one that defaults to false ``--<name>``, a tuple a repeatable flag, anything else a flag
    taking one value."""
    for option in dataclasses.fields(options):
        meta = option.metadata
        if "help" not in meta or (only is not None and option.name not in only):
            continue
        flag = "--" + option.name.replace("_", "-")
        if isinstance(option.default, bool):
            if option.default:
                parser.add_argument(
                    f"--no-{option.name.replace('_', '-')}",
                    dest=option.name,
                    action="store_false",
                    help=f"do not {meta['help']}",
                )
            else:
                parser.add_argument(flag, dest=option.name, action="store_true", help=meta["help"])
            continue
        keywords = {key: meta[key] for key in ("choices", "metavar", "type") if key in meta}
        if isinstance(option.default, tuple):
            keywords.update(action="append", default=[])
        else:
            keywords["default"] = option.default
        default = "" if option.default in (None, ()) else " (default: %(default)s)"
        parser.add_argument(flag, dest=option.name, help=meta["help"] + default, **keywords)


def _options(options: type, args: argparse.Namespace, only: Sequence[str] | None = None, **settings: Any):
    """The options record `options` from the flags `_add_option_flags` made (those named in
    `only`, when given; the rest keep their defaults), and `settings`."""
    flagged = {
        option.name
        for option in dataclasses.fields(options)
        if "help" in option.metadata and (only is None or option.name in only)
    }
    return options(**{name: getattr(args, name) for name in flagged}, **settings)


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
    _add_option_flags(extract, ExtractOptions)
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
    _add_option_flags(graft, GraftOptions)
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
    _add_option_flags(similarity, DeltaOptions, RUNTIME_FIELDS)
    similarity.set_defaults(run=_run_similarity)


# The flags of the overlap command: which tensors (the graft's selection), the pair's vocabulary policy, the runtime.
OVERLAP_FIELDS = ("preset", "include", "exclude", "vocab_mismatch", *RUNTIME_FIELDS)


def _add_overlap(commands: argparse._SubParsersAction) -> None:
    """The overlap subcommand."""
    overlap = commands.add_parser(
        "overlap",
        help="how the updates of a pair overlap: cos(INSTRUCT - BASE, tuned BASE - BASE), their norms, sigma",
        description="Per tensor, per layer and overall, written as CSV: sigma and ||I|| / ||W_BASE|| "
        "(I = INSTRUCT - BASE; no training needed), and with a tuned BASE (B = its update) cos(I, B) and "
        "||B|| / ||I||, and with INSTRUCT tuned the same way (F) cos(B, F) and ||F|| / ||B||.",
    )
    overlap.add_argument("base", type=Path, metavar="BASE")
    overlap.add_argument("instruct", type=Path, metavar="INSTRUCT")
    tuned = overlap.add_mutually_exclusive_group()
    tuned.add_argument("--tuned", type=Path, help="BASE fully fine-tuned")
    tuned.add_argument("--adapter", type=Path, help="a PEFT LoRA adapter trained on BASE")
    instruct_tuned = overlap.add_mutually_exclusive_group()
    instruct_tuned.add_argument("--instruct-tuned", type=Path, help="INSTRUCT fully fine-tuned the same way")
    instruct_tuned.add_argument("--instruct-adapter", type=Path, help="a LoRA adapter trained on INSTRUCT the same way")
    overlap.add_argument("--out", required=True, type=Path, help="CSV file to write")
    _add_option_flags(overlap, DeltaOptions, OVERLAP_FIELDS)
    overlap.set_defaults(run=_run_overlap)


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
    _add_option_flags(lowrank, DeltaOptions, ["progress"])
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
    _add_overlap(commands)
    _add_lowrank(commands)
    _add_check_pair(commands)
    _add_check_config(commands)
    return parser


def _add_check_pair(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check-pair",
        help="check that two models can be a Shadow-FT pair, from their configs and weight headers",
        description="Same architecture, the same tensor names and shapes (a vocabulary difference only as "
        "--vocab-mismatch allows), every weight file whole; the findings are written as JSON.",
    )
    check.add_argument("base", type=Path, metavar="BASE")
    check.add_argument("instruct", type=Path, metavar="INSTRUCT")
    check.add_argument("--out", required=True, type=Path, help="JSON file to write")
    _add_option_flags(check, DeltaOptions, ["vocab_mismatch", "allow_pickle"])
    check.set_defaults(run=_run_check_pair)


def _add_check_config(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check-config",
        help="check an experiment config file as the workflow will, naming the file and line of an error",
        description="Snakemake reads a --configfile before the workflow runs, and names neither the file nor "
        "the line of a YAML error; this names both, then checks the config against its schema and families.",
    )
    check.add_argument("config_file", type=Path, metavar="CONFIG", help="the file you would give --configfile")
    check.set_defaults(run=_run_check_config)


def _run_extract(args: argparse.Namespace) -> str:
    from shadowft.engine.extraction import extract_delta

    options = _options(ExtractOptions, args)
    manifest = extract_delta(args.base, args.out, options, tuned=args.tuned, adapter=args.adapter)
    counts = manifest["counts"]
    return f"wrote {manifest['kind']} delta of {counts['tensors']} tensors to {args.out}"


def _run_graft(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """`parser` is the graft subcommand's, so usage errors show its usage line."""
    from shadowft.engine.extraction import Delta
    from shadowft.engine.grafting import graft

    on_the_fly = args.tuned is not None or args.adapter is not None
    if (args.delta is not None) == on_the_fly:
        parser.error("give either --delta, or --base with --tuned or --adapter")
    if on_the_fly != (args.base is not None):
        parser.error("--base goes with --tuned or --adapter (and only with them)")
    options = _options(GraftOptions, args)
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
    from shadowft.engine.sigma import similarity

    summary = similarity(
        args.first, args.second, args.out, allow_pickle=args.allow_pickle, threads=args.threads, progress=args.progress
    )
    return f"sigma = {summary['overall_sigma']:.6f} over {summary['tensors']} tensors; wrote {args.out}"


def _run_overlap(args: argparse.Namespace) -> str:
    from shadowft.engine.overlap import Updates, measure_overlap

    updates = Updates(args.tuned, args.adapter, args.instruct_tuned, args.instruct_adapter)
    summary = measure_overlap(args.base, args.instruct, args.out, updates, _options(DeltaOptions, args, OVERLAP_FIELDS))
    overall = summary["overall"]
    said = [f"sigma = {overall['sigma']:.6f}", f"||I||/||W|| = {overall['rel_i']:.4f}"]
    if updates.has_b:
        said += [f"cos(I, B) = {overall['cos_ib']:.4f}", f"||B||/||I|| = {overall['ratio_bi']:.4f}"]
    if updates.has_f:
        said += [f"cos(B, F) = {overall['cos_bf']:.4f}"]
    return f"{', '.join(said)} over {summary['tensors']} tensors; wrote {args.out}"


def _run_lowrank(args: argparse.Namespace) -> str:
    from shadowft.engine.lowrank import delta_to_lora

    report = delta_to_lora(args.delta, args.out, rank=args.rank, energy=args.energy, progress=args.progress)
    return (
        f"wrote {args.out}: {len(report['modules'])} modules, overall relative error "
        f"{report['overall_relative_error']:.4g}, {len(report['left_out'])} tensors left out"
    )


def _run_check_pair(args: argparse.Namespace) -> str:
    from shadowft.engine.preflight import write_pair_check

    check = write_pair_check(
        args.base, args.instruct, args.out, vocab_mismatch=args.vocab_mismatch, allow_pickle=args.allow_pickle
    )
    return f"{args.base} and {args.instruct} are a pair: {check.parameters} parameters each; wrote {args.out}"


def _run_check_config(args: argparse.Namespace) -> str:
    from shadowft.demo import DATASETS
    from shadowft.workflow.config import ConfigError, validate_config
    from shadowft.workflow.sweep import runs
    from shadowft.workflow.yamlfile import YamlFileError, load_mapping

    try:
        config = validate_config(load_mapping(args.config_file, "config file"), demo_datasets=DATASETS)
    except YamlFileError as error:
        raise CommandError(str(error)) from None
    except ConfigError as error:
        raise CommandError(f"{args.config_file}: {error}") from None
    return f"{args.config_file}: valid ({len(config['pairs'])} pairs, {len(runs(config))} runs)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    raise_on_sigterm()
    try:
        message = args.run(args)
    except (CheckpointError, CommandError) as exc:
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
