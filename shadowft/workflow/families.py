"""Model families: one YAML per base/instruct pair of a published family at one size.

A family file (``config/families/<name>.yaml``, checked against
``config/schema/family.schema.yaml``) holds the facts the workflow needs to run Shadow-FT on
the pair: the hub ids and revisions, LLaMA-Factory's template, the parameter count that
sizes jobs before the download, and what the family needs of LLaMA-Factory. An experiment
chooses families with ``families: [<name>, ...]``; each becomes a pair ``<name>`` with
models ``<name>-base`` and ``<name>-instruct`` (``expand_families``). ``family_overrides``
changes one family for one experiment without copying anything: its hyper-parameters, its
template, a pinned revision, or a local copy of its weights.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from shadowft.workflow.yamlfile import YamlFileError, load_mapping

ROOT = Path(__file__).resolve().parents[2]
FAMILIES_DIR = ROOT / "config" / "families"
FAMILY_SCHEMA = ROOT / "config" / "schema" / "family.schema.yaml"
ROLES = ("base", "instruct")
TUNING_SECTIONS = ("common", "lora", "full")


class FamilyError(ValueError):
    """An unknown or invalid family, or an override that does not fit it; the message names it."""


@dataclass(frozen=True)
class HubModel:
    repo: str
    revision: str


@dataclass(frozen=True)
class Family:
    """One family file, validated."""

    name: str
    description: str
    architecture: str
    base: HubModel
    instruct: HubModel
    template: str
    chat_template_source: str
    parameters: int
    gated: bool
    trust_remote_code: bool = False
    context_length: int | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def model(self, role: str) -> HubModel:
        return {"base": self.base, "instruct": self.instruct}[role]

    def model_name(self, role: str) -> str:
        """The experiment's name of one of the family's models: `<family>-base`, `<family>-instruct`."""
        return f"{self.name}-{role}"


def shipped_families(directory: Path = FAMILIES_DIR) -> list[str]:
    """The names of the family files in `directory`."""
    return sorted(path.stem for path in Path(directory).glob("*.yaml"))


def load_family(name: str, directory: Path = FAMILIES_DIR) -> Family:
    """The family `name`, read from `directory` and validated; an unknown name lists the shipped ones."""
    directory = Path(directory)
    path = directory / f"{name}.yaml"
    if not path.is_file():
        shipped = shipped_families(directory)
        close = difflib.get_close_matches(name, shipped, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FamilyError(f"families: unknown family {name!r}{hint}; shipped families: {', '.join(shipped)}")
    try:
        data = load_mapping(path, "family file")
    except YamlFileError as error:
        raise FamilyError(str(error)) from None
    schema = yaml.safe_load(FAMILY_SCHEMA.read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda error: error.json_path)
    if errors:
        lines = "\n".join(f"  {error.json_path}: {error.message}" for error in errors)
        raise FamilyError(f"family file {path} is invalid:\n{lines}")
    return Family(
        name=name,
        description=data["description"],
        architecture=data["architecture"],
        base=HubModel(**data["base"]),
        instruct=HubModel(**data["instruct"]),
        template=data["template"],
        chat_template_source=data["chat_template_source"],
        parameters=data["parameters"],
        gated=data["gated"],
        trust_remote_code=data.get("trust_remote_code", False),
        context_length=data.get("context_length"),
        chat_template_kwargs=dict(data.get("chat_template_kwargs", {})),
        hyperparameters=copy.deepcopy(data.get("hyperparameters", {})),
        notes=tuple(data.get("notes", ())),
    )


def family_model(family: Family, role: str, override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `models` entry of one of the family's models: the hub id, unless the override gives a local copy."""
    override = dict(override or {})
    if override.get("source") == "local":
        return {"source": "local", "path": override["path"], "trust_remote_code": family.trust_remote_code}
    model = family.model(role)
    return {
        "source": "hub",
        "repo": model.repo,
        "revision": override.get("revision", model.revision),
        "trust_remote_code": family.trust_remote_code,
    }


def family_pair(family: Family, override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `pairs` entry of a family: its models, template, declared size and hyper-parameters."""
    override = dict(override or {})
    hyperparameters = lay_over(family.hyperparameters, override.get("hyperparameters", {}))
    pair = {
        "base": family.model_name("base"),
        "instruct": family.model_name("instruct"),
        "template": override.get("template", family.template),
        "parameters": family.parameters,
    }
    if hyperparameters:
        pair["hyperparameters"] = hyperparameters
    if family.chat_template_kwargs:
        pair["chat_template_kwargs"] = dict(family.chat_template_kwargs)
    return pair


def lay_over(under: Mapping[str, Mapping[str, Any]], over: Mapping[str, Mapping[str, Any]]) -> dict:
    """Hyper-parameter sections (common, lora, full) of `over` laid key by key over `under`'s."""
    merged = {section: dict(values) for section, values in under.items()}
    for section, values in over.items():
        merged.setdefault(section, {}).update(values)
    return {section: values for section, values in merged.items() if values}


def expand_families(config: dict, directory: Path = FAMILIES_DIR) -> None:
    """Add every chosen family's models and pair to `config` (in place), with its overrides."""
    chosen = config.get("families", [])
    overrides = config.get("family_overrides", {})
    for name in overrides:
        if name not in chosen:
            close = difflib.get_close_matches(name, chosen, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise FamilyError(
                f"family_overrides.{name}: {name!r} is not in families ({', '.join(chosen) or 'none chosen'}){hint}"
            )
    for name in chosen:
        family = load_family(name, directory)
        override = overrides.get(name, {})
        for role in ROLES:
            model_name = family.model_name(role)
            if model_name in config["models"]:
                raise FamilyError(f"families: {name!r} makes model {model_name!r}, which models already defines")
            config["models"][model_name] = family_model(family, role, override.get(role))
        if name in config["pairs"]:
            raise FamilyError(f"families: {name!r} makes pair {name!r}, which pairs already defines")
        config["pairs"][name] = family_pair(family, override)
