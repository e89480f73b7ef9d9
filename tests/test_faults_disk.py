"""A graft whose output cannot be written, measured on real file systems: a full disk (a tmpfs
smaller than the model) and a read-only folder. Each ends in one clear line naming the problem,
leaves no output a rerun would trust, and leaves the inputs as they were."""

import hashlib
import subprocess
from contextlib import contextmanager

import pytest
from delta_fixtures import llama  # noqa: F401

from shadowft.cli import main


def digests(folder):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@contextmanager
def tmpfs(mountpoint, size, *, read_only=False):
    """A small tmpfs at `mountpoint` (skips where this process may not mount)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], check=False)
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def graft(llama, out, capsys):
    inputs = {"instruct": digests(llama.instruct), "base": digests(llama.base), "tuned": digests(llama.tuned)}
    code = main(
        [
            "graft",
            *("--instruct", str(llama.instruct), "--base", str(llama.base), "--tuned", str(llama.tuned)),
            *("--out", str(out), "--no-progress"),
        ]
    )
    assert {"instruct": digests(llama.instruct), "base": digests(llama.base), "tuned": digests(llama.tuned)} == inputs
    return code, capsys.readouterr().err


def test_a_full_disk_is_one_clear_error_and_leaves_nothing(llama, tmp_path, capsys):
    model_bytes = sum(path.stat().st_size for path in llama.instruct.glob("*.safetensors"))
    with tmpfs(tmp_path / "small", f"{model_bytes // 2}") as disk:
        code, err = graft(llama, disk / "out", capsys)
        assert code == 1
        assert err.startswith("shadowft graft: error:") and "No space left on device" in err, err
        assert "Traceback" not in err
        assert list(disk.iterdir()) == [], "no output and no temporary left behind"


def test_a_read_only_folder_is_one_clear_error(llama, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "16m", read_only=True) as disk:
        code, err = graft(llama, disk / "out", capsys)
        assert code == 1
        assert err.startswith("shadowft graft: error:") and "Read-only file system" in err, err
        assert str(disk) in err
        assert list(disk.iterdir()) == []
