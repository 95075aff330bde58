"""Keyed hashes only Kiln's launchers can make: under the first sealing key, which every replica holds.

The warm pool marks its servers with one (a proof a logged-in user cannot forge in their own
server's user options), and a warm server's ``ready`` event names its client by one (counted in the
per-client quota by every launcher, tied to no address by anyone else).
"""

from __future__ import annotations

import hashlib
import hmac

from kiln_launcher.settings import Settings


def sealing_key(settings: Settings) -> bytes | None:
    """The key the hashes are made with; None when the launcher has no sealing key."""
    return settings.token_seal_keys[0].encode() if settings.token_seal_keys else None


def keyed_hash(key: bytes, *parts: str) -> str:
    """HMAC-SHA256 of ``parts`` (joined by NUL, which none of them holds), in hex."""
    return hmac.new(key, "\0".join(parts).encode(), hashlib.sha256).hexdigest()
