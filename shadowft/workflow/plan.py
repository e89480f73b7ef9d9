"""Every path and value the workflow's rules look up, from one validated experiment config.

`Plan` is what rules/*.smk call: its methods that take ``wildcards`` are Snakemake input, params
and output functions as they stand (``input: model=PLAN.trained_model_dir``), the others give the
plan's fixed lists (pairs, runs, benchmarks, the report's files). Paths are literal templates
written here once, ``results/{pair}/{run}/train_{role}/model`` and the like, so that two rules
cannot disagree about a folder. A ``wildcards`` argument is anything with the wildcards as
attributes (Snakemake's, or a ``types.SimpleNamespace`` in a test).

The demo's pieces are the outputs of rules/demo.smk: ``data/demo/{role}/model`` for its models and
``data/demo/{name}/`` for its datasets.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shadowft.evaluation.benchmarks import descriptions, opencompass_benchmarks, scoring
from shadowft.evaluation.models import BACKEND_ENVS
from shadowft.evaluation.results import PREDICTIONS_FILE
from shadowft.evaluation.spec import benchmark_spec
from shadowft.training.arguments import training_arguments
from shadowft.versions import HARDWARE_FILE
from shadowft.workflow.sweep import Run, Variant, VariantKind, alpha_label, runs, variants

# A pair's two models: BASE, whose update is grafted, and INSTRUCT, which receives it.
ROLES = ("base", "instruct")
# The environments whose tools the report states: the workflow's own and training's, then the
# evaluation backend's.
WORKFLOW_ENVIRONMENTS = ("core", "train")
FIGURES = ("scores", "similarity", "training")
# The report's tables (summary.csv: every score and its interval; paired.csv: every paired difference)
# and the verdict and glossary that the landing page of `snakemake --report` includes.
REPORT_TABLES = ("results/summary.csv", "results/summary.md", "results/summary.html", "results/paired.csv")
VERDICT_RST = "results/verdict.rst"
# The same questions of one benchmark as every variant of a pair answered them.
SAMPLES = "results/samples/{pair}/{benchmark}.{ext}"


def scores_path(pair: str, variant: str, benchmark: str) -> str:
    """Where the evaluation of one variant of a pair on one benchmark writes its scores."""
    return f"results/{pair}/eval/{variant}/{benchmark}/scores.csv"


def predictions_path(pair: str, variant: str, benchmark: str) -> str:
    """Where the same evaluation writes what the model answered (shadowft.evaluation.results), beside its scores."""
    return os.path.join(os.path.dirname(scores_path(pair, variant, benchmark)), PREDICTIONS_FILE)


def parse_scores_path(path: str | os.PathLike) -> tuple[str, Variant, str]:
    """The (pair, variant, benchmark) of a `scores_path`, wherever the results folder lies."""
    parts = Path(path).parts
    # A variant is one folder (base, instruct) or two ({run}/{kind}); no run or kind is named eval.
    for variant_parts in (1, 2):
        eval_index = len(parts) - 3 - variant_parts
        if eval_index >= 1 and parts[eval_index] == "eval" and parts[-1] == "scores.csv":
            variant = Variant.parse("/".join(parts[eval_index + 1 : -2]))
            return parts[eval_index - 1], variant, parts[-2]
    raise ValueError(f"{path}: not a scores file results/{{pair}}/eval/{{variant}}/{{benchmark}}/scores.csv")


def alternatives(names: Iterable[str]) -> str:
    """A regex matching exactly these names (and nothing when there are none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


class Plan:
    """The experiment `config` (validated, shadowft.workflow.config) as the rules see it.

    `basedir` is the checkout (envs/, .venvs/); `conda` whether rules run in conda environments
    (``--sdm conda``) rather than the checkout's virtualenvs.
    """

    def __init__(self, config: Mapping[str, Any], *, basedir: str | os.PathLike = ".", conda: bool = False):
        self.config = config
        self.basedir = Path(basedir)
        self.conda = conda
        self.pairs = sorted(config["pairs"])
        self.runs = {run.name: run for run in runs(config)}
        self.alphas = [alpha_label(alpha) for alpha in config["graft"]["alphas"]]
        self.benchmarks = sorted(config["evaluation"]["benchmarks"])
        self.variants = variants(config)

    # The wildcards' values -------------------------------------------------------------------

    def wildcard_constraints(self) -> dict[str, str]:
        """A regex per wildcard: the values this plan has, so no rule matches another's paths."""
        runs_alternatives, alphas = alternatives(self.runs), alternatives(self.alphas)
        return {
            "pair": alternatives(self.pairs),
            "run": runs_alternatives,
            "role": alternatives(ROLES),
            "alpha": alphas,
            "benchmark": alternatives(self.benchmarks),
            "model": alternatives(self.downloaded_models()),
            "dataset": alternatives(self.prepared_datasets()),
            "variant": f"base|instruct|({runs_alternatives})/(instruct_ft|base_ft|shadow_a({alphas}))",
            "step": alternatives(ROLES),
        }

    def downloaded_models(self) -> list[str]:
        return [name for name, spec in self.config["models"].items() if spec["source"] != "demo"]

    def prepared_datasets(self) -> list[str]:
        """Datasets the workflow samples, checks and registers: from the hub, or a local file."""
        return [name for name, spec in self.config["datasets"].items() if spec["source"] == "hub" or "file" in spec]

    def lora_runs(self) -> list[str]:
        """The runs that train a LoRA adapter (merged into its model for evaluation)."""
        return [name for name, run in self.runs.items() if run.tuning == "lora"]

    # Environments -----------------------------------------------------------------------------

    def python(self, environment: str) -> str:
        """The Python of an environment: the conda env's under ``--sdm conda``, else the
        virtualenv that envs/build_venvs.py built from the same file."""
        if self.conda:
            return "python"
        return os.fspath(self.basedir / ".venvs" / environment / "bin" / "python")

    @property
    def evaluation_environment(self) -> str:
        """The environment of the evaluation rules: the one holding the configured backend."""
        return BACKEND_ENVS[self.config["evaluation"]["backend"]]

    def report_environments(self) -> list[str]:
        return list(dict.fromkeys([*WORKFLOW_ENVIRONMENTS, self.evaluation_environment]))

    def environment_python(self, wildcards) -> str:
        return self.python(wildcards.environment)

    def environment_file(self, wildcards) -> str:
        """An environment's definition, envs/NAME.yaml: when it changes, its versions are recorded again."""
        return os.fspath(self.basedir / "envs" / f"{wildcards.environment}.yaml")

    # Models and datasets ----------------------------------------------------------------------

    def model_dir(self, name: str) -> str:
        """Where a model of ``models`` lives once it is available."""
        spec = self.config["models"][name]
        if spec["source"] == "demo":
            return f"data/demo/{spec['role']}/model"
        return f"data/models/{name}"

    def dataset_dir(self, name: str) -> str:
        """Where a dataset of ``datasets`` lives: a LLaMA-Factory dataset folder."""
        spec = self.config["datasets"][name]
        if spec["source"] == "demo":
            return f"data/demo/{name}"
        if name in self.prepared_datasets():
            return f"data/datasets/{name}"
        return spec["path"]

    def model_spec(self, wildcards) -> str:
        """A downloaded model's config entry, as JSON for the command line."""
        return json.dumps(self.config["models"][wildcards.model], sort_keys=True)

    def dataset_spec(self, wildcards) -> str:
        """A prepared dataset's config entry, as JSON for the command line."""
        return json.dumps(self.config["datasets"][wildcards.dataset], sort_keys=True)

    def dataset_rows_source(self, wildcards) -> str:
        """What prepare_dataset reads: the hub download's folder, or the local file."""
        spec = self.config["datasets"][wildcards.dataset]
        return f"data/downloads/{wildcards.dataset}" if spec["source"] == "hub" else spec["file"]

    def pair_model_dir(self, pair: str, role: str) -> str:
        return self.model_dir(self.config["pairs"][pair][role])

    def planning_model(self, pair: str) -> str:
        """Where a pair's base model can be sized before it is downloaded: its local source folder."""
        name = self.config["pairs"][pair]["base"]
        spec = self.config["models"][name]
        if not os.path.isdir(self.model_dir(name)) and spec["source"] == "local":
            return spec["path"]
        return self.model_dir(name)

    def base_model_dir(self, wildcards) -> str:
        return self.pair_model_dir(wildcards.pair, "base")

    def instruct_model_dir(self, wildcards) -> str:
        return self.pair_model_dir(wildcards.pair, "instruct")

    def trained_model_dir(self, wildcards) -> str:
        """The model a training run starts from: the pair's base or instruct model."""
        return self.pair_model_dir(wildcards.pair, wildcards.role)

    def pair_template(self, wildcards) -> str:
        return self.config["pairs"][wildcards.pair]["template"]

    def chat_template_kwargs(self, wildcards) -> str:
        """The arguments the pair's chat template is rendered with in evaluation, as JSON."""
        return json.dumps(self.config["pairs"][wildcards.pair]["chat_template_kwargs"], sort_keys=True)

    def allow_pickle_flag(self, wildcards) -> str:
        """``--allow-pickle`` where either model of the pair was configured to accept pickle weights."""
        pair = self.config["pairs"][wildcards.pair]
        allowed = any(self.config["models"][pair[role]].get("allow_pickle", False) for role in ROLES)
        return "--allow-pickle" if allowed else ""

    # Code a model runs ------------------------------------------------------------------------

    def role_trusts_remote_code(self, pair: str, role: str) -> bool:
        """Whether a pair's model may run its own Python code: its entry says so (a family file
        fills it in); the one value its download, training, export and evaluation use."""
        return bool(self.config["models"][self.config["pairs"][pair][role]].get("trust_remote_code", False))

    def remote_code_flag(self, wildcards) -> str:
        """``--trust-remote-code`` for a job on a model that may run its own code, else nothing: the
        trained model (train, merge_adapter) or, for an evaluation, the model the variant comes from."""
        if "variant" in dir(wildcards):
            role = self.parsed_variant(wildcards.variant).scored_role
        else:
            role = wildcards.role
        return "--trust-remote-code" if self.role_trusts_remote_code(wildcards.pair, role) else ""

    def remote_code_roles(self) -> list[str]:
        """``pair:role`` of every model that may run its own code, for the report's mark."""
        return [f"{pair}:{role}" for pair in self.pairs for role in ROLES if self.role_trusts_remote_code(pair, role)]

    # Training ---------------------------------------------------------------------------------

    def run_of(self, wildcards) -> Run:
        """The run a job belongs to, from its `run` wildcard (shadowft.workflow.sweep names it)."""
        return self.runs[wildcards.run]

    def training_dataset_name(self, wildcards) -> str:
        """SFT trains on training.dataset, DPO on training.preference_dataset."""
        training = self.config["training"]
        return training["preference_dataset"] if self.run_of(wildcards).stage == "dpo" else training["dataset"]

    def training_dataset_dir(self, wildcards) -> str:
        return self.dataset_dir(self.training_dataset_name(wildcards))

    def training_overrides(self, pair: str, run: Run) -> dict[str, Any]:
        """The LLaMA-Factory arguments of one run over the paper's defaults: the experiment's (common,
        the stage's, then the tuning's), then the pair's own (a family's, with its family_overrides).
        Sorted: the run's parameters (and Snakemake's params trigger) do not depend on the key order."""
        overrides = {}
        for hyperparameters in (
            self.config["training"]["hyperparameters"],
            self.config["pairs"][pair]["hyperparameters"],
        ):
            for section in ("common", run.stage, run.tuning):
                overrides.update(hyperparameters.get(section, {}))
        return dict(sorted(overrides.items()))

    def training_parameters(self, wildcards) -> dict[str, Any]:
        """The keywords of one fine-tuning run's LLaMA-Factory arguments (training_arguments)."""
        run = self.run_of(wildcards)
        return {
            "model_dir": self.trained_model_dir(wildcards),
            "dataset_dir": self.training_dataset_dir(wildcards),
            "dataset": self.training_dataset_name(wildcards),
            "template": self.pair_template(wildcards),
            "tuning": run.tuning,
            "stage": run.stage,
            "output_dir": f"results/{wildcards.pair}/{wildcards.run}/train_{wildcards.role}/work",
            "overrides": self.training_overrides(wildcards.pair, run),
            "seed": run.seed,
            "learning_rate": run.learning_rate,
            "lora_rank": run.lora_rank,
            "trust_remote_code": self.role_trusts_remote_code(wildcards.pair, wildcards.role),
        }

    def llamafactory_names(self) -> str:
        """Every LLaMA-Factory argument name and chat template the experiment's runs use, each with
        the config keys it comes from (shadowft's own defaults otherwise), as JSON: what the names'
        check reads before any download."""
        arguments: dict[str, set[str]] = {}
        templates: dict[str, set[str]] = {}
        training = self.config["training"]["hyperparameters"]
        for pair, spec in self.config["pairs"].items():
            templates.setdefault(spec["template"], set()).add(f"pairs.{pair}.template")
            for run in self.runs.values():
                sections = [
                    ("training.hyperparameters", training),
                    (f"pairs.{pair}.hyperparameters", spec["hyperparameters"]),
                ]
                for where, hyperparameters in sections:
                    for section in ("common", run.stage, run.tuning):
                        for name in hyperparameters.get(section, {}):
                            arguments.setdefault(name, set()).add(f"{where}.{section}")
                job = SimpleNamespace(pair=pair, run=run.name, role="base")
                for name in training_arguments(**self.training_parameters(job)):
                    arguments.setdefault(name, {"shadowft's defaults (shadowft.training.arguments)"})
        names = {
            "arguments": {name: sorted(places) for name, places in sorted(arguments.items())},
            "templates": {name: sorted(places) for name, places in sorted(templates.items())},
        }
        return json.dumps(names, sort_keys=True)

    def training_spec(self, wildcards) -> str:
        """training_parameters as JSON, for the command that writes the run's checked YAML."""
        return json.dumps(self.training_parameters(wildcards), sort_keys=True)

    def epochs(self, wildcards) -> float | None:
        """The run's epochs, where its hyper-parameters set them (else LLaMA-Factory's default applies)."""
        value = self.training_overrides(wildcards.pair, self.run_of(wildcards)).get("num_train_epochs")
        return None if value is None else float(value)

    def tuned_model(self, wildcards) -> str:
        """What extract_delta reads: the adapter (LoRA) or the tuned weights (full) of base."""
        return f"results/{wildcards.pair}/{wildcards.run}/train_base/model"

    def tuned_model_flag(self, wildcards) -> str:
        """How the extraction names the tuned base: an adapter (LoRA) or a whole model (full)."""
        return "--adapter" if self.run_of(wildcards).tuning == "lora" else "--tuned"

    # The overlap of a run's updates (rules/delta.smk) ----------------------------------------

    def tunes_base(self) -> bool:
        """Whether the runs tune BASE: for a graft, or to score the tuned base itself."""
        wanted = {VariantKind(name) for name in self.config["evaluation"]["variants"]}
        return bool(wanted & {VariantKind.SHADOW, VariantKind.BASE_FT})

    def tunes_instruct(self) -> bool:
        """Whether the runs tune INSTRUCT (the paper's baseline)."""
        return VariantKind.INSTRUCT_FT.value in self.config["evaluation"]["variants"]

    def overlap_inputs(self, wildcards) -> dict[str, str]:
        """What the overlap of a run reads: the pair, the tuned BASE and, where the runs tune it, the tuned INSTRUCT."""
        inputs = {
            "base": self.base_model_dir(wildcards),
            "instruct": self.instruct_model_dir(wildcards),
            "tuned": self.tuned_model(wildcards),
        }
        if self.tunes_instruct():
            inputs["instruct_tuned"] = f"results/{wildcards.pair}/{wildcards.run}/train_instruct/model"
        return inputs

    def overlap_updates(self, wildcards) -> str:
        """The overlap command's flags naming the tuned models: adapters (LoRA) or whole models (full)."""
        inputs = self.overlap_inputs(wildcards)
        kind = "adapter" if self.run_of(wildcards).tuning == "lora" else "tuned"
        flags = [f"--{kind}", shlex.quote(inputs["tuned"])]
        if "instruct_tuned" in inputs:
            flags += [f"--instruct-{kind}", shlex.quote(inputs["instruct_tuned"])]
        return " ".join(flags)

    # The demo pair's steps (rules/demo.smk) ----------------------------------------------------

    @staticmethod
    def demo_step_model_dir(wildcards) -> str:
        """The demo base is pre-trained from random weights; the demo instruct is tuned from base."""
        return "data/demo/init" if wildcards.step == "base" else "data/demo/base/model"

    @staticmethod
    def demo_step_dataset_dir(wildcards) -> str:
        """Base is pre-trained on the corpus, instruct tuned on the chat set."""
        return "data/demo/pretrain" if wildcards.step == "base" else "data/demo/demo_chat"

    @staticmethod
    def demo_step_name(wildcards) -> str:
        """shadowft.demo's name of the step that makes the demo's base (pre-training) or instruct model."""
        return "pretrain" if wildcards.step == "base" else "instruct"

    # Evaluation -------------------------------------------------------------------------------

    @staticmethod
    @cache
    def parsed_variant(name: str) -> Variant:
        """The variant a `variant` wildcard names, parsed once per name."""
        return Variant.parse(name)

    def variant_model_dir(self, wildcards) -> str:
        """The model folder scored as `variant` of a pair."""
        pair, variant = wildcards.pair, self.parsed_variant(wildcards.variant)
        if variant.run is None:
            return self.pair_model_dir(pair, variant.kind.value)
        if variant.kind is VariantKind.SHADOW:
            return f"results/{pair}/{wildcards.variant}"
        role = "instruct" if variant.kind is VariantKind.INSTRUCT_FT else "base"
        # A LoRA run's adapter is scored merged into the model it was trained on.
        folder = "merged" if variant.run.tuning == "lora" else "model"
        return f"results/{pair}/{variant.run.name}/train_{role}/{folder}"

    def benchmark(self, name: str) -> dict[str, Any]:
        return self.config["evaluation"]["benchmarks"][name]

    def benchmark_data(self, wildcards) -> str:
        """What an evaluation reads besides the model: a custom benchmark's dataset folder, or the
        manifest of the prefetched standard benchmark's data."""
        spec = self.benchmark(wildcards.benchmark)
        if spec["kind"] == "opencompass":
            return self.prefetch_manifest(wildcards.benchmark)
        return self.dataset_dir(spec["dataset"])

    def benchmark_json(self, wildcards) -> str:
        """The benchmark as the evaluation's command line reads it (shadowft.evaluation.spec), as JSON."""
        spec = self.benchmark(wildcards.benchmark)
        questions = None
        if spec["kind"] == "custom":
            questions = os.path.join(self.dataset_dir(spec["dataset"]), "eval.jsonl")
        return json.dumps(benchmark_spec(wildcards.benchmark, spec, questions).as_dict(), sort_keys=True)

    @property
    def data_cache(self) -> str:
        """COMPASS_DATA_CACHE: where prefetch_benchmarks puts the standard benchmarks' data."""
        return self.config["evaluation"]["data_cache"]

    def prefetch_manifest(self, benchmark: str) -> str:
        """The record of one standard benchmark's prefetched data: one per benchmark, so adding a
        benchmark leaves the others' evaluations alone."""
        return os.path.join(self.data_cache, "manifests", f"{benchmark}.json")

    @staticmethod
    def manifest_cache(wildcards, output) -> str:
        """The data cache a prefetch fills: the folder above its manifests/."""
        return os.path.dirname(os.path.dirname(output[0]))

    def prefetched_benchmark(self, wildcards) -> str:
        """{name: spec} of the standard benchmark to prefetch, as JSON for the command line."""
        name = wildcards.benchmark
        return json.dumps({name: opencompass_benchmarks(self.config["evaluation"])[name]}, sort_keys=True)

    def dataset_urls(self) -> str:
        """The config's downloads that come before OpenCompass's own (DATASETS_URL's format), as JSON."""
        return json.dumps(self.config["evaluation"]["dataset_urls"], sort_keys=True)

    def evaluation_work_dir(self, wildcards) -> str:
        return f"results/{wildcards.pair}/eval/{wildcards.variant}/{wildcards.benchmark}/opencompass"

    # The report -------------------------------------------------------------------------------

    def scoring_json(self) -> str:
        """How the report makes its numbers from the scores (shadowft.evaluation.benchmarks.Scoring), as JSON."""
        return json.dumps(scoring(self.config["evaluation"]).as_dict(), sort_keys=True)

    def descriptions_json(self) -> str:
        """What each benchmark measures (the report's glossary), as JSON."""
        return json.dumps(descriptions(self.config["evaluation"]), sort_keys=True)

    def score_files(self) -> list[str]:
        return [
            scores_path(pair, variant.name, benchmark)
            for pair in self.pairs
            for variant in self.variants
            for benchmark in self.benchmarks
        ]

    def prediction_files(self, wildcards=None) -> list[str]:
        """Every evaluation's predictions.json: of the pair `wildcards` names, else of every pair."""
        pairs = [wildcards.pair] if wildcards is not None else self.pairs
        return [
            predictions_path(pair, variant.name, benchmark)
            for pair in pairs
            for variant in self.variants
            for benchmark in self.benchmarks
        ]

    def hardware_files(self) -> list[str]:
        """Every evaluation's record of the machine it ran on (shadowft.versions.Hardware), beside its scores."""
        return [os.path.join(os.path.dirname(path), HARDWARE_FILE) for path in self.score_files()]

    def sample_predictions(self, wildcards) -> list[str]:
        """``variant=`` each variant's predictions.json of one pair and benchmark, in report order: what
        the sample of answers reads."""
        return [
            f"{variant.name}={predictions_path(wildcards.pair, variant.name, wildcards.benchmark)}"
            for variant in self.variants
        ]

    def sample_inputs(self, wildcards) -> list[str]:
        return [item.split("=", 1)[1] for item in self.sample_predictions(wildcards)]

    def sample_files(self) -> list[str]:
        return [
            SAMPLES.format(pair=pair, benchmark=benchmark, ext=ext)
            for pair in self.pairs
            for benchmark in self.benchmarks
            for ext in ("md", "html")
        ]

    def similarity_files(self) -> list[str]:
        return [f"results/{pair}/similarity.csv" for pair in self.pairs]

    def overlap_files(self, pair: str | None = None) -> list[str]:
        """The overlap of every run's updates (of one pair, when given), where the runs tune BASE."""
        if not self.tunes_base():
            return []
        return [f"results/{name}/{run}/overlap.csv" for name in self.pairs if pair in (None, name) for run in self.runs]

    def pair_overlap_files(self, wildcards) -> list[str]:
        return self.overlap_files(wildcards.pair)

    def versions_files(self) -> list[str]:
        return [f"results/versions/{environment}.json" for environment in self.report_environments()]

    def trainer_states(self, wildcards) -> list[str]:
        """``{run}/{role}=`` the trainer's state, for every tuned model of the pair: what the training
        figure reads."""
        return [
            f"{run}/{role}=results/{wildcards.pair}/{run}/train_{role}/model/trainer_state.json"
            for run in self.runs
            for role in ROLES
        ]

    def trained_models(self, wildcards) -> list[str]:
        """Every tuned model (or adapter) folder of the pair, whose trainer state the figure reads."""
        return [f"results/{wildcards.pair}/{run}/train_{role}/model" for run in self.runs for role in ROLES]

    def sweeps_learning_rate(self) -> bool:
        """Whether a sweep setting (stage, tuning, rank) ran more than one learning rate."""
        rates: dict[tuple, set[float]] = {}
        for run in self.runs.values():
            rates.setdefault((run.stage, run.tuning, run.lora_rank), set()).add(run.learning_rate)
        return any(len(values) > 1 for values in rates.values())

    def draws_claim(self) -> bool:
        """Whether the report draws the claim figure: a graft, Instruct and Instruct tuned directly are
        scored, and benchmarks of both roles (task, retention) say where to look."""
        scored = set(self.config["evaluation"]["variants"])
        roles = set(scoring(self.config["evaluation"]).roles.values())
        return {"shadow", "instruct", "instruct_ft"} <= scored and {"task", "retention"} <= roles

    def pair_figures(self, pair: str) -> list[str]:
        """The report's figures of one pair: always scores, similarity and training; alpha where it
        grafts, the claim where `draws_claim`, the overlap where the runs tune BASE, the learning
        rate only where a setting ran several."""
        names = list(FIGURES)
        if self.overlap_files(pair):
            names.append("overlap")
        if VariantKind.SHADOW.value in self.config["evaluation"]["variants"]:
            names.append("alpha")
        if self.draws_claim():
            names.append("claim")
        tuned = any(VariantKind(kind).per_run for kind in self.config["evaluation"]["variants"])
        if tuned and self.sweeps_learning_rate():
            names.append("learning_rate")
        return [f"results/plots/{pair}/{name}.png" for name in names]

    def final_outputs(self) -> list[str]:
        """Everything the report is made of: the tables, the verdict, the sample answers and every pair's figures."""
        figures = [figure for pair in self.pairs for figure in self.pair_figures(pair)]
        return [*REPORT_TABLES, VERDICT_RST, *self.sample_files(), *figures]
