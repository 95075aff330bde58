"""A git host on loopback for tests: real repositories over smart HTTP, and API stand-ins.

GitHub's and GitLab's APIs cannot be reached from here, so this server also answers the few REST
calls Kiln's providers make (commit lookup, repository lookup, gists), from the same real git
repositories it serves, including ETags, 304s and an exhausted rate limit on demand:

    /owner/repo(.git)                         git clone (GitHub-like layout)
    /github-api/repos/<o>/<r>/commits/<ref>   GitHub: commit sha of a ref (ETag, 304, rate limit)
    /github-api/repos/<o>/<r>                 GitHub: repository exists
    /github-api/gists/<id>                    GitHub: a gist's history (repos under gists/<id>)
    /gitlab/<namespace>.git                   git clone (GitLab-like layout)
    /gitlab/api/v4/projects/<ns>/...          GitLab: commit of a ref, project exists
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))
from gitserver import GitHttpHandler, serve

GIT_ENV = {"GIT_AUTHOR_NAME": "Kiln Test", "GIT_AUTHOR_EMAIL": "test@kiln.invalid", "GIT_COMMITTER_NAME": "Kiln Test",
           "GIT_COMMITTER_EMAIL": "test@kiln.invalid", "PATH": "/usr/bin:/bin"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(root: Path, name: str, files: dict[str, str], branch: str = "main") -> Path:
    """A repository at root/name with one commit of ``files`` on ``branch``."""
    path = root / name
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", branch)
    commit(path, files, "initial")
    return path


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for rel, content in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@dataclass
class ApiStats:
    requests: int = 0
    not_modified: int = 0
    rate_limited: bool = False
    paths: list[str] = field(default_factory=list)


class _Handler(GitHttpHandler):
    stats: ApiStats

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/github-api/"):
            return self._github(path[len("/github-api"):])
        if path.startswith("/gitlab/api/v4/"):
            return self._gitlab(path[len("/gitlab/api/v4"):])
        return self._backend()

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _rev(self, repo: Path, ref: str) -> str | None:
        if not repo.exists():
            return None
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"], cwd=repo, capture_output=True, text=True)
        return out.stdout.strip() or None

    def _repo(self, *parts: str) -> Path:
        base = self.root.joinpath(*parts)
        return base if base.exists() else base.with_name(base.name + ".git")

    def _github(self, path: str) -> None:
        self.stats.requests += 1
        self.stats.paths.append(path)
        if self.stats.rate_limited:
            return self._json(403, {"message": "API rate limit exceeded"},
                              {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + 1500)})
        limits = {"x-ratelimit-remaining": "4999", "x-ratelimit-limit": "5000"}
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[0] == "repos" and len(parts) >= 5 and parts[3] == "commits":
            sha = self._rev(self._repo(parts[1], parts[2]), "/".join(parts[4:]))
            if sha is None:
                return self._json(404 if not self._repo(parts[1], parts[2]).exists() else 422, {"message": "No commit found"}, limits)
            etag = f'"{sha}"'
            if self.headers.get("If-None-Match") == etag:
                self.stats.not_modified += 1
                return self._json(304, None, {**limits, "ETag": etag})
            return self._json(200, {"sha": sha}, {**limits, "ETag": etag})
        if parts[0] == "repos" and len(parts) == 3:
            exists = self._repo(parts[1], parts[2]).exists()
            return self._json(200 if exists else 404, {"full_name": f"{parts[1]}/{parts[2]}"}, limits)
        if parts[0] == "gists" and len(parts) == 2:
            repo = self.root / "gists" / parts[1]
            if not repo.exists():
                return self._json(404, {"message": "Not Found"}, limits)
            log = subprocess.run(["git", "log", "--format=%H"], cwd=repo, capture_output=True, text=True).stdout.split()
            return self._json(200, {"public": not (repo / ".secret").exists(), "history": [{"version": v} for v in log]}, limits)
        return self._json(404, {"message": "Not Found"})

    def _gitlab(self, path: str) -> None:
        self.stats.requests += 1
        parts = path.strip("/").split("/")
        if parts[0] != "projects" or len(parts) < 2:
            return self._json(404, {"message": "404 Not Found"})
        namespace = unquote(parts[1])
        repo = self._repo("gitlab", *namespace.split("/"))
        if len(parts) == 2:
            return self._json(200 if repo.exists() else 404, {"path_with_namespace": namespace})
        if parts[2:4] == ["repository", "commits"] and len(parts) >= 5:
            sha = self._rev(repo, unquote("/".join(parts[4:])))
            return self._json(200, {"id": sha}) if sha else self._json(404, {"message": "404 Commit Not Found"})
        return self._json(404, {"message": "404 Not Found"})


@dataclass
class GitHost:
    root: Path
    url: str
    stats: ApiStats
    server: Any

    @property
    def github_api(self) -> str:
        return self.url + "/github-api"

    @property
    def gitlab(self) -> str:
        return self.url + "/gitlab"


def start_githost(root: Path) -> GitHost:
    stats = ApiStats()
    handler = type("Handler", (_Handler,), {"stats": stats})
    server = serve(root, 0, handler)
    return GitHost(root, f"http://127.0.0.1:{server.server_address[1]}", stats, server)
