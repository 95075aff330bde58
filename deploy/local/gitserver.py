#!/usr/bin/env python3
"""Serve a folder of git repositories over smart HTTP on loopback, with `git http-backend`.

For trying Kiln with repositories on your own machine, and for Kiln's tests:

    python3 deploy/local/gitserver.py ROOT [--port 8765]

A repository at ROOT/owner/repo.git (bare) or ROOT/owner/repo (with a work tree) is then cloned as
http://127.0.0.1:8765/owner/repo.git, which Kiln launches as
http://127.0.0.1:8585/v2/git/http%3A%2F%2F127.0.0.1%3A8765%2Fowner%2Frepo.git/HEAD
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class GitHttpHandler(BaseHTTPRequestHandler):
    """Hands each request to `git http-backend` (CGI) and relays its answer."""

    root: Path
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._backend()

    def do_POST(self) -> None:
        self._backend()

    def _backend(self) -> None:
        path, _, query = self.path.partition("?")
        path = self._work_tree_path(path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=120, check=False)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _work_tree_path(self, path: str) -> str:
        # http-backend finds ROOT/owner/repo.git or ROOT/owner/repo/.git, but not a work tree asked
        # for as repo.git (the URL forges give): point such a request at the work tree.
        head, sep, tail = path.partition(".git/")
        work_tree = self.root / head.lstrip("/")
        if sep and not work_tree.with_name(work_tree.name + ".git").exists() and (work_tree / ".git").is_dir():
            return f"{head}/{tail}"
        return path

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(root: Path, port: int = 0, handler: type[GitHttpHandler] = GitHttpHandler) -> ThreadingHTTPServer:
    """Start serving ``root`` on 127.0.0.1:``port`` (0: any free port) in a background thread."""
    handler_class = type("BoundGitHttpHandler", (handler,), {"root": root})
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler_class)
    # A short poll: shutdown() waits for the loop to look, and tests start and stop many servers.
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="git-http", daemon=True).start()
    return httpd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    httpd = serve(args.root.resolve(), args.port)
    print(f"serving git repositories under {args.root} at http://127.0.0.1:{httpd.server_address[1]}/")
    threading.Event().wait()


if __name__ == "__main__":
    main()
