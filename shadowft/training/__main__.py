"""The training room's command line, which the workflow's training rules call: check the names an
experiment gives LLaMA-Factory (train environment), write a run's YAML (any environment), train
(resuming) and merge a LoRA adapter (train environment).

    python -m shadowft.training check-names NAMES_JSON OUT.json
    python -m shadowft.training config --spec JSON OUT.yaml
    python -m shadowft.training train CONFIG.yaml MODEL_OUT [--gpus G] [--nodes N]
    python -m shadowft.training export --model M --adapter A --template T OUT

(and, started by `train` itself: `node-launch`, one node's launcher of a multi-node run, and
`rank`, one process of a torchrun launch)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from shadowft.io import atomic_write_json, raise_on_sigterm
from shadowft.training.arguments import UnknownArgumentError, check_names, write_config
from shadowft.training.llamafactory import OFFLINE_ENVIRONMENT, export_merged, launch_node, run_rank, run_training
from shadowft.workers import run_command

# What a warm worker (shadowft.workers) imports once for every CPU job of a local run:
# LLaMA-Factory's trainer, and with it torch, transformers, peft and datasets, offline.
WARM_ENVIRONMENT = OFFLINE_ENVIRONMENT
WARM_IMPORTS = ("llamafactory.train.tuner",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shadowft.training", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train from a YAML and publish the model (resumes)")
    train.add_argument("config", type=Path, help="LLaMA-Factory YAML written by write_yaml")
    train.add_argument("model_out", type=Path, help="where the final model or adapter goes")
    train.add_argument("--gpus", type=int, default=None, help="GPUs the job has in all (default: all visible)")
    train.add_argument("--nodes", type=int, default=1, help="nodes the job spans (one launcher per node via srun)")
    node = commands.add_parser("node-launch", help="(internal) one node's launcher in a multi-node run")
    node.add_argument("config", type=Path)
    node.add_argument("--nodes", type=int, required=True)
    node.add_argument("--gpus-per-node", type=int, required=True)
    rank = commands.add_parser("rank", help="(internal) one process of a torchrun launch")
    rank.add_argument("config", type=Path)
    names = commands.add_parser("check-names", help="check an experiment's LLaMA-Factory argument names and templates")
    names.add_argument("names", type=json.loads, help='{"arguments": {name: [where]}, "templates": {name: [where]}}')
    names.add_argument("out", type=Path, help="the record of what was checked (JSON)")
    written = commands.add_parser("config", help="write one run's LLaMA-Factory YAML")
    written.add_argument("--spec", type=json.loads, required=True, help="training_arguments' keywords, as JSON")
    written.add_argument("out", type=Path)
    export = commands.add_parser("export", help="merge a LoRA adapter into its model")
    export.add_argument("--model", type=Path, required=True)
    export.add_argument("--adapter", type=Path, required=True)
    export.add_argument("--template", required=True)
    export.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own Python code")
    export.add_argument("out", type=Path)
    return parser


def main(argv: Iterable[str] | None = None) -> None:
    options = _parser().parse_args(None if argv is None else list(argv))
    raise_on_sigterm()
    if options.command == "train":
        run_training(options.config, options.model_out, gpus=options.gpus, nodes=options.nodes)
    elif options.command == "check-names":
        try:
            atomic_write_json(options.out, check_names(options.names))
        except UnknownArgumentError as error:
            sys.exit(f"error: {error}")
    elif options.command == "config":
        try:
            write_config(options.spec, options.out)
        except (ValueError, TypeError) as error:
            sys.exit(f"error: {error}")
    elif options.command == "node-launch":
        launch_node(options.config, options.nodes, options.gpus_per_node)
    elif options.command == "rank":
        run_rank(options.config)
    else:
        export_merged(
            options.model, options.adapter, options.template, options.out, trust_remote_code=options.trust_remote_code
        )


def _warm(argv: list[str]) -> bool:
    """Whether a warm worker may run these arguments: the names' check, a merge, or training on
    the CPU (no GPU given)."""
    args, _ = _parser().parse_known_args(argv)
    return args.command in ("check-names", "export") or (args.command == "train" and args.gpus == 0 and args.nodes == 1)


if __name__ == "__main__":
    sys.exit(run_command("shadowft.training", main, sys.argv[1:], warm=_warm))
