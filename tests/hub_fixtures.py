"""A small stand-in for the Hugging Face Hub, served over real HTTP on 127.0.0.1.

It implements the part of the Hub protocol that huggingface_hub's own client
uses to download a repository (checked against huggingface_hub 0.36):

- ``GET /api/{models,datasets}/{repo_id}/revision/{rev}``: repo info with the
  resolved commit ``sha`` and ``siblings`` (size, blob id, LFS sha256);
- ``HEAD /[datasets/]{repo_id}/resolve/{rev}/{filename}``: file metadata in the
  headers the client reads (``X-Repo-Commit``, ``ETag``, ``Content-Length``);
  LFS files answer like the Hub does, with a redirect to a content-addressed
  CDN URL and ``X-Linked-Etag`` / ``X-Linked-Size``;
- ``GET`` of the same URLs (and of the CDN URL) returns the bytes;
- the Hub's error headers (``X-Error-Code: RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``), which the client turns into its typed exceptions.

So the code under test runs unmodified against a server whose content and
failures the tests control.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.model", "*.parquet")


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    authorization: str | None


@dataclass
class _Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> files


def _is_lfs(filename: str) -> bool:
    return any(fnmatch.fnmatch(filename, pattern) for pattern in LFS_PATTERNS)


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub:
    """Serve repositories from memory; use as a context manager.

    ``truncate`` names files whose download is cut off halfway through (the
    server announces the full length, sends half and closes the connection),
    the way a dropped connection or a dying server looks to the client.
    ``tamper`` maps file names to bytes served instead of the committed ones (same
    length, so only a hash check can tell). ``forbid`` names files answered with
    403 and an error message that echoes the request's Authorization header, as a
    careless proxy might.
    """

    def __init__(self) -> None:
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._blobs: dict[str, tuple[str, bytes]] = {}  # LFS sha256 -> (a file name, content)
        self.requests: list[SeenRequest] = []
        self.truncate: set[str] = set()
        self.tamper: dict[str, bytes] = {}
        self.forbid: set[str] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        refs: tuple[str, ...] = ("main",),
        repo_type: str = "model",
    ) -> str:
        """Store a commit holding exactly ``files``, point ``refs`` at it, return its sha."""
        repo = self._repos.setdefault((repo_type, repo_id), _Repo())
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name])
        digest.update(str(len(repo.commits)).encode())
        sha = digest.hexdigest()
        repo.commits[sha] = dict(files)
        for name, content in files.items():
            self._blobs.setdefault(hashlib.sha256(content).hexdigest(), (name, content))
        for ref in refs:
            repo.refs[ref] = sha
        return sha

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _resolve(self, repo_type: str, repo_id: str, revision: str) -> tuple[str | None, str | None]:
        """Return (error code, commit sha) for a repo and a revision name or sha."""
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            return "RepoNotFound", None
        sha = repo.refs.get(revision) or (revision if revision in repo.commits else None)
        return (None, sha) if sha else ("RevisionNotFound", None)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean; requests are recorded in hub.requests

            def do_HEAD(self) -> None:
                self._route(send_body=False)

            def do_GET(self) -> None:
                self._route(send_body=True)

            def _route(self, *, send_body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append(SeenRequest(self.command, path, self.headers.get("Authorization")))
                if path.startswith("/api/"):
                    self._repo_info(path)
                elif path.startswith("/cdn/"):
                    self._cdn(path.removeprefix("/cdn/"), send_body)
                elif "/resolve/" in path:
                    self._resolve_file(path, send_body)
                else:
                    self._error(404, "NotFound", "no such route")

            def _repo_info(self, path: str) -> None:
                kind, _, rest = path.removeprefix("/api/").partition("/")
                repo_id, _, revision = rest.partition("/revision/")
                repo_type = {"models": "model", "datasets": "dataset"}.get(kind, kind)
                error, sha = hub._resolve(repo_type, repo_id, revision or "main")
                if error:
                    self._error(404, error, f"{error} for {repo_id}@{revision}")
                    return
                files = hub._repos[(repo_type, repo_id)].commits[sha]
                siblings = []
                for name, content in sorted(files.items()):
                    sibling = {"rfilename": name, "size": len(content), "blobId": _git_blob_sha1(content)}
                    if _is_lfs(name):
                        sibling["lfs"] = {
                            "sha256": hashlib.sha256(content).hexdigest(),
                            "size": len(content),
                            "pointerSize": 134,
                        }
                    siblings.append(sibling)
                body = json.dumps({"id": repo_id, "sha": sha, "siblings": siblings}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _resolve_file(self, path: str, send_body: bool) -> None:
                repo_type = "model"
                if path.startswith("/datasets/"):
                    repo_type, path = "dataset", path.removeprefix("/datasets")
                repo_id, _, rest = path.lstrip("/").partition("/resolve/")
                revision, _, filename = rest.partition("/")
                error, sha = hub._resolve(repo_type, repo_id, revision)
                if error:
                    self._error(404, error, f"{error} for {repo_id}@{revision}")
                    return
                content = hub._repos[(repo_type, repo_id)].commits[sha].get(filename)
                if filename in hub.forbid:
                    self._error(403, "Forbidden", f"{self.headers.get('Authorization')} may not read {filename}")
                    return
                if content is None:
                    self._error(404, "EntryNotFound", f"{filename} not in {repo_id}@{revision}")
                    return
                if _is_lfs(filename):
                    sha256 = hashlib.sha256(content).hexdigest()
                    self.send_response(302)
                    self.send_header("Location", f"{hub.endpoint}/cdn/{sha256}")
                    self.send_header("X-Repo-Commit", sha)
                    self.send_header("ETag", f'"{_git_blob_sha1(content)}"')
                    self.send_header("X-Linked-Etag", f'"{sha256}"')
                    self.send_header("X-Linked-Size", str(len(content)))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._send_content(filename, content, send_body, {"X-Repo-Commit": sha})

            def _cdn(self, sha256: str, send_body: bool) -> None:
                if sha256 not in hub._blobs:
                    self._error(404, "EntryNotFound", "no such blob")
                    return
                filename, content = hub._blobs[sha256]
                self._send_content(filename, content, send_body, {})

            def _send_content(self, filename: str, content: bytes, send_body: bool, headers: dict) -> None:
                self.send_response(200)
                self.send_header("ETag", f'"{_git_blob_sha1(content)}"')
                self.send_header("Content-Length", str(len(content)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if not send_body:
                    return
                content = hub.tamper.get(filename, content)
                if filename in hub.truncate:
                    self.wfile.write(content[: len(content) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(content)

            def _error(self, status: int, code: str, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        return Handler
