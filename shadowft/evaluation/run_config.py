"""The whole OpenCompass run configuration as plain data: the model entry and a benchmark's dataset entries.

OpenCompass's config loader reads ``.json``, with classes named by their import paths, so
the configuration is written with ``json.dump`` and can be read in the run folder. The top
level is standard library only; a standard benchmark's config is read with OpenCompass's
own loader (mmengine), imported where it is needed (the eval environment).
"""

from __future__ import annotations

import json
from pathlib import Path

from shadowft.evaluation.graders import SEEDED_EVALUATORS
from shadowft.evaluation.models import ModelOptions, model_config
from shadowft.evaluation.spec import CUSTOM_METRICS, PAPER_MAX_OUT_LEN, BenchmarkSpec, check_qa_file

# OpenCompass's default chat meta-template ends every user turn with "\n" (it merges an
# empty SYSTEM turn into the HUMAN one). A custom benchmark must ask exactly its prompt,
# the text the model was fine-tuned on, so it gets a template without that turn.
EXACT_PROMPT_META_TEMPLATE = {
    "round": [
        {"role": "HUMAN", "api_role": "HUMAN"},
        {"role": "BOT", "api_role": "BOT", "generate": True},
    ]
}


def custom_datasets(spec: BenchmarkSpec) -> list[dict]:
    """The OpenCompass dataset entry of a custom question/answer benchmark."""
    path = Path(spec.path).resolve()
    check_qa_file(path)
    evaluator, _ = CUSTOM_METRICS[spec.metric]
    return [
        {
            "type": "opencompass.datasets.CustomDataset",
            "abbr": spec.name,
            "path": str(path),
            "reader_cfg": {"input_columns": ["question"], "output_column": "answer"},
            "infer_cfg": {
                "prompt_template": {
                    "type": "opencompass.openicl.icl_prompt_template.PromptTemplate",
                    "template": {"round": [{"role": "HUMAN", "prompt": spec.prompt}]},
                },
                "retriever": {"type": "opencompass.openicl.icl_retriever.ZeroRetriever"},
                "inferencer": {
                    "type": "opencompass.openicl.icl_inferencer.GenInferencer",
                    "max_out_len": spec.max_out_len,
                },
            },
            "eval_cfg": {
                "evaluator": {"type": evaluator},
                "pred_postprocessor": {"type": "builtins.str.strip"},
                "dataset_postprocessor": {"type": "builtins.str.strip"},
            },
        }
    ]


def opencompass_datasets(spec: BenchmarkSpec) -> list[dict]:
    """The dataset entries of a standard OpenCompass config (e.g. gsm8k_gen), as plain data.

    Every dataset's max_out_len is written out: ``spec.max_out_len`` when given, else the
    config's own, else the paper's 4096 (what OpenCompass would take from the model entry, as in
    the authors' runs). An evaluator that grades by chance is replaced by its seeded factory
    (shadowft.evaluation.graders). Needs OpenCompass (the eval environment). mmengine writes the
    config's classes and functions as their import paths, as OpenCompass does when it saves a
    run's config.
    """
    from mmengine.config import Config

    config = Config.fromfile(str(_find_dataset_config(spec.config)))
    variable = spec.variable
    if variable is not None and variable not in config:
        raise ValueError(f"benchmark.variable: {spec.config} has no {variable}")
    keys = [variable] if variable else [key for key in config if key.endswith("_datasets")]
    datasets = [dataset.to_dict() for key in keys for dataset in config[key]]
    if not datasets:
        raise ValueError(f"benchmark.config: {spec.config} defines no *_datasets")
    try:
        plain = json.loads(json.dumps(datasets))
    except TypeError as error:
        raise ValueError(f"benchmark.config: {spec.config} holds a value that is not plain data ({error})") from None
    for dataset in plain:
        inferencer = dataset["infer_cfg"]["inferencer"]
        if spec.max_out_len is None:
            inferencer.setdefault("max_out_len", PAPER_MAX_OUT_LEN)
        else:
            inferencer["max_out_len"] = spec.max_out_len
        evaluator = dataset["eval_cfg"]["evaluator"]
        module, _, name = str(evaluator["type"]).rpartition(".")
        if module.startswith("opencompass.") and name in SEEDED_EVALUATORS:
            evaluator["type"] = SEEDED_EVALUATORS[name]
    return plain


_DATASET_BUILDERS = {"custom": custom_datasets, "opencompass": opencompass_datasets}


def run_config(model_dir: Path, spec: BenchmarkSpec, options: ModelOptions | None = None) -> dict:
    """The whole OpenCompass run configuration (``models`` and ``datasets``), JSON-serialisable."""
    # Standard benchmarks keep OpenCompass's own prompt format, as the paper's numbers do.
    meta_template = EXACT_PROMPT_META_TEMPLATE if spec.kind == "custom" else None
    model = model_config(model_dir, options, meta_template=meta_template)
    datasets = _DATASET_BUILDERS[spec.kind](spec)
    abbrs = [dataset["abbr"] for dataset in datasets]
    if len(set(abbrs)) != len(abbrs):
        raise ValueError(f"benchmark {spec.name}: dataset abbreviations repeat: {abbrs}")
    return {"models": [model], "datasets": datasets}


def _find_dataset_config(name: str) -> Path:
    """The file of a dataset config: a module path (found without importing it) or a file name under
    OpenCompass's configs/datasets/."""
    import importlib.util

    import opencompass

    if "." in name:
        top, *rest = name.split(".")
        spec = importlib.util.find_spec(top)
        path = Path(spec.submodule_search_locations[0], *rest[:-1], f"{rest[-1]}.py") if spec and rest else None
        if path is None or not path.is_file():
            raise ValueError(f"benchmark.config: no config module {name} (looked for {path})")
        return path
    root = Path(opencompass.__file__).parent / "configs" / "datasets"
    matches = sorted(root.rglob(f"{name}.py"))
    if len(matches) != 1:
        found = ", ".join(str(match.relative_to(root)) for match in matches) or "none"
        raise ValueError(f"benchmark.config: {name} must match exactly one file under {root} (found {found})")
    return matches[0]
