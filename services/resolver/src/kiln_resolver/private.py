"""Who may launch a private repository: the operator's rule, applied after every resolution.

A repository is private when only the operator's credentials read it (``Resolution.private``).
Those credentials would let anyone who can reach Kiln launch it, so nobody may unless the
operator says who (``private_repos``):

- ``refuse`` (the default): nobody; credentials then only raise rate limits.
- ``anyone``: every launch, anonymous ones included: the operator's explicit opt-in.
- ``signed_in``: any user signed in to the hub (authenticated mode).
- ``allow_list``: signed-in users matching a ``private_repo_allow`` rule for the repository.
- ``forge_token``: signed-in users whose own forge token, from the hub's auth state (as an
  OAuthenticator keeps it), reads the repository: asked of the forge on every launch. Which key
  holds which provider's token is ``auth_state_tokens`` (GitHub's ``access_token`` by default); a
  token is only ever sent to its own provider.

Every failure to check is a refusal: a launch is never let through because a check could not run.
A refused user is told what a repository that does not exist tells (the handler answers with the
provider's not-found error): a refusal saying "private" would tell anyone which private
repositories, refs and commits exist. The reason goes to the resolver's log.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

import httpx

from kiln_resolver.policy import Refusal
from kiln_resolver.providers.base import RepoProvider
from kiln_resolver.settings import Settings
from kilnbus.providers import PROVIDERS

log = logging.getLogger(__name__)


class HubAuthState:
    """Users' forge tokens from JupyterHub's auth state (``GET /users/<name>``, scope ``admin:auth_state``)."""

    def __init__(self, api_url: str, token: str, keys: dict[str, str], timeout: float) -> None:
        self._client = httpx.AsyncClient(base_url=api_url.rstrip("/"), timeout=timeout,
                                         headers={"Authorization": f"token {token}"} if token else {})
        self.keys = keys  # provider -> the auth state's key for its token

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def forge_token(self, user: str, provider: str) -> str | None:
        """The user's token for ``provider``, or None when the hub has none for them (or cannot be asked)."""
        key = self.keys.get(provider)
        if key is None:
            return None
        try:
            r = await self._client.get(f"/users/{quote(user, safe='')}")
        except httpx.HTTPError as exc:
            log.warning("cannot ask the hub for %s's auth state: %s", user, type(exc).__name__)
            return None
        try:
            body: Any = r.json() if r.status_code == 200 and r.content else None
        except ValueError:
            body = None
        state = body.get("auth_state") if isinstance(body, dict) else None
        token = state.get(key) if isinstance(state, dict) else None
        if r.status_code == 200 and state is None:
            log.warning("the hub gave no auth state for %s: is enable_auth_state on, and does the resolver's token "
                        "have the admin:auth_state scope?", user)
        return token if isinstance(token, str) and token else None


class PrivateAccess:
    """The operator's rule for private repositories (see the module's docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._mode = settings.private_repos
        self._rules = [(re.compile(r.user), re.compile(r.pattern, re.IGNORECASE)) for r in settings.private_repo_allow]
        self.hub = HubAuthState(settings.hub_api_url, settings.hub_auth_state_token,
                                settings.auth_state_tokens, settings.provider_timeout_s) \
            if self._mode == "forge_token" else None
        if self._mode in ("signed_in", "allow_list", "forge_token"):
            # Launches carry a hub user only when the gateway signs users in (its auth_enabled).
            log.warning("private_repos=%s lets signed-in users launch private repositories: the gateway must run with "
                        "auth_enabled (the hub's sign-in), or every launch is anonymous and refused", self._mode)
        if self._mode == "forge_token":
            missing = [name for name, value in (("hub_api_url", settings.hub_api_url),
                                                ("hub_auth_state_token", settings.hub_auth_state_token),
                                                ("auth_state_tokens", settings.auth_state_tokens)) if not value]
            if missing:
                log.error("private_repos=forge_token needs %s: every private repository is refused until they are set",
                          ", ".join(missing))

    async def aclose(self) -> None:
        """Close the hub client, if any."""
        if self.hub:
            await self.hub.aclose()

    def hint(self, user: str | None) -> str:
        """What every "not found" adds for ``user``, private or not, so it tells nothing of either."""
        if self._mode in ("anyone", "refuse"):
            return ""
        if user is None:
            return " If it is a private repository, sign in and launch it again."
        if self._mode == "signed_in":
            return ""
        return " If it is a private repository, your account may not be one that can launch it here."

    async def refusal(self, provider_name: str, provider: RepoProvider, spec: str, user: str | None) -> Refusal | None:
        """None when ``user`` (None: anonymous) may launch the private repository ``provider_name/spec``."""
        target = f"{provider_name}/{spec}"
        if self._mode == "anyone":
            return None
        if self._mode == "refuse":
            return _refuse(target, "this Binder does not launch private repositories.")
        if user is None:
            return _refuse(target, "sign in to launch it, if you may.")
        if self._mode == "signed_in":
            return None
        if self._mode == "allow_list":
            # Matched whole against the repository (no ref): "gh/lab/analysis" must not also allow
            # "gh/lab/analysis-secret", nor a ref or encoded path stretch a rule.
            repository = f"{provider_name}/{PROVIDERS[provider_name].split_ref(spec)[0]}" if provider_name in PROVIDERS \
                else target
            if any(u.fullmatch(user) and p.fullmatch(repository) for u, p in self._rules):
                return None
            return _refuse(target, "you are not on this Binder's list of who may launch it.")
        can_read = getattr(provider, "can_read", None)
        # A user's token goes to the forge it came from, never to another provider's API.
        if self.hub is None or can_read is None or provider_name not in self.hub.keys:
            return _refuse(target, f"this Binder cannot check who may read {provider_name} repositories.")
        token = await self.hub.forge_token(user, provider_name)
        if token is None:
            return _refuse(target, "this Binder has no token of yours to check that you may read it; sign in again.")
        if not await can_read(spec, token):
            return _refuse(target, "your account cannot read it.")
        return None


def _refuse(target: str, why: str) -> Refusal:
    return Refusal(f"{target} is a private repository; {why}", "private_repository", 403)
