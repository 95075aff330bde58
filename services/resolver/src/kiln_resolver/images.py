"""Image names compatible with BinderHub's: prefix + escaped, hashed repository slug + ":" + commit."""

from __future__ import annotations

import hashlib
import re


def escape(text: str) -> str:
    """Every character outside [A-Za-z0-9] becomes '-' and its hex byte code (as the escapism library)."""
    return "".join(c if c.isascii() and c.isalnum() else "".join(f"-{b:02x}" for b in c.encode()) for c in text)


def safe_build_slug(slug: str, limit: int, hash_len: int = 6) -> str:
    """The escaped slug cut to fit ``limit``, made unique again with a hash of the unescaped slug."""
    digest = hashlib.sha256(slug.encode()).hexdigest()[:hash_len]
    return f"{escape(slug)[: limit - hash_len - 1]}-{digest}".lower()


def image_name(prefix: str, build_slug: str, ref: str) -> str:
    """``prefix`` + safe slug + ``:`` + ref, lower case, ``_`` as ``-``; at most 255 characters before the tag."""
    name = prefix + safe_build_slug(build_slug, limit=255 - len(prefix)) + ":" + ref
    return name.replace("_", "-").lower()


def split_image(name: str) -> tuple[str, str, str]:
    """(registry host, repository path, tag) of ``host[:port]/path:tag``."""
    host, _, rest = name.partition("/")
    repo, _, tag = rest.rpartition(":") if re.search(r":[\w.-]+$", rest) else (rest, "", "latest")
    return host, repo, tag or "latest"
