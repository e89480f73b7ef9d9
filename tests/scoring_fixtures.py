"""Known subset scores for every catalog benchmark, the numbers they must make, and the Shadow-FT
authors' summarizer written out, for checking the report's rule.

The datasets are named as OpenCompass 0.5.4 writes them (``lukaemon_mmlu_*``, ``mmlu_pro_*``,
``bbh-*``, ``winogrande_prompt_*``, ``lcb_*``; tests/test_benchmarks_opencompass.py checks these
names against the installed configs). The expected numbers are worked out by hand below each
table. `AUTHORS_SUMMARY_GROUPS` is chat_core_shadow_2505 (yang3121099/Shadow-FT-bk,
opencompass/opencompass/configs/summarizers/chat_core_shadow_2505.py) with the group files it
reads (groups/bbh.py, mmlu.py, mmlu_pro.py), as data; `authors_scores` evaluates it the way
OpenCompass's DefaultSummarizer does (naive_average; a plain subset counts its first metric).
"""

from __future__ import annotations

import statistics

MMLU_SUBJECTS = (
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_physics",
    "electrical_engineering",
    "astronomy",
    "anatomy",
    "abstract_algebra",
    "machine_learning",
    "clinical_knowledge",
    "global_facts",
    "management",
    "nutrition",
    "marketing",
    "professional_accounting",
    "high_school_geography",
    "international_law",
    "moral_scenarios",
    "computer_security",
    "high_school_microeconomics",
    "professional_law",
    "medical_genetics",
    "professional_psychology",
    "jurisprudence",
    "world_religions",
    "philosophy",
    "virology",
    "high_school_chemistry",
    "public_relations",
    "high_school_macroeconomics",
    "human_sexuality",
    "elementary_mathematics",
    "high_school_physics",
    "high_school_computer_science",
    "high_school_european_history",
    "business_ethics",
    "moral_disputes",
    "high_school_statistics",
    "miscellaneous",
    "formal_logic",
    "high_school_government_and_politics",
    "prehistory",
    "security_studies",
    "high_school_biology",
    "logical_fallacies",
    "high_school_world_history",
    "professional_medicine",
    "high_school_mathematics",
    "college_medicine",
    "high_school_us_history",
    "sociology",
    "econometrics",
    "high_school_psychology",
    "human_aging",
    "us_foreign_policy",
    "conceptual_physics",
)
MMLU_PRO_CATEGORIES = (
    "math",
    "physics",
    "chemistry",
    "law",
    "engineering",
    "other",
    "economics",
    "health",
    "psychology",
    "business",
    "biology",
    "philosophy",
    "computer_science",
    "history",
)
# BIG-Bench Hard's tasks (Suzgun et al., 2022): multiple choice, then free form, as bbh_gen's configs list them.
BBH_MULTIPLE_CHOICE = (
    "temporal_sequences",
    "disambiguation_qa",
    "date_understanding",
    "tracking_shuffled_objects_three_objects",
    "penguins_in_a_table",
    "geometric_shapes",
    "snarks",
    "ruin_names",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_five_objects",
    "logical_deduction_three_objects",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "movie_recommendation",
    "salient_translation_error_detection",
    "reasoning_about_colored_objects",
)
BBH_FREE_FORM = (
    "multistep_arithmetic_two",
    "navigate",
    "dyck_languages",
    "word_sorting",
    "sports_understanding",
    "boolean_expressions",
    "object_counting",
    "formal_fallacies",
    "causal_judgement",
    "web_of_lies",
)
BBH_TASKS = BBH_MULTIPLE_CHOICE + BBH_FREE_FORM
IFEVAL_METRICS = (
    "Prompt-level-strict-accuracy",
    "Inst-level-strict-accuracy",
    "Prompt-level-loose-accuracy",
    "Inst-level-loose-accuracy",
)


def subset_scores() -> dict[str, list[tuple[str, str, float]]]:
    """{benchmark: [(dataset, metric, score), ...]}: scores.csv's rows of one variant, per benchmark."""
    return {
        # Math-7: one dataset each (the authors name minerva_math's and gsm8k_0shot's differently).
        "math": [("math", "accuracy", 50.0)],
        "math_500": [("math-500", "accuracy", 60.0)],
        "minerva_math": [("math", "accuracy", 40.0)],
        "gsm8k": [("gsm8k", "accuracy", 80.0)],
        "gsm8k_0shot": [("gsm8k", "accuracy", 90.0)],
        "aime2024": [("aime2024", "accuracy", 10.0)],
        "svamp": [("svamp", "accuracy", 85.0)],
        # Code-3
        "humaneval": [("openai_humaneval", "humaneval_pass@1", 70.0)],
        "humaneval_plus": [("humaneval_plus", "humaneval_plus_pass@1", 65.0)],
        "livecodebench": [
            ("lcb_code_generation", "pass@1", 30.0),
            ("lcb_code_execution", "pass@1", 60.0),
            ("lcb_test_output", "pass@1", 90.0),
        ],
        # Reasoning-9: the i-th subject scores i (MMLU), the i-th category i (MMLU-Pro), the i-th task
        # i (BBH) and 2i (BBH 0-shot).
        "mmlu": [(f"lukaemon_mmlu_{name}", "accuracy", float(i)) for i, name in enumerate(MMLU_SUBJECTS)],
        "mmlu_pro": [(f"mmlu_pro_{name}", "accuracy", float(i)) for i, name in enumerate(MMLU_PRO_CATEGORIES)],
        "winogrande": [
            ("winogrande_prompt_1", "accuracy", 70.0),
            ("winogrande_prompt_2", "accuracy", 10.0),
            ("winogrande_prompt_3", "accuracy", 20.0),
        ],
        "drop": [("drop", "accuracy", 75.0)],
        "arc_c": [("ARC-c", "accuracy", 88.0)],
        "bbh": [(f"bbh-{name}", "score", float(i)) for i, name in enumerate(BBH_TASKS)],
        "bbh_0shot": [(f"bbh-{name}", "score", 2.0 * i) for i, name in enumerate(BBH_TASKS)],
        "gpqa_diamond": [("GPQA_diamond", "accuracy", 40.0)],
        "theoremqa": [("TheoremQA", "score", 30.0)],
        # IFEval: four metrics, the strict prompt-level one first.
        "ifeval": [
            ("IFEval", metric, score) for metric, score in zip(IFEVAL_METRICS, (55.0, 65.0, 60.0, 70.0), strict=True)
        ],
    }


# Each benchmark's score by hand.
EXPECTED_BENCHMARKS = {
    "math": 50.0,
    "math_500": 60.0,
    "minerva_math": 40.0,
    "gsm8k": 80.0,
    "gsm8k_0shot": 90.0,
    "aime2024": 10.0,
    "svamp": 85.0,
    "humaneval": 70.0,
    "humaneval_plus": 65.0,
    "livecodebench": 60.0,  # (30 + 60 + 90) / 3
    "mmlu": 28.0,  # 0 + 1 + ... + 56 over 57
    "mmlu_pro": 6.5,  # 0 + ... + 13 over 14
    "winogrande": 70.0,  # winogrande_prompt_1 alone
    "drop": 75.0,
    "arc_c": 88.0,
    "bbh": 13.0,  # 0 + ... + 26 over 27
    "bbh_0shot": 26.0,  # twice that
    "gpqa_diamond": 40.0,
    "theoremqa": 30.0,
    "ifeval": 55.0,  # strict prompt-level accuracy
}
EXPECTED_GROUPS = {
    "math7": 415.0 / 7,  # 50 + 60 + 40 + 80 + 90 + 10 + 85
    "code3": 65.0,  # (70 + 65 + 60) / 3
    "reasoning9": 376.5 / 9,  # 28 + 6.5 + 70 + 75 + 88 + 13 + 26 + 40 + 30
    "ifeval": 55.0,
}
# The mean of the three group means; IFEval is not in it.
EXPECTED_AVERAGE = (415.0 / 7 + 65.0 + 376.5 / 9) / 3


def authors_abbr(benchmark: str, dataset: str) -> str:
    """The name the authors' summarizer gives a dataset. OpenCompass 0.5.4 names MATH and its Minerva
    prompt both math, both GSM8K configs gsm8k and both BBH configs bbh-*; the authors' copies and
    groups call the second of each minerva_math, gsm8k_0shot and bbh_0shot-* (shadowft runs every
    benchmark apart, so the clash never arises there)."""
    if benchmark == "minerva_math":
        return "minerva_math"
    if benchmark == "gsm8k_0shot":
        return "gsm8k_0shot"
    if benchmark == "bbh_0shot":
        return dataset.replace("bbh-", "bbh_0shot-", 1)
    return dataset


AUTHORS_SUMMARY_GROUPS = [
    # groups/bbh.py (bbh_summary_groups, bbh_0shot_summary_groups), mmlu.py (its "mmlu"), mmlu_pro.py
    {"name": "bbh", "subsets": [f"bbh-{name}" for name in BBH_TASKS]},
    {"name": "bbh_0shot", "subsets": [f"bbh_0shot-{name}" for name in BBH_TASKS]},
    {"name": "mmlu", "subsets": [f"lukaemon_mmlu_{name}" for name in MMLU_SUBJECTS]},
    {"name": "mmlu_pro", "subsets": [f"mmlu_pro_{name}" for name in MMLU_PRO_CATEGORIES]},
    # chat_core_shadow_2505's own groups, in its order (its "Code" group, left out here, is not averaged)
    {
        "name": "Math",
        "subsets": [
            ["math", "accuracy"],
            ["math-500", "accuracy"],
            ["minerva_math", "accuracy"],
            ["gsm8k", "accuracy"],
            ["gsm8k_0shot", "accuracy"],
            ["aime2024", "accuracy"],
            ["svamp", "accuracy"],
        ],
    },
    {
        "name": "LiveCodeBench",
        "subsets": [
            ["lcb_code_execution", "pass@1"],
            ["lcb_code_generation", "pass@1"],
            ["lcb_test_output", "pass@1"],
        ],
    },
    {
        "name": "Code_v1",
        "subsets": [
            ["openai_humaneval", "humaneval_pass@1"],
            ["humaneval_plus", "humaneval_plus_pass@1"],
            ["LiveCodeBench", "naive_average"],
        ],
    },
    {
        "name": "General_v2",
        "subsets": [
            ["mmlu", "naive_average"],
            ["mmlu_pro", "naive_average"],
            ["winogrande_prompt_1", "accuracy"],
            ["drop", "accuracy"],
            ["ARC-c", "accuracy"],
            ["bbh", "naive_average"],
            ["bbh_0shot", "naive_average"],
            ["GPQA_diamond", "accuracy"],
            ["TheoremQA", "score"],
        ],
    },
    {"name": "average_math2", "subsets": [["Math", "naive_average"]]},
    {"name": "average_code1", "subsets": [["Code_v1", "naive_average"]]},
    {"name": "average_general2", "subsets": [["General_v2", "naive_average"]]},
    {
        "name": "average2",
        "subsets": [
            ["average_math2", "naive_average"],
            ["average_code1", "naive_average"],
            ["average_general2", "naive_average"],
        ],
    },
]
# The authors' names of our groups' means and of the overall average.
AUTHORS_GROUP_NAMES = {"math7": "Math", "code3": "Code_v1", "reasoning9": "General_v2"}
AUTHORS_AVERAGE = "average2"


def authors_results(scores: dict[str, list[tuple[str, str, float]]]) -> dict[str, dict[str, float]]:
    """{dataset abbr: {metric: score}} under the authors' names: what their summarizer reads."""
    results: dict[str, dict[str, float]] = {}
    for benchmark, rows in scores.items():
        for dataset, metric, score in rows:
            results.setdefault(authors_abbr(benchmark, dataset), {})[metric] = score
    return results


def authors_scores(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Every group of `AUTHORS_SUMMARY_GROUPS`, as OpenCompass's DefaultSummarizer computes it: the
    naive average of the subsets, a [dataset, metric] pair by that metric, a plain dataset by its
    first; each group's result joins the results under metric naive_average, for the groups after."""
    results = {name: dict(metrics) for name, metrics in results.items()}
    for group in AUTHORS_SUMMARY_GROUPS:
        values = []
        for subset in group["subsets"]:
            name, metric = subset if isinstance(subset, list) else (subset, next(iter(results[subset])))
            values.append(results[name][metric])
        results[group["name"]] = {"naive_average": statistics.fmean(values)}
    return {group["name"]: results[group["name"]]["naive_average"] for group in AUTHORS_SUMMARY_GROUPS}
