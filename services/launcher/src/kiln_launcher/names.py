"""Hub user and server names for a launch, BinderHub's way but reproducible from the request id.

BinderHub adds 8 random characters to the repository's name. Kiln derives them from the request id
instead, so a launch request delivered twice names the same user and finds its server already
started, rather than starting a second one.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit


def repo_name(repo_url: str) -> str:
    path = urlsplit(repo_url).path if "://" in repo_url else repo_url.split(":", 1)[-1]
    name = re.sub(r"[^a-z0-9-]", "-", path.strip("/").removesuffix(".git").replace("/", "-").lower()).strip("-") or "repo"
    return f"{name[:15]}-{name[-15:]}" if len(name) > 32 else name


def user_name(repo_url: str, request_id: str) -> str:
    return f"{repo_name(repo_url)}-{hashlib.sha256(request_id.encode()).hexdigest()[:8]}"
