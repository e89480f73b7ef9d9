"""One Hub repository fetched at the commit its revision resolves to: the selected files, verified, with a manifest.

The destination is built in a temporary folder beside it and renamed into place only when
complete. The Hub token is read from an environment variable and never written to a
manifest, a log or an error message.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import huggingface_hub
import requests
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from shadowft.data.selection import Selector
from shadowft.io import atomic_directory, atomic_write_json, sha256_file
from shadowft.engine.layout import MODEL_MANIFEST

# huggingface_hub keeps its per-file download bookkeeping here inside local_dir.
_HF_LOCAL_DIR_STATE = ".cache"


class HubError(RuntimeError):
    """The Hub could not deliver a repository (not found, bad revision, network, corrupt file)."""


@dataclass(frozen=True)
class HubRepository:
    """A Hub repository at a revision (branch, tag or commit), and where its token comes from."""

    repo_id: str
    revision: str
    repo_type: str  # "model" or "dataset"
    endpoint: str | None = None  # default: huggingface_hub's (HF_ENDPOINT)
    token_env: str = "HF_TOKEN"

    def shown_endpoint(self) -> str:
        """The endpoint as manifests and messages show it: without credentials."""
        return _without_credentials(self.endpoint or huggingface_hub.constants.ENDPOINT)


def download_repository(repo: HubRepository, dest: Path, select: Selector) -> dict:
    """Fetch the files ``select(names, label, fetch)`` picks from the repo listing into `dest`; return its manifest.

    The revision is resolved to a commit once, and every file is fetched at that commit, so a
    branch moving during the download cannot mix two versions.
    """
    if not repo.revision:
        raise ValueError(f"{repo.repo_type} {repo.repo_id!r}: a revision (branch, tag or commit) is required")
    token = os.environ.get(repo.token_env) or None
    label = f"{repo.repo_type} {repo.repo_id!r} at revision {repo.revision!r} on {repo.shown_endpoint()}"
    # False, not None: huggingface_hub would otherwise fall back to a token saved by
    # `hf auth login` or to $HF_TOKEN, and the token must come from token_env only.
    auth: str | bool = token or False

    with _hub_errors(label, token, repo.token_env), atomic_directory(dest) as tmp:
        info = HfApi(endpoint=repo.endpoint).repo_info(
            repo.repo_id, revision=repo.revision, repo_type=repo.repo_type, files_metadata=True, token=auth
        )
        commit = info.sha
        if not commit:
            # Without a commit every file would be fetched at a moving branch head.
            raise HubError(f"{label}: the Hub did not resolve the revision to a commit")
        siblings = {sibling.rfilename: sibling for sibling in info.siblings or ()}

        def fetch(name: str) -> Path:
            hf_hub_download(
                repo.repo_id,
                name,
                repo_type=repo.repo_type,
                revision=commit,
                local_dir=tmp,
                endpoint=repo.endpoint,
                token=auth,
            )
            return tmp / name

        selected = select(sorted(siblings), label, fetch)
        for name in selected:
            fetch(name)
        shutil.rmtree(tmp / _HF_LOCAL_DIR_STATE, ignore_errors=True)

        files = describe_files(tmp, selected)
        for entry in files:
            _verify(entry, siblings[entry["path"]], tmp / entry["path"], label)
        manifest = _manifest(repo, commit, files)
        atomic_write_json(tmp / MODEL_MANIFEST, manifest)
    return manifest


def describe_files(root: Path, names: Sequence[str]) -> list[dict]:
    """The manifest's entry of every file: its path under `root`, size and sha256."""
    return [{"path": name, "size": (root / name).stat().st_size, "sha256": sha256_file(root / name)} for name in names]


def timestamp() -> str:
    """A manifest's ``created``: now, in UTC, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _manifest(repo: HubRepository, commit: str, files: list[dict]) -> dict:
    return {
        "kind": repo.repo_type,
        "source": {
            "type": "hub",
            "repo_id": repo.repo_id,
            "repo_type": repo.repo_type,
            "revision": repo.revision,
            "commit": commit,
            "endpoint": repo.shown_endpoint(),
        },
        "files": files,
        "created": timestamp(),
        "huggingface_hub": huggingface_hub.__version__,
    }


def _verify(entry: dict, sibling: huggingface_hub.hf_api.RepoSibling, path: Path, label: str) -> None:
    """Compare a downloaded file with the hashes the Hub's listing promised."""
    if sibling.lfs is not None:
        expected, actual = sibling.lfs.sha256, entry["sha256"]
    elif sibling.blob_id is not None:
        # Non-LFS files are identified by their git blob id: sha1 over a "blob <size>\0" header and the bytes.
        expected = sibling.blob_id
        actual = hashlib.sha1(b"blob %d\0" % entry["size"] + path.read_bytes()).hexdigest()
    else:
        return
    if expected != actual:
        raise HubError(f"{label}: {entry['path']} is corrupt: hash {actual}, the Hub lists {expected}")


@contextlib.contextmanager
def _hub_errors(label: str, token: str | None, token_env: str) -> Iterator[None]:
    """Turn huggingface_hub and network failures into a HubError naming the repository.

    Messages are rebuilt without the original exception chained, and with the token
    masked should a server or proxy ever echo it back.
    """

    def describe(error: BaseException) -> str:
        # huggingface_hub wraps some informative HTTP errors (a 403 on a file) in a
        # generic "check your connection" one: show the first HTTP error it chains.
        detail = error.__cause__
        while detail is not None and not isinstance(detail, HfHubHTTPError):
            detail = detail.__cause__
        text = str(error) if detail is None else f"{error} ({detail})"
        return text.replace(token, "***") if token else text

    try:
        yield
    except GatedRepoError:
        raise HubError(f"{label}: gated repository; accept its terms on the Hub and set ${token_env}") from None
    except RepositoryNotFoundError:
        hint = f"the token in ${token_env} cannot read it" if token else f"${token_env} is not set"
        raise HubError(f"{label}: repository not found (or private/gated and {hint})") from None
    except RevisionNotFoundError:
        raise HubError(f"{label}: revision not found; check the branch, tag or commit") from None
    except HfHubHTTPError as error:
        raise HubError(f"{label}: {describe(error)}") from None
    except (requests.RequestException, OSError) as error:
        raise HubError(f"{label}: download failed: {type(error).__name__}: {describe(error)}") from None


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
