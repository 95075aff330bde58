"""Sealing secrets that travel on the bus, such as a server's token in a ``ready`` event.

A sealed value is Fernet ciphertext (AES-128-CBC + HMAC-SHA256, from ``cryptography``). The
launcher seals with the first key; the gateway unseals with any of its keys, so keys rotate
without downtime: add the new key second everywhere, then move it first, then drop the old one.
Anyone reading the log without a key, analytics included, sees only ciphertext.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SealError(ValueError):
    """A sealed value could not be opened: wrong key, tampered, or not sealed at all."""


class Sealer:
    """Seals with the first key and unseals with any."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("no sealing keys: set KILN_TOKEN_SEAL_KEYS (generate one with `kiln-keygen`)")
        try:
            self._fernet = MultiFernet([Fernet(k.encode() if isinstance(k, str) else k) for k in keys])
        except ValueError as exc:
            raise ValueError(f"a sealing key is not a valid Fernet key (32 url-safe base64 bytes): {exc}") from None

    def seal(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def unseal(self, sealed: bytes) -> str:
        try:
            return self._fernet.decrypt(sealed).decode()
        except InvalidToken:
            raise SealError("sealed value does not open with any configured key") from None


def new_key() -> str:
    """A fresh sealing key."""
    return Fernet.generate_key().decode()


def keygen() -> None:
    """`kiln-keygen`: print a fresh sealing key for KILN_TOKEN_SEAL_KEYS."""
    print(new_key())
