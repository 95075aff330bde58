"""A git host on loopback for tests: real repositories over smart HTTP, and API stand-ins.

GitHub's, GitLab's, Gitea's and Bitbucket's APIs cannot be reached from here, so this server also answers the few REST
calls Kiln's providers make (commit lookup, repository lookup, gists), from the same real git
repositories it serves, including ETags, 304s and an exhausted rate limit on demand:

    /owner/repo(.git)                         git clone (GitHub-like layout)
    /github-api/repos/<o>/<r>/commits/<ref>   GitHub: commit sha of a ref (ETag, 304, rate limit)
    /github-api/repos/<o>/<r>                 GitHub: repository exists
    /github-api/gists/<id>                    GitHub: a gist's history (repos under gists/<id>)
    /gitlab/<namespace>.git                   git clone (GitLab-like layout)
    /gitlab/api/v4/projects/<ns>/...          GitLab: commit of a ref, project exists
    /gitea/<o>/<r>.git                        git clone (a Gitea/Forgejo such as Codeberg)
    /gitea/api/v1/repos/<o>/<r>/commits?sha=  Gitea: the ref's commit first; /repos/<o>/<r>: exists
    /bitbucket/<w>/<r>.git                    git clone (Bitbucket's layout)
    /bitbucket-api/2.0/repositories/<w>/<r>/commit/<ref>   Bitbucket: commit of a ref; .../<w>/<r>: exists
    /private/<o>/<r>.git                      git clone that needs ``stats.git_auth`` (a private repository)
    POST /<repo>.git/info/lfs/objects/batch   Git LFS batch API (stands in for GitHub's LFS server)
    /lfs-objects/<oid>                        Git LFS: an object's bytes (what the batch answer points at)
    /raw/<name>                               a plain file from ROOT/.raw (a benchmark's baseline)

The LFS stand-in serves the objects a test puts in ``GitHost.lfs.objects`` (sha256 -> bytes); a test
can point the batch answer's hrefs elsewhere (``href_base``), have it refuse an object (``errors``)
or serve other bytes than asked for (``tamper``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

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
    # Gitea and Bitbucket stand-ins: with ``private`` set, their repositories read as missing unless
    # the request carries ``Authorization: <private>``; every Authorization header seen is kept.
    private: str = ""
    authorizations: list[str] = field(default_factory=list)
    # Private repositories: git under /private/ answers 401 without ``Authorization: <git_auth>``;
    # GitHub's API shows the repositories in ``github_private`` (o/r) only to ``Authorization: <token>``
    # (the value there), as private, and any other repository as public.
    git_auth: str = ""
    github_private: dict[str, str] = field(default_factory=dict)
    # GitLab projects (namespace) that are public but keep their repository to members: every
    # /repository call needs one of these Authorization or PRIVATE-TOKEN values.
    gitlab_code_readers: dict[str, set[str]] = field(default_factory=dict)
    git_authorizations: list[str] = field(default_factory=list)  # what git sent to /private/
    gitea_limited_owners: set[str] = field(default_factory=set)  # Gitea owners whose visibility is "limited"


@dataclass
class LFSStore:
    objects: dict[str, bytes] = field(default_factory=dict)
    href_base: str = ""  # where the batch answer says objects are ("": this server's /lfs-objects/)
    errors: dict[str, tuple[int, str]] = field(default_factory=dict)  # oid -> (code, message)
    tamper: dict[str, bytes] = field(default_factory=dict)  # oid -> bytes served instead
    batches: list[dict[str, Any]] = field(default_factory=list)  # the batch requests' bodies
    downloads: list[str] = field(default_factory=list)  # oids downloaded


class _Handler(GitHttpHandler):
    stats: ApiStats
    lfs: LFSStore
    # Headers and body go out as two writes: with Nagle on, the body waits for the client's delayed
    # ACK (40 ms), which a real forge's server does not make anyone wait for.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        if self._private_refused():
            return None
        if self.path.split("?", 1)[0].endswith("/info/lfs/objects/batch"):
            return self._lfs_batch()
        return self._backend()

    def _private_refused(self) -> bool:
        if not self.path.startswith("/private/"):
            return False
        sent = self.headers.get("Authorization") or ""
        self.stats.git_authorizations.append(sent)
        if self.stats.git_auth and sent == self.stats.git_auth:
            return False
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="private"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def _lfs_batch(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.lfs.batches.append(body)
        base = self.lfs.href_base or f"http://127.0.0.1:{self.server.server_address[1]}/lfs-objects"
        answered = []
        for obj in body.get("objects", []):
            oid = obj["oid"]
            if oid in self.lfs.errors:
                code, message = self.lfs.errors[oid]
                answered.append({"oid": oid, "size": obj["size"], "error": {"code": code, "message": message}})
            elif oid in self.lfs.objects:
                answered.append({"oid": oid, "size": obj["size"], "authenticated": True, "actions": {
                    "download": {"href": f"{base}/{oid}", "header": {"X-Kiln-Test": "lfs"}}}})
            else:
                answered.append({"oid": oid, "size": obj["size"], "error": {"code": 404, "message": "Object does not exist"}})
        data = json.dumps({"transfer": "basic", "objects": answered}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.git-lfs+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self._private_refused():
            return None
        path = self.path.split("?", 1)[0]
        if path.startswith("/raw/"):  # a plain file (ROOT/.raw/<name>): benchmarks' baseline download
            raw = self.root / ".raw" / path[len("/raw/"):].replace("/", "_")
            if not raw.is_file():
                return self._json(404, {"message": "no such file"})
            data = raw.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        if path.startswith("/lfs-objects/"):
            oid = path.rsplit("/", 1)[1]
            data = self.lfs.tamper.get(oid, self.lfs.objects.get(oid))
            if data is None or self.headers.get("X-Kiln-Test") != "lfs":  # the batch answer's header is sent
                return self._json(404, {"message": "no such object"})
            self.lfs.downloads.append(oid)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        if path.startswith("/github-api/"):
            return self._github(path[len("/github-api"):])
        if path.startswith("/gitlab/api/v4/"):
            return self._gitlab(path[len("/gitlab/api/v4"):])
        if path.startswith("/gitea/api/v1/"):
            return self._gitea(path[len("/gitea/api/v1"):])
        if path.startswith("/bitbucket-api/2.0/"):
            return self._bitbucket(path[len("/bitbucket-api/2.0"):])
        return self._backend()

    def _authorized(self, expected: str) -> bool:
        self.stats.authorizations.append(self.headers.get("Authorization") or "")
        return not self.stats.private or self.headers.get("Authorization") == expected

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
        private = parts[0] == "repos" and len(parts) >= 3 and f"{parts[1]}/{parts[2]}" in self.stats.github_private
        if private and self.headers.get("Authorization") != self.stats.github_private[f"{parts[1]}/{parts[2]}"]:
            return self._json(404, {"message": "Not Found"}, limits)
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
            return self._json(200 if exists else 404, {"full_name": f"{parts[1]}/{parts[2]}", "private": private}, limits)
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
        readers = self.stats.gitlab_code_readers.get(namespace)
        if len(parts) == 2:
            body: dict[str, str] = {"path_with_namespace": namespace, "visibility": "public"}
            if readers is not None:
                body["repository_access_level"] = "private"
            return self._json(200 if repo.exists() else 404, body)
        if readers is not None and not {self.headers.get("Authorization"), self.headers.get("PRIVATE-TOKEN")} & readers:
            return self._json(404, {"message": "404 Project Not Found"})  # the code is for members only
        if parts[2:4] == ["repository", "tree"]:
            return self._json(200, [{"name": p.name} for p in sorted(repo.iterdir()) if p.name != ".git"])
        if parts[2:4] == ["repository", "commits"] and len(parts) >= 5:
            sha = self._rev(repo, unquote("/".join(parts[4:])))
            return self._json(200, {"id": sha}) if sha else self._json(404, {"message": "404 Commit Not Found"})
        return self._json(404, {"message": "404 Not Found"})

    def _gitea(self, path: str) -> None:
        self.stats.requests += 1
        if self.stats.rate_limited:
            return self._json(429, {"message": "rate limit"})
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[0] != "repos" or len(parts) < 3:
            return self._json(404, {"message": "not found"})
        repo = self._repo("gitea", parts[1], parts[2])
        if not repo.exists() or not self._authorized(self.stats.private):
            return self._json(404, {"message": "The target couldn't be found."})
        if len(parts) == 3:
            visibility = "limited" if parts[1] in self.stats.gitea_limited_owners else "public"
            return self._json(200, {"full_name": f"{parts[1]}/{parts[2]}", "private": bool(self.stats.private), "internal": False,
                                    "owner": {"login": parts[1], "visibility": visibility}})
        if parts[3:] == ["contents"]:  # the root's listing: what reading the code takes
            return self._json(200, [{"name": p.name, "type": "file"} for p in sorted(repo.iterdir()) if p.name != ".git"])
        if parts[3:] == ["commits"]:
            query = parse_qs(self.path.split("?", 1)[1] if "?" in self.path else "")
            sha = self._rev(repo, query.get("sha", ["HEAD"])[0])
            return self._json(200, [{"sha": sha}]) if sha else self._json(404, {"message": "sha not found"})
        return self._json(404, {"message": "not found"})

    def _bitbucket(self, path: str) -> None:
        self.stats.requests += 1
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[0] != "repositories" or len(parts) < 3:
            return self._json(404, {"type": "error"})
        repo = self._repo("bitbucket", parts[1], parts[2])
        if not repo.exists():
            return self._json(404, {"type": "error", "error": {"message": "Repository not found"}})
        if not self._authorized(self.stats.private):
            return self._json(403, {"type": "error", "error": {"message": "Access denied"}})
        if len(parts) == 3:
            return self._json(200, {"full_name": f"{parts[1]}/{parts[2]}", "is_private": bool(self.stats.private)})
        if parts[3] == "commit" and len(parts) == 5:  # the ref arrives percent-encoded as one segment
            sha = self._rev(repo, parts[4])
            return self._json(200, {"hash": sha}) if sha else self._json(404, {"type": "error"})
        return self._json(404, {"type": "error"})


@dataclass
class GitHost:
    root: Path
    url: str
    stats: ApiStats
    server: Any
    lfs: LFSStore = field(default_factory=LFSStore)

    @property
    def github_api(self) -> str:
        return self.url + "/github-api"

    @property
    def gitlab(self) -> str:
        return self.url + "/gitlab"

    @property
    def gitea(self) -> str:
        return self.url + "/gitea"

    @property
    def bitbucket(self) -> str:
        return self.url + "/bitbucket"

    @property
    def bitbucket_api(self) -> str:
        return self.url + "/bitbucket-api/2.0"


def start_githost(root: Path) -> GitHost:
    stats, lfs = ApiStats(), LFSStore()
    handler = type("Handler", (_Handler,), {"stats": stats, "lfs": lfs})
    server = serve(root, 0, handler)
    return GitHost(root, f"http://127.0.0.1:{server.server_address[1]}", stats, server, lfs)
