"""Build one virtualenv per envs/*.yaml from the pip pins inside that same file.

Conda cannot run on every machine (no binary, no channels), so local runs and CI use
virtualenvs under .venvs/<env>/ built from the `pip:` block of each conda env file:
one list of versions for both worlds. A venv is rebuilt only when its env file changed
(its sha256 is stamped inside the venv once the install succeeded).

Standard library only: this runs before any environment exists.

    python3 envs/build_venvs.py            # what the workflow's CPU rules need: core, train, eval
    python3 envs/build_venvs.py core eval  # just these
    python3 envs/build_venvs.py vllm       # a GPU backend's (evaluation.backend), only when named
"""

import hashlib
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVS = ROOT / "envs"
VENVS = ROOT / ".venvs"
STAMP = ".shadowft-env-sha256"
# Built when no name is given: the rules of the default backend (hf). The GPU backends'
# environments (vllm, lmdeploy: multi-GB CUDA stacks) are built only when named.
DEFAULT_ENVS = ("core", "train", "eval")


def pip_requirements(env_file: Path) -> list[str]:
    """The requirement lines of the `- pip:` block of a conda environment file."""
    requirements, pip_indent = [], None
    for line in env_file.read_text().splitlines():
        content = line.split("#", 1)[0].rstrip()
        if not content.strip():
            continue
        indent = len(content) - len(content.lstrip())
        if content.strip() == "- pip:":
            pip_indent = indent
        elif pip_indent is not None:
            if indent <= pip_indent:
                break
            item = content.strip()
            if not item.startswith("- "):
                sys.exit(f"{env_file}: unexpected line in the pip block: {line!r}")
            requirements.append(item[2:].strip().strip("'\""))
    if not requirements:
        sys.exit(f"{env_file}: no '- pip:' block with requirements")
    return requirements


def build(name: str) -> None:
    env_file = ENVS / f"{name}.yaml"
    if not env_file.is_file():
        sys.exit(f"no environment file {env_file}")
    digest = hashlib.sha256(env_file.read_bytes()).hexdigest()
    target = VENVS / name
    stamp = target / STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest:
        print(f"[build_venvs] {target} is up to date with {env_file.name}", flush=True)
        return
    print(f"[build_venvs] building {target} from {env_file.name}", flush=True)
    if target.exists():
        shutil.rmtree(target)
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    python = target / "bin" / "python"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(pip_requirements(env_file)) + "\n")
    subprocess.run([python, "-m", "pip", "install", "--upgrade", "pip"], check=True)
    subprocess.run([python, "-m", "pip", "install", "-r", handle.name], check=True)
    if name == "core":
        # The package itself: editable, so the checkout's code is what runs.
        subprocess.run([python, "-m", "pip", "install", "--no-deps", "-e", str(ROOT)], check=True)
    stamp.write_text(digest + "\n")


def main(names: list[str]) -> None:
    for name in names or DEFAULT_ENVS:
        build(name)


if __name__ == "__main__":
    main(sys.argv[1:])
