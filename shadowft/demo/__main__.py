"""The demo's command line, which rules/demo.smk calls: build the initial model and the datasets,
and write the LLaMA-Factory YAML of one step that makes the pair.

    python -m shadowft.demo build --seed S --init DIR --pretrain DIR --chat DIR --task DIR --preference DIR
    python -m shadowft.demo step-config pretrain|instruct --model DIR --dataset DIR --work-dir DIR --seed S OUT.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shadowft.io import raise_on_sigterm


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shadowft.demo", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="the random initial model and the demo's datasets")
    build.add_argument("--seed", type=int, required=True, help="the experiment's seed")
    for folder in ("init", "pretrain", "chat", "task", "preference"):
        build.add_argument(f"--{folder}", type=Path, required=True, help=f"the {folder} folder to write")
    step = commands.add_parser("step-config", help="LLaMA-Factory's YAML for one step that makes the pair")
    step.add_argument("step", choices=("pretrain", "instruct"))
    step.add_argument("--model", type=Path, required=True, help="the model the step starts from")
    step.add_argument("--dataset", type=Path, required=True, help="the step's dataset folder")
    step.add_argument("--work-dir", type=Path, required=True, help="LLaMA-Factory's output_dir (checkpoints)")
    step.add_argument("--seed", type=int, required=True, help="the experiment's seed")
    step.add_argument("out", type=Path, help="the YAML to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    raise_on_sigterm()
    if args.command == "build":
        from shadowft.demo.build import build_demo

        build_demo(args.init, args.pretrain, args.chat, args.task, args.preference, seed=args.seed)
    else:
        from shadowft.demo.pair import step_arguments
        from shadowft.training.arguments import write_yaml

        arguments = step_arguments(
            args.step, model_dir=args.model, dataset_dir=args.dataset, output_dir=args.work_dir, seed=args.seed
        )
        write_yaml(arguments, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
