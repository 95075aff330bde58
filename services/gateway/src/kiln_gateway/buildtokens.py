"""BinderHub's build tokens: a short-lived HS256 JWT the /v2 page hands to its own /build request.

Same claims as BinderHub: ``aud`` = "<provider>/<spec>", ``origin``, ``exp``; plus ``jti``, the
token's own id. The origin check compares headers the client writes itself, so it stops a
*browser* on another site from using the token, not a script. What a token is worth for the
rate limit is therefore bounded by the page that issued it: loading the page is charged as a
launch, and only the token's first launch is free (kiln_gateway.ratelimit).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt


class BuildTokenError(ValueError):
    """The token is forged, expired, for another spec, or used from another origin."""


@dataclass(frozen=True)
class BuildToken:
    """A checked token: its id (None for a token without one: it gets no free launch) and expiry."""

    token_id: str | None
    expires_at: int


class BuildTokens:
    def __init__(self, secret: str, expires_s: int, check_origin: bool) -> None:
        self._secret = secret
        self._expires_s = expires_s
        self._check_origin = check_origin

    def issue(self, provider: str, spec: str, origin: str) -> str:
        claims = {"exp": int(time.time()) + self._expires_s, "aud": f"{provider}/{spec}", "origin": origin,
                  "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def check(self, token: str, provider: str, spec: str, origin: str) -> BuildToken:
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], audience=f"{provider}/{spec}",
                                options={"require": ["exp"]})
        except jwt.PyJWTError as exc:
            raise BuildTokenError(f"Invalid build token: {exc}") from None
        if self._check_origin and claims.get("origin") != origin:
            raise BuildTokenError("Invalid build token: it was issued for another origin")
        jti = claims.get("jti")
        return BuildToken(jti if isinstance(jti, str) and jti else None, int(claims["exp"]))
