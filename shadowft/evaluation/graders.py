"""Evaluators that grade the same answers alike every time.

IFEval's evaluator asks langdetect which language an answer is in (its "respond in language X"
and all-capitals/all-lowercase instructions), and langdetect samples: without a seed, one short
or mixed answer can be graded differently from one run to the next. `SEEDED_EVALUATORS` names,
per OpenCompass evaluator class, a factory that seeds first and then returns that same
evaluator; shadowft.evaluation.run_config puts it in the run configuration instead of the class,
so OpenCompass builds it inside its run. Standard library at the top: OpenCompass imports this
module by its path when it builds the evaluator.
"""

from __future__ import annotations

# langdetect's DetectorFactory.seed: every detection then draws the same samples.
LANGDETECT_SEED = 0


def seeded_ifevaluator(**kwargs):
    """OpenCompass's IFEvaluator, with langdetect seeded (DetectorFactory.seed = LANGDETECT_SEED)."""
    from langdetect import DetectorFactory
    from opencompass.datasets import IFEvaluator

    DetectorFactory.seed = LANGDETECT_SEED
    return IFEvaluator(**kwargs)


# the evaluator's class name (in an "opencompass." type path) -> the factory OpenCompass builds instead
SEEDED_EVALUATORS = {"IFEvaluator": f"{__name__}.seeded_ifevaluator"}
