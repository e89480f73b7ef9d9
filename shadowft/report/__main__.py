"""The report's command line, which rules/report.smk calls: the tables, the figures of one pair,
its training curves, the sample answers of one benchmark, and the seed table of README's demo section.

    python -m shadowft.report summary --pairs P.. --variants V.. --benchmarks B.. --csv OUT --md OUT --html OUT
    python -m shadowft.report figures SUMMARY_CSV PAIR [--similarity CSV] [--results DIR] NAME=PNG ...
    python -m shadowft.report training-figure PAIR PNG --states TRAINER_STATE_JSON ...
    python -m shadowft.report overlap-figure PAIR PNG --overlap OVERLAP_CSV ...
    python -m shadowft.report samples PAIR BENCHMARK --predictions VARIANT=JSON ... --md OUT --html OUT
    python -m shadowft.report seeds SEED=RUN_DIR ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from shadowft.io import raise_on_sigterm  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shadowft.report", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="summary.csv, summary.md and summary.html")
    summary.add_argument("--pairs", nargs="+", required=True)
    summary.add_argument("--variants", nargs="+", required=True, help="every variant scored (shadowft.workflow.sweep)")
    summary.add_argument("--benchmarks", nargs="+", required=True)
    summary.add_argument(
        "--scoring", type=json.loads, default={}, help="how scores become the tables' numbers (Scoring, as JSON)"
    )
    summary.add_argument(
        "--remote-code", nargs="*", default=[], metavar="PAIR:ROLE", help="models that ran their own code"
    )
    summary.add_argument("--similarity", nargs="*", default=[], type=Path, help="each pair's similarity.csv")
    summary.add_argument(
        "--overlap", nargs="*", default=[], type=Path, help="each run's results/{pair}/{run}/overlap.csv"
    )
    summary.add_argument("--versions", nargs="*", default=[], type=Path, help="results/versions/{env}.json")
    summary.add_argument(
        "--hardware", nargs="*", default=[], type=Path, help="each evaluation's hardware.json (where it ran)"
    )
    summary.add_argument(
        "--descriptions", type=json.loads, default={}, help="what each benchmark measures, as a JSON object"
    )
    summary.add_argument("--results", type=Path, default=Path("."), help="the folder holding results/")
    for table in ("csv", "md", "html"):
        summary.add_argument(f"--{table}", type=Path, required=True, help=f"summary.{table} to write")
    summary.add_argument("--paired", type=Path, help="paired.csv to write: every paired difference")
    summary.add_argument("--rst", type=Path, help="the verdict and glossary to write as reStructuredText")
    figures = commands.add_parser("figures", help="figures of one pair, from summary.csv")
    figures.add_argument("summary", type=Path)
    figures.add_argument("pair")
    figures.add_argument(
        "--scoring", type=json.loads, default={}, help="how scores become the tables' numbers (Scoring, as JSON)"
    )
    figures.add_argument("--similarity", type=Path, help="the pair's similarity.csv (for the similarity figure)")
    figures.add_argument(
        "--results", type=Path, help="the folder holding results/, whose predictions.json the intervals resample"
    )
    figures.add_argument("outputs", nargs="+", metavar="NAME=PNG", help="the figures to draw and where")
    training = commands.add_parser("training-figure", help="every run's training loss on BASE and INSTRUCT")
    training.add_argument("pair")
    training.add_argument("out", type=Path)
    training.add_argument(
        "--states", nargs="+", required=True, metavar="RUN/ROLE=JSON", help="each tuned model's trainer_state.json"
    )
    overlap = commands.add_parser("overlap-figure", help="how each run's updates overlap, per layer")
    overlap.add_argument("pair")
    overlap.add_argument("out", type=Path)
    overlap.add_argument("--overlap", nargs="+", required=True, type=Path, help="each run's overlap.csv")
    samples = commands.add_parser("samples", help="the same questions of one benchmark as every variant answered them")
    samples.add_argument("pair")
    samples.add_argument("benchmark")
    samples.add_argument(
        "--predictions", nargs="+", required=True, metavar="VARIANT=JSON", help="each variant's predictions.json"
    )
    samples.add_argument("--md", type=Path, required=True, help="the Markdown to write")
    samples.add_argument("--html", type=Path, required=True, help="the HTML to write (in the same folder)")
    seeds = commands.add_parser("seeds", help="how far the scores of runs with different seeds lie apart")
    seeds.add_argument("runs", nargs="+", metavar="SEED=RUN_DIR", help="a seed and the working directory of its run")
    return parser


def _pairs_of(parser: argparse.ArgumentParser, items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            parser.error(f"{item!r}: expected {what}")
        pairs[key] = value
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    raise_on_sigterm()
    if args.command == "summary":
        from shadowft.evaluation.benchmarks import Scoring
        from shadowft.report.records import score_records
        from shadowft.report.summary import summarize
        from shadowft.versions import EnvironmentVersions, Hardware

        records = score_records(args.results, args.pairs, args.variants, args.benchmarks, args.remote_code)
        summarize(
            records,
            args.csv,
            args.md,
            out_html=args.html,
            out_paired=args.paired,
            out_rst=args.rst,
            scoring=Scoring.from_dict(args.scoring),
            similarity={path.parent.name: path for path in args.similarity},
            overlap=args.overlap,
            versions=[EnvironmentVersions.read(path) for path in args.versions],
            machines=[Hardware.read(path) for path in args.hardware],
            descriptions=args.descriptions,
        )
    elif args.command == "figures":
        from shadowft.evaluation.benchmarks import Scoring
        from shadowft.report.figures import draw_figures

        outputs = {name: Path(path) for name, path in _pairs_of(parser, args.outputs, "NAME=PNG").items()}
        scoring = Scoring.from_dict(args.scoring)
        draw_figures(
            args.summary, args.pair, outputs, scoring=scoring, similarity_csv=args.similarity, results=args.results
        )
    elif args.command == "training-figure":
        from shadowft.report.figures import plot_training_loss

        runs: dict[str, dict[str, Path]] = {}
        for model, state in _pairs_of(parser, args.states, "RUN/ROLE=JSON").items():
            run, _, role = model.partition("/")
            runs.setdefault(run, {})[role] = Path(state)
        plot_training_loss(runs, args.out, args.pair)
    elif args.command == "overlap-figure":
        from shadowft.report.overlap import RunOverlap, plot_overlap

        plot_overlap([RunOverlap.read(path) for path in args.overlap], args.out, args.pair)
    elif args.command == "samples":
        from shadowft.report.samples import write_samples

        predictions = {name: Path(path) for name, path in _pairs_of(parser, args.predictions, "VARIANT=JSON").items()}
        write_samples(args.pair, args.benchmark, predictions, args.md, args.html)
    else:
        from shadowft.report.seeds import render_seed_spread, seed_spread

        runs = _pairs_of(parser, args.runs, "SEED=RUN_DIR")
        if not all(seed.lstrip("-").isdigit() for seed in runs):
            parser.error("each run is SEED=RUN_DIR with a whole-number seed")
        summaries = {int(seed): Path(folder) / "results" / "summary.csv" for seed, folder in runs.items()}
        print(render_seed_spread(seed_spread(summaries)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
