"""Evaluation with OpenCompass: the benchmark catalog and the report's scoring rule (`benchmarks`), a
benchmark's spec (`spec`), the model entry per backend (`models`), the model's window and the
prompts that must fit it (`context`), the whole run configuration (`run_config`), one run, offline
(`run`) behind the context check (`launch`), its scores and predictions (`results`), standard
benchmarks' data prefetched (`cache`), seeded evaluators (`graders`) and chat templates rendered
with a family's arguments (`chat_templates`).
``python -m shadowft.evaluation`` is the rules' command line, in the evaluation environment.

Every module's top level is standard library only: the core environment reads the catalog and the
scores without OpenCompass, which is imported where a run needs it.
"""

from shadowft.exports import public_names

__all__, __getattr__, __dir__ = public_names(
    __name__,
    {
        "benchmarks": [
            "CATALOG",
            "GROUPS",
            "Benchmark",
            "Headline",
            "Scoring",
            "benchmark_groups",
            "expand_evaluation",
            "scoring",
        ],
        "context": ["ContextLengthError", "context_window"],
        "spec": ["BenchmarkSpec", "benchmark_spec"],
        "models": ["BACKENDS", "BACKEND_ENVS", "ModelOptions"],
        "run": ["EvaluateOptions", "evaluate"],
        "results": ["SCORES_COLUMNS", "EvaluationError", "read_scores"],
        "cache": ["MissingDataError", "prefetch"],
    },
)
