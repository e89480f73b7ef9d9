"""OpenCompass's command line behind one check: every prompt of the run, with a whole answer, fits
the model's max_seq_len.

    python -m shadowft.evaluation.launch [--trust-remote-code] RUN_CONFIG OPENCOMPASS_ARGUMENTS...

shadowft.evaluation.run calls `main` in the evaluation's own process, as if it were this command
(its arguments, folder, environment and output the run's); that process imports OpenCompass and
transformers anyway: the run's prompts are measured
(shadowft.evaluation.context.measure_prompts) and recorded beside the configuration (CONTEXT_FILE)
before OpenCompass's own main is called with the rest of the arguments. When a prompt does not
fit, OpenCompass never starts and the process exits with REFUSED. Standard library at the top.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shadowft.evaluation.context import CONTEXT_FILE, measure_prompts

# The exit status of a run refused for its context (OpenCompass's own failures exit 1).
REFUSED = 3


def apply_settings_read_at_import() -> None:
    """Point the evaluators' libraries at this run's extras. NLTK builds its search path and
    EvalPlus reads HUMANEVAL_OVERRIDE_PATH when they are imported, which in a warm worker
    (shadowft.workers) happened before this run's environment was set."""
    nltk = sys.modules.get("nltk")
    if nltk is not None and os.environ.get("NLTK_DATA"):
        for folder in reversed(os.environ["NLTK_DATA"].split(os.pathsep)):
            if folder not in nltk.data.path:
                nltk.data.path.insert(0, folder)
    humaneval = sys.modules.get("evalplus.data.humaneval")
    if humaneval is not None:
        humaneval.HUMANEVAL_OVERRIDE_PATH = os.environ.get("HUMANEVAL_OVERRIDE_PATH")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shadowft.evaluation.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trust-remote-code", action="store_true", help="the tokenizer may run the model's own code")
    parser.add_argument("config", type=Path, help="the run configuration (shadowft.evaluation.run_config)")
    parser.add_argument("opencompass", nargs=argparse.REMAINDER, help="OpenCompass's own arguments")
    args = parser.parse_args(argv)
    apply_settings_read_at_import()
    fit = measure_prompts(json.loads(args.config.read_text(encoding="utf-8")), trust_remote_code=args.trust_remote_code)
    fit.write(args.config.parent / CONTEXT_FILE)
    print("\n".join(fit.lines()), flush=True)
    if not fit.fits:
        return REFUSED
    from opencompass.cli.main import main as opencompass_main

    sys.argv = ["opencompass", str(args.config), *args.opencompass]
    opencompass_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
