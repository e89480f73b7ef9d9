"""Every environment file resolves: its pip block, for Python 3.11 on linux x86_64, by uv's resolver
from package metadata alone (nothing is installed and no multi-GB wheel is downloaded), to one CUDA
major version, and, where OpenCompass is, to its numpy<2 and transformers<5.

uv is pinned in envs/core.yaml and runs from the core environment; it asks the package index for
metadata (cached between runs, in uv's own cache). About 15 s with a warm cache, a minute cold.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "envs"))
import build_venvs  # noqa: E402

UV = Path(sys.executable).parent / "uv"
ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))
# A CUDA runtime package's CUDA major: in its name (nvidia-nccl-cu12, cupy-cuda12x, ...-libs-cu13), or,
# for the packages NVIDIA ships unsuffixed since CUDA 13, in its version.
CUDA_IN_NAME = re.compile(r"-cu(\d+)$|^cupy-cuda(\d+)x$")
CUDA_IN_VERSION = {
    "nvidia-cuda-runtime",
    "nvidia-cuda-nvrtc",
    "nvidia-cuda-cupti",
    "nvidia-cublas",
    "nvidia-nvjitlink",
    "cuda-bindings",
    "cuda-python",
}


def resolve(requirements: list[str], what: str) -> dict[str, str]:
    """{package: version} that uv resolves `requirements` to for Python 3.11 on manylinux_2_28 x86_64."""
    if not UV.is_file():
        pytest.fail(
            f"no {UV}: uv is pinned in envs/core.yaml; rebuild the core environment (python3 envs/build_venvs.py core)"
        )
    command = [str(UV), "pip", "compile", "-", "--python-version", "3.11"]
    command += ["--python-platform", "x86_64-manylinux_2_28", "--no-header", "--no-annotate", "--quiet"]
    result = subprocess.run(
        command, input="\n".join(requirements) + "\n", capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{what} does not resolve:\n{result.stderr[-3000:]}")
    pins = [line.split("==", 1) for line in result.stdout.splitlines() if "==" in line and not line.startswith("#")]
    return {name.strip().lower(): version.strip() for name, version in pins}


def cuda_majors(resolved: dict[str, str]) -> dict[int, list[str]]:
    """{CUDA major: [package==version, ...]} of the packages that ship CUDA's runtime libraries."""
    majors: dict[int, list[str]] = {}
    for name, version in sorted(resolved.items()):
        match = CUDA_IN_NAME.search(name)
        major = int(next(group for group in match.groups() if group)) if match else None
        if name in CUDA_IN_VERSION:
            major = int(version.split(".")[0])
        if major is not None:
            majors.setdefault(major, []).append(f"{name}=={version}")
    return majors


@pytest.mark.slow
@pytest.mark.parametrize("env_file", ENV_FILES, ids=[path.stem for path in ENV_FILES])
def test_env_file_resolves_to_one_cuda_major(env_file):
    requirements = build_venvs.pip_requirements(env_file)
    resolved = resolve(requirements, f"{env_file.relative_to(ROOT)}'s pip block")

    for requirement in requirements:
        name, _, pin = requirement.partition("==")
        if pin and not any(mark in pin for mark in ";<>,"):
            assert resolved.get(name.lower()) == pin, (
                f"{env_file.name}: {name} resolved to {resolved.get(name.lower())}"
            )
    majors = cuda_majors(resolved)
    assert len(majors) <= 1, f"{env_file.name} mixes CUDA majors: {majors}"
    if "opencompass" in resolved:
        assert int(resolved["numpy"].split(".")[0]) < 2, f"{env_file.name}: OpenCompass 0.5.4 needs numpy<2"
        assert int(resolved["transformers"].split(".")[0]) < 5, f"{env_file.name}: OpenCompass breaks on transformers 5"


@pytest.mark.slow
def test_an_env_that_cannot_resolve_fails_naming_itself():
    # vLLM 0.33 needs numpy 2 (through opencv-python-headless), OpenCompass 0.5.4 numpy<2.
    with pytest.raises(pytest.fail.Exception, match=r"(?s)vllm-0.33 does not resolve:.*numpy"):
        resolve(["vllm==0.33.0", "opencompass==0.5.4"], "vllm-0.33")


def test_mixed_cuda_majors_are_seen():
    resolved = {"torch": "2.12.1", "nvidia-cublas": "13.1.1.3", "nvidia-cuda-runtime-cu12": "12.9.79"}
    assert cuda_majors(resolved) == {12: ["nvidia-cuda-runtime-cu12==12.9.79"], 13: ["nvidia-cublas==13.1.1.3"]}
