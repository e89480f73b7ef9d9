"""The data room's command line, which the workflow's download and preparation rules call:
a model or a dataset's files from the Hub (or a local model folder), and a dataset sampled,
checked and registered for LLaMA-Factory.

    python -m shadowft.data download-model SPEC_JSON DEST
    python -m shadowft.data download-dataset SPEC_JSON DEST
    python -m shadowft.data prepare NAME SPEC_JSON SOURCE DEST

SPEC_JSON is the model's or dataset's entry in the experiment config. `prepare` runs in the train
environment (pyarrow reads parquet there), the downloads in the core one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shadowft.io import raise_on_sigterm


def _spec(text: str) -> dict:
    spec = json.loads(text)
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: not a JSON object")
    return spec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shadowft.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("download-model", help="a Hub model at its pinned revision, or a local folder")
    model.add_argument("spec", type=_spec, help="the model's config entry, as JSON")
    model.add_argument("dest", type=Path, help="the model folder to write")
    dataset = commands.add_parser("download-dataset", help="a Hub dataset's data files at its pinned revision")
    dataset.add_argument("spec", type=_spec, help="the dataset's config entry, as JSON")
    dataset.add_argument("dest", type=Path, help="the folder to write")
    prepare = commands.add_parser("prepare", help="sample, check and register one dataset of the config")
    prepare.add_argument("name", help="the dataset's key in the config (its name in dataset_info.json)")
    prepare.add_argument("spec", type=_spec, help="the dataset's config entry, as JSON")
    prepare.add_argument("source", type=Path, help="the download folder (source hub) or the file (source local)")
    prepare.add_argument("dest", type=Path, help="the LLaMA-Factory dataset folder to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    raise_on_sigterm()
    if args.command == "download-model":
        from shadowft.data.hub import fetch_model

        fetch_model(args.spec, args.dest)
    elif args.command == "download-dataset":
        from shadowft.data.hub import fetch_dataset

        fetch_dataset(args.spec, args.dest)
    else:
        from shadowft.data.datasets import prepare_dataset
        from shadowft.data.rows import DatasetFormatError

        try:
            manifest = prepare_dataset(args.name, args.spec, args.source, args.dest)
        except (DatasetFormatError, ValueError) as error:
            print(f"dataset {args.name}: {error}", file=sys.stderr)
            return 1
        print(f"dataset {args.name}: {manifest['rows']} rows, {args.dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
