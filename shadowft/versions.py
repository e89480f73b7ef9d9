"""What a report was made with: shadowft's git commit, per environment that ran its Python and the
versions of the tools (``TOOLS``) that importlib.metadata reports installed there, and the machine
(``Hardware``: CPU model and vector extensions, threads, GPUs), since unsaturated scores move between
CPUs.

``python -m shadowft.versions --environment NAME --commit COMMIT OUT`` runs in each environment
(rule environment_versions, a local rule: its machine is the one Snakemake runs on) and writes one
``EnvironmentVersions`` as JSON; the report reads them back (``EnvironmentVersions.read``) and
states them (``versions_sentence``). Each evaluation job records its own machine beside its scores
(``Hardware.here``, ``hardware_sentence``). The commit is found once, where Snakemake runs
(``checkout_commit``), and handed to every environment's record. Standard library only: it runs in
every environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
from collections import Counter
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
HARDWARE_FILE = "hardware.json"
_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Hardware:
    """The machine a process ran on, as far as it can tell without privileges: the CPU model and
    whether it has AVX2 and AVX-512 (None: not known, outside Linux), the logical CPUs of the
    machine and those this process may use, the thread variables the math libraries read, and the
    NVIDIA GPUs nvidia-smi lists (None: no nvidia-smi to ask)."""

    cpu: str
    machine: str
    avx2: bool | None
    avx512: bool | None
    logical_cpus: int | None
    usable_cpus: int | None
    omp_num_threads: str | None
    cuda_visible_devices: str | None
    gpus: list[str] | None

    @classmethod
    def here(cls) -> Hardware:
        model, flags = _cpu_model_and_flags()
        return cls(
            cpu=model or platform.processor() or UNKNOWN,
            machine=platform.machine() or UNKNOWN,
            avx2=None if flags is None else "avx2" in flags,
            avx512=None if flags is None else "avx512f" in flags,
            logical_cpus=os.cpu_count(),
            usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            gpus=_nvidia_gpus(),
        )

    @classmethod
    def from_dict(cls, value: dict) -> Hardware:
        return cls(**value)

    @classmethod
    def read(cls, path: Path) -> Hardware:
        """A record written by ``write``; a file of another shape is an error naming it."""
        text = Path(path).read_text(encoding="utf-8")
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{path}: not a hardware record ({error})") from None

    def write(self, path: Path) -> None:
        atomic_write_json(Path(path), asdict(self))

    @property
    def described(self) -> str:
        """``Intel Xeon ... (x86_64; AVX2 yes, AVX-512 no), 2 of 4 CPUs usable, OMP_NUM_THREADS unset, no GPU``."""

        def said(flag: bool | None) -> str:
            return UNKNOWN if flag is None else ("yes" if flag else "no")

        cpus = (
            f"{self.usable_cpus} of {self.logical_cpus} CPUs usable"
            if self.usable_cpus
            else f"{self.logical_cpus} CPUs"
        )
        if self.gpus is None:
            gpus = "no NVIDIA driver (nvidia-smi absent)"
        elif self.gpus:
            counted = Counter(self.gpus)
            gpus = ", ".join(f"{count} x {name}" for name, count in counted.items())
            if self.cuda_visible_devices is not None:
                gpus += f" (CUDA_VISIBLE_DEVICES={self.cuda_visible_devices or 'empty'})"
        else:
            gpus = "no GPU"
        return (
            f"{self.cpu} ({self.machine}; AVX2 {said(self.avx2)}, AVX-512 {said(self.avx512)}), {cpus}, "
            f"OMP_NUM_THREADS {self.omp_num_threads or 'unset'}, {gpus}"
        )


def _cpu_model_and_flags() -> tuple[str | None, set[str] | None]:
    """The first CPU's model name and flags from /proc/cpuinfo (Linux), else (None, None)."""
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, None
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags") or fields.get("Features")  # x86, ARM
    return fields.get("model name") or fields.get("Model"), None if flags is None else set(flags.split())


def _nvidia_gpus() -> list[str] | None:
    """The name of every GPU nvidia-smi lists (all of the machine's, whatever the job may use), or None."""
    command = shutil.which("nvidia-smi")
    if command is None:
        return None
    try:
        result = subprocess.run(
            [command, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:  # no driver, or no device: nvidia-smi says so and fails
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def hardware_sentence(machines: Sequence[Hardware], what: str) -> str:
    """`what` (``The evaluations ran on``), then each distinct machine and, where they differ, how many."""
    counted = Counter(machine.described for machine in machines)
    if len(counted) == 1:
        return f"{what} {next(iter(counted))}."
    return (
        f"{what} {len(counted)} kinds of machine: "
        + "; ".join(f"{described} ({count} of {len(machines)})" for described, count in counted.items())
        + "."
    )


@dataclass(frozen=True)
class EnvironmentVersions:
    """One environment's Python, the shadowft commit it ran, each tool's version (None: not
    installed), and the machine the record was made on."""

    environment: str
    python: str
    shadowft: str
    tools: dict[str, str | None]
    hardware: Hardware

    @classmethod
    def installed(cls, environment: str, commit: str) -> EnvironmentVersions:
        """The versions of this interpreter's environment, on this machine."""
        tools = {name: _version(name) for name in TOOLS}
        return cls(environment, platform.python_version(), commit, tools, Hardware.here())

    @classmethod
    def read(cls, path: Path) -> EnvironmentVersions:
        """A record written by ``write``; a file of another shape is an error naming it."""
        text = Path(path).read_text(encoding="utf-8")  # a missing file stays FileNotFoundError, for Snakemake
        try:
            values = json.loads(text)
            record = cls(**{**values, "hardware": Hardware.from_dict(values["hardware"])})
        except (json.JSONDecodeError, TypeError, KeyError) as error:
            raise ValueError(f"{path}: not an environment's versions record ({error!r})") from None
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
    sentence = f"Made with {made_with}; environments: " + "; ".join(record.described for record in environments) + "."
    # Recorded by a local rule: the machine Snakemake ran on, which need not be the jobs'.
    return (
        sentence
        + " "
        + hardware_sentence(
            [record.hardware for record in environments], "The versions were recorded where Snakemake ran, on"
        )
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Record this environment's tool versions as JSON.")
    parser.add_argument("--environment", required=True, help="the environment's name (envs/NAME.yaml)")
    parser.add_argument("--commit", required=True, help="shadowft's git commit, as checkout_commit found it")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    EnvironmentVersions.installed(args.environment, args.commit).write(args.out)


if __name__ == "__main__":
    main()
