"""The experiment configuration: validation against the JSON Schema, and what follows from it.

Snakemake's own `validate` fills defaults by calling `setdefault` on whatever it meets, so
a wrong type (say `graft: 5`) crashes it with an AttributeError instead of a message. This
validator fills defaults only into objects and names the offending key in every error.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Collection
from pathlib import Path

import jsonschema
import yaml

from shadowft.data.datasets import DATASET_INFO
from shadowft.evaluation.benchmarks import expand_evaluation
from shadowft.training.arguments import MANAGED_KEYS
from shadowft.workflow.families import FAMILIES_DIR, FamilyError, expand_families
from shadowft.workflow.sweep import runs

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def fill_defaults_then_validate(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(key, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": fill_defaults_then_validate})


def key_path(path) -> str:
    """`training.tunings[0]` from a jsonschema error path."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def validate_config(
    config: dict,
    schema_path: Path = SCHEMA,
    families_dir: Path = FAMILIES_DIR,
    *,
    demo_datasets: Collection[str] | None = None,
    source: str | None = None,
) -> dict:
    """Validate `config` in place (filling the schema's defaults), add the chosen families'
    models and pairs (shadowft.workflow.families), and check its cross-references and what the
    plan can know of the disk: local model folders and data files exist.
    `demo_datasets` are the names a dataset of ``source: demo`` may have: those the demo builds
    (shadowft.demo.DATASETS, which the Snakefile passes); None leaves them unchecked. `source`
    names the config's files in the errors."""
    try:
        return _validate(config, schema_path, families_dir, demo_datasets)
    except ConfigError as error:
        if source is None:
            raise
        raise ConfigError(
            str(error).replace("invalid configuration:", f"invalid configuration ({source}):", 1)
        ) from None


def _validate(config: dict, schema_path: Path, families_dir: Path, demo_datasets: Collection[str] | None) -> dict:
    schema = yaml.safe_load(Path(schema_path).read_text())
    _check_schema(config, schema)
    if config["families"]:
        try:
            expand_families(config, families_dir)
        except FamilyError as error:
            raise ConfigError(f"invalid configuration:\n  {error}") from None
        _check_schema(config, schema)  # the families' entries gain their defaults and are checked too
    _check_finite(config)
    try:
        expand_evaluation(config["evaluation"])
    except ValueError as error:
        raise ConfigError(f"invalid configuration:\n  {error}") from None
    _check_references(config, demo_datasets)
    return config


def _check_schema(config: dict, schema: dict) -> None:
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda error: list(map(str, error.absolute_path)))
    if _read_text_as_typed(config, errors):
        errors = sorted(validator.iter_errors(config), key=lambda error: list(map(str, error.absolute_path)))
    if errors:
        lines = [f"  {key_path(error.absolute_path)}: {_message(_deepest(error))}" for error in errors]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))


def _non_finite_numbers(value, path=()):
    """The key paths of every NaN or infinite number in `value` (YAML's .nan, .inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite_numbers(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite_numbers(item, (*path, index))


def _check_finite(config: dict) -> None:
    """JSON Schema's minimum and maximum let NaN through (every comparison with it is false)."""
    problems = [f"  {key_path(path)}: not a finite number" for path in _non_finite_numbers(config)]
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))


def _deepest(error):
    """The most specific message of a compound (allOf/if-then) error."""
    while error.context:
        error = max(error.context, key=lambda sub: len(sub.absolute_path))
    return error


def _message(error) -> str:
    if "propertyNames" in error.schema_path and error.validator == "enum":
        return f"unknown key {error.instance!r} (allowed here: {', '.join(error.validator_value)})"
    if error.validator == "not" and list(error.validator_value) == ["required"]:
        return f"give at most one of {', '.join(error.validator_value['required'])}"
    return error.message


def _read_text_as_typed(config: dict, errors) -> bool:
    """Replace text where the schema wants a number or a boolean, when the text is one.

    `snakemake --config key={...}` hands every nested value over as text (it parses them with
    YAML's BaseLoader), and PyYAML reads 1e-4 (no decimal point) as text too. Returns whether
    anything was replaced; what cannot be read stays an error.
    """
    replaced = False
    for error in errors:
        if error.validator != "type" or not isinstance(error.instance, str) or not error.absolute_path:
            continue
        value = _typed(error.instance, error.validator_value)
        if value is not None:
            *parents, key = error.absolute_path
            container = config
            for parent in parents:
                container = container[parent]
            container[key] = value
            replaced = True
    return replaced


def _typed(text: str, wanted):
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    if "boolean" in wanted and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "integer" in wanted and re.fullmatch(r"[+-]?\d+", text.strip()):
        return int(text)
    if "number" in wanted:
        try:
            return float(text)
        except ValueError:
            return None
    return None


def _check_references(config: dict, demo_datasets: Collection[str] | None) -> None:
    problems = []
    models, datasets = config["models"], config["datasets"]
    if not config["pairs"]:
        problems.append("pairs: no pair to run; define pairs or choose families (e.g. families: [qwen3-4b])")
    for pair, spec in config["pairs"].items():
        for role in ("base", "instruct"):
            if spec[role] not in models:
                problems.append(f"pairs.{pair}.{role}: '{spec[role]}' is not a key of models")
        if spec["base"] == spec["instruct"]:
            problems.append(f"pairs.{pair}: base and instruct are the same model '{spec['base']}'")
    for name, spec in datasets.items():
        if spec["source"] == "demo" and demo_datasets is not None and name not in demo_datasets:
            built = ", ".join(sorted(demo_datasets)) or "none"
            problems.append(f"datasets.{name}: the demo builds {built}; a dataset with source demo is one of them")
    if config["training"]["dataset"] not in datasets:
        problems.append(f"training.dataset: '{config['training']['dataset']}' is not a key of datasets")
    if not config["evaluation"]["benchmarks"]:
        problems.append("evaluation: no benchmarks (name some in benchmarks, or groups)")
    problems += _sweep_problems(config)
    problems += _local_path_problems(config)
    problems += _dataset_folder_problems(datasets)
    for name, benchmark in config["evaluation"]["benchmarks"].items():
        if benchmark["kind"] == "custom" and benchmark["dataset"] not in datasets:
            problems.append(f"evaluation.benchmarks.{name}.dataset: '{benchmark['dataset']}' is not a key of datasets")
    demo_roles = sorted(spec["role"] for spec in models.values() if spec["source"] == "demo")
    if len(demo_roles) != len(set(demo_roles)):
        problems.append("models: the demo builds one base and one instruct model; two models name the same role")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {problem}" for problem in problems))


def _dataset_folder_problems(datasets: dict) -> list[str]:
    """A local dataset folder is read by LLaMA-Factory as it is: it must exist and register the
    dataset, under its key in `datasets`, in its dataset_info.json (else training fails, not the plan).
    Relative paths are relative to the working directory, as Snakemake reads them."""
    problems = []
    for name, spec in datasets.items():
        if spec["source"] != "local" or "path" not in spec:
            continue
        folder, where = Path(spec["path"]), f"datasets.{name}.path"
        info = folder / DATASET_INFO
        if not folder.is_dir():
            problems.append(f"{where}: {folder} is not a folder; give a LLaMA-Factory dataset folder, or file: FILE")
        elif not info.is_file():
            problems.append(
                f"{where}: {folder} has no {DATASET_INFO}, which LLaMA-Factory needs to find the data; "
                f"write one registering {name!r}, or give file: (parquet, json or jsonl) and the workflow registers it"
            )
        else:
            try:
                registered = json.loads(info.read_text(encoding="utf-8"))
            except ValueError as error:
                problems.append(f"{where}: {info} is not valid JSON ({error}); fix it")
                continue
            if not isinstance(registered, dict) or name not in registered:
                names = ", ".join(sorted(registered)) if isinstance(registered, dict) else "nothing"
                problems.append(
                    f"{where}: {info} does not register {name!r} (it registers: {names}); "
                    "a dataset's key in datasets is its name there"
                )
    return problems


# Hyper-parameters that name a run's folder (shadowft.workflow.sweep): set by the sweep lists, never overridden.
SWEPT_HYPERPARAMETERS = {"learning_rate": "training.learning_rates", "lora_rank": "training.lora_ranks"}


def _local_path_problems(config: dict) -> list[str]:
    """A local model's folder and a local dataset's file must be there when the plan is made
    (relative paths from the working directory, as Snakemake reads them)."""
    problems = []
    for name, spec in config["models"].items():
        if spec["source"] == "local" and not Path(spec["path"]).is_dir():
            problems.append(f"models.{name}.path: {spec['path']} is not a folder; give a Hugging Face model folder")
    for name, spec in config["datasets"].items():
        if spec["source"] == "local" and "file" in spec and not Path(spec["file"]).is_file():
            problems.append(f"datasets.{name}.file: {spec['file']} is not a file")
    return problems


def _sweep_problems(config: dict) -> list[str]:
    """The sweep's lists: DPO's data, no swept value set twice, one folder per run."""
    training, problems = config["training"], []
    if "dpo" in training["stages"]:
        preference = training.get("preference_dataset")
        if preference is None:
            problems.append("training.preference_dataset: stages holds dpo, which needs a preference dataset")
        elif preference not in config["datasets"]:
            problems.append(f"training.preference_dataset: '{preference}' is not a key of datasets")
    sections = [("training.hyperparameters", training["hyperparameters"])]
    sections += [(f"pairs.{pair}.hyperparameters", spec["hyperparameters"]) for pair, spec in config["pairs"].items()]
    for where, hyperparameters in sections:
        for group, overrides in hyperparameters.items():
            for key, home in SWEPT_HYPERPARAMETERS.items():
                if key in overrides:
                    problems.append(f"{where}.{group}.{key}: set it in {home} (it names the run's folder)")
            for key in sorted(MANAGED_KEYS.keys() & overrides.keys()):
                problems.append(f"{where}.{group}.{key}: {MANAGED_KEYS[key]}, not by a hyper-parameter")
    names = [run.name for run in runs(config)]
    if len(names) != len(set(names)):
        problems.append("training: two runs of the sweep would share a folder")
    return problems
