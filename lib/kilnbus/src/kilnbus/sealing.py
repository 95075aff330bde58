"""Sealing secrets that travel on the bus, such as a server's token in a ``ready`` event.

A sealed value is Fernet ciphertext (AES-128-CBC + HMAC-SHA256, from ``cryptography``). The
launcher seals with the first key; the gateway unseals with any of its keys, so keys rotate
without downtime: add the new key second everywhere, then move it first, then drop the old one.
Anyone reading the log without a key, analytics included, sees only ciphertext.

A sealed value is bound to the request it was made for: the request id (and the server URL the
secret belongs with) are sealed together with the secret, and opening checks the request id.
Fernet authenticates everything it encrypts, so the binding cannot be edited without a key: a
``ready`` event forged or replayed into another request's stream, carrying a token sealed for
some other request, does not open there, and the URL it names cannot be swapped for another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

# The sealed payload's format version; a payload without it (a bare secret, as launchers sealed
# before the binding existed) is refused, since it is bound to no request.
_VERSION = 2


class SealError(ValueError):
    """A sealed value could not be opened: wrong key, tampered, or not sealed at all."""


class SealMismatch(SealError):
    """A sealed value opened, but it was sealed for another request (or bound to none)."""


@dataclass(frozen=True)
class Opened:
    """What a sealed value held: the secret and the server URL it was sealed with (if any)."""

    secret: str
    url: str | None


class Sealer:
    """Seals with the first key and unseals with any."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("no sealing keys: set KILN_TOKEN_SEAL_KEYS (generate one with `kiln-keygen`)")
        try:
            self._fernet = MultiFernet([Fernet(k.encode() if isinstance(k, str) else k) for k in keys])
        except ValueError as exc:
            raise ValueError(f"a sealing key is not a valid Fernet key (32 url-safe base64 bytes): {exc}") from None

    def seal(self, secret: str, *, request_id: str, url: str | None = None) -> bytes:
        """``secret`` sealed for ``request_id`` (and with ``url``, the server it opens)."""
        if not request_id:
            raise ValueError("a sealed value must be bound to a request id")
        payload = {"v": _VERSION, "rid": request_id, "secret": secret, "url": url}
        return self._fernet.encrypt(json.dumps(payload, separators=(",", ":")).encode())

    def open(self, sealed: bytes, *, request_id: str) -> Opened:
        """The secret and URL sealed for ``request_id``; SealError if it does not open or is another's."""
        try:
            plain = self._fernet.decrypt(sealed)
        except InvalidToken:
            raise SealError("sealed value does not open with any configured key") from None
        try:
            payload = json.loads(plain)
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or payload.get("v") != _VERSION:
            raise SealMismatch("sealed value is bound to no request (sealed by an older launcher?)")
        if payload.get("rid") != request_id:
            raise SealMismatch("sealed value was sealed for another request")
        secret, url = payload.get("secret"), payload.get("url")
        if not isinstance(secret, str) or not (url is None or isinstance(url, str)):
            raise SealError("sealed value has an unexpected shape")
        return Opened(secret, url)

    def unseal(self, sealed: bytes, *, request_id: str) -> str:
        """The secret sealed for ``request_id``; SealError otherwise."""
        return self.open(sealed, request_id=request_id).secret


def new_key() -> str:
    """A fresh sealing key."""
    return Fernet.generate_key().decode()


def keygen() -> None:
    """`kiln-keygen`: print a fresh sealing key for KILN_TOKEN_SEAL_KEYS."""
    print(new_key())
