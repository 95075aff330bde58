"""The local registry's token server: who may pull and who may push.

The registry (distribution v2, Debian's docker-registry) delegates authentication to a token
server, as Docker Hub's does: a client that gets a 401 asks this server, with its user name and
password, for a token granting actions on a repository, and the registry checks the token's
signature. This server grants each user only its own actions:

- ``builder`` may pull anything and push the images builds make (``push_prefixes``: repositories
  under kiln/binder- and kiln/env), not Kiln's own base and service images;
- ``admin`` (the scripts: base and service images) may pull and push anything;
- ``puller`` (the resolver's existence checks, the hub's engine) may only pull;
- nobody else gets anything.

It is run by deploy/local/registry.sh from the project's virtualenv:
    registry_token.py CONFIG.json    (listens where CONFIG says; 127.0.0.1 only)

CONFIG.json: {"host", "port", "issuer", "service", "key" (PEM path), "users": {name: {"sha256": hex of
the password, "actions": [...], "push_prefixes": [...] (optional: where push is allowed)}}}. Passwords are random and long (registry.sh makes them), so a
plain SHA-256 is a sufficient record of them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TOKEN_LIFETIME_S = 300


def key_id(public_der: bytes) -> str:
    """The key id the registry computes for a trusted key (libtrust's form): the first 240 bits of
    the SHA-256 of the DER public key, in base32, in groups of four."""
    digest = base64.b32encode(hashlib.sha256(public_der).digest()[:30]).decode()
    return ":".join(digest[i:i + 4] for i in range(0, len(digest), 4))


def parse_scopes(values: list[str]) -> list[tuple[str, str, set[str]]]:
    """``repository:kiln/x:pull,push`` → (type, name, actions); anything malformed is dropped."""
    scopes = []
    for value in values:
        for scope in value.split(" "):
            kind, sep, rest = scope.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if sep and sep2 and kind == "repository" and name:
                scopes.append((kind, name, set(actions.split(","))))
    return scopes


def authenticate(request: Request, users: dict[str, Any]) -> str | None:
    """The user named by valid HTTP Basic credentials, or None."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        name, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user = users.get(name)
    if user is None:
        return None
    given = hashlib.sha256(password.encode()).hexdigest()
    return name if hmac.compare_digest(given, user["sha256"]) else None


def granted(user: dict[str, Any], repo: str, wanted: set[str]) -> set[str]:
    """What ``user`` may do of ``wanted`` on ``repo``: its actions, push only under its prefixes."""
    actions = wanted & set(user["actions"])
    prefixes = user.get("push_prefixes")
    if prefixes is not None and not any(repo.startswith(p) for p in prefixes):
        actions.discard("push")
    return actions


def create_app(config: dict[str, Any]) -> Starlette:
    """The token endpoint, for the configuration registry.sh writes."""
    private_key = serialization.load_pem_private_key(Path(config["key"]).read_bytes(), password=None)
    public_der = private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = key_id(public_der)
    users: dict[str, Any] = config["users"]

    async def token(request: Request) -> JSONResponse:
        name = authenticate(request, users)
        if name is None:
            # No anonymous access: a client without credentials (or with wrong ones) gets nothing.
            return JSONResponse({"errors": [{"code": "UNAUTHORIZED", "message": "credentials required"}]}, status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="kiln-registry"'})
        access = [{"type": kind, "name": repo, "actions": sorted(granted(users[name], repo, wanted))}
                  for kind, repo, wanted in parse_scopes(request.query_params.getlist("scope"))]
        now = int(time.time())
        claims = {"iss": config["issuer"], "sub": name, "aud": request.query_params.get("service", config["service"]),
                  "iat": now, "nbf": now - 5, "exp": now + TOKEN_LIFETIME_S, "jti": uuid.uuid4().hex, "access": access}
        signed = jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": kid})  # type: ignore[arg-type]
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return JSONResponse({"token": signed, "access_token": signed, "expires_in": TOKEN_LIFETIME_S, "issued_at": issued})

    return Starlette(routes=[Route("/token", token)])


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    uvicorn.run(create_app(config), host=config["host"], port=int(config["port"]), log_level="warning")


if __name__ == "__main__":
    main()
