"""BinderHub's build tokens: a short-lived HS256 JWT the /v2 page hands to its own /build request.

A valid token shows the launch came from the repository's own page (a badge link), so it skips the
per-IP rate limit. Same claims as BinderHub: ``aud`` = "<provider>/<spec>", ``origin``, ``exp``.
"""

from __future__ import annotations

import time

import jwt


class BuildTokenError(ValueError):
    """The token is forged, expired, for another spec, or used from another origin."""


class BuildTokens:
    def __init__(self, secret: str, expires_s: int, check_origin: bool) -> None:
        self._secret = secret
        self._expires_s = expires_s
        self._check_origin = check_origin

    def issue(self, provider: str, spec: str, origin: str) -> str:
        claims = {"exp": int(time.time()) + self._expires_s, "aud": f"{provider}/{spec}", "origin": origin}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def check(self, token: str, provider: str, spec: str, origin: str) -> None:
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], audience=f"{provider}/{spec}")
        except jwt.PyJWTError as exc:
            raise BuildTokenError(f"Invalid build token: {exc}") from None
        if self._check_origin and claims.get("origin") != origin:
            raise BuildTokenError("Invalid build token: it was issued for another origin")
