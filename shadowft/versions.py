"""What a report was made with: shadowft's git commit and, per environment that ran, its Python
and the versions of the tools (``TOOLS``) that importlib.metadata reports installed there.

``python -m shadowft.versions --environment NAME --commit COMMIT OUT`` runs in each environment
(rule environment_versions) and writes one ``EnvironmentVersions`` as JSON; the report reads
them back (``EnvironmentVersions.read``) and states them (``versions_sentence``). The commit is
found once, where Snakemake runs (``checkout_commit``), and handed to every environment's record.
Standard library only: it runs in every environment.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from shadowft.io import atomic_write_json

# Distribution name -> the name the report gives it, in the order it lists them.
TOOLS = {
    "llamafactory": "LLaMA-Factory",
    "transformers": "transformers",
    "torch": "torch",
    "peft": "peft",
    "opencompass": "OpenCompass",
    "snakemake": "Snakemake",
}
UNKNOWN = "unknown"


@dataclass(frozen=True)
class EnvironmentVersions:
    """One environment's Python, the shadowft commit it ran, and each tool's version (None: not installed)."""

    environment: str
    python: str
    shadowft: str
    tools: dict[str, str | None]

    @classmethod
    def installed(cls, environment: str, commit: str) -> EnvironmentVersions:
        """The versions of this interpreter's environment."""
        return cls(environment, platform.python_version(), commit, {name: _version(name) for name in TOOLS})

    @classmethod
    def read(cls, path: Path) -> EnvironmentVersions:
        """A record written by ``write``; a file of another shape is an error naming it."""
        text = Path(path).read_text(encoding="utf-8")  # a missing file stays FileNotFoundError, for Snakemake
        try:
            record = cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{path}: not an environment's versions record ({error})") from None
        if set(record.tools) != set(TOOLS):
            raise ValueError(f"{path}: tools are {sorted(record.tools)}, expected {sorted(TOOLS)}")
        return record

    def write(self, path: Path) -> None:
        atomic_write_json(Path(path), asdict(self))

    @property
    def described(self) -> str:
        """``train (Python 3.11.7): LLaMA-Factory 0.9.5, torch 2.14.1``: the tools installed in it."""
        tools = [f"{label} {self.tools[name]}" for name, label in TOOLS.items() if self.tools[name] is not None]
        return f"{self.environment} (Python {self.python}): {', '.join(tools) or 'none of the tools'}"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def checkout_commit(folder: Path) -> str:
    """The git commit checked out in `folder`, with ``-dirty`` when tracked files differ from it;
    ``unknown`` where there is no git or no repository (never an error)."""
    try:
        commit = _git(folder, "rev-parse", "HEAD").stdout.strip()
        changed = _git(folder, "status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return f"{commit}-dirty" if changed else commit


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True, timeout=30)


def versions_sentence(environments: Sequence[EnvironmentVersions]) -> str:
    """The report's statement of its versions: the shadowft commit, then every environment's tools."""
    commits: dict[str, list[str]] = {}
    for record in environments:
        commits.setdefault(record.shadowft, []).append(record.environment)
    if len(commits) == 1:
        made_with = f"shadowft {next(iter(commits))}"
    else:  # environments recorded at different commits: say which is which
        made_with = "shadowft " + ", ".join(f"{commit} ({', '.join(names)})" for commit, names in commits.items())
    return f"Made with {made_with}; environments: " + "; ".join(record.described for record in environments) + "."


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Record this environment's tool versions as JSON.")
    parser.add_argument("--environment", required=True, help="the environment's name (envs/NAME.yaml)")
    parser.add_argument("--commit", required=True, help="shadowft's git commit, as checkout_commit found it")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    EnvironmentVersions.installed(args.environment, args.commit).write(args.out)


if __name__ == "__main__":
    main()
