"""The authenticated mode: Kiln as a JupyterHub OAuth client (BinderHub's ``auth_enabled``).

Pages and launches then need a hub login, and a launch carries the user's name so the launcher
starts the server as that user instead of a temporary one. The login is kept in a signed session
cookie; the hub's OAuth access token is used once, to learn who the user is, and not stored. The
HTTP client it talks to the hub with is the composition root's (``kiln_gateway.bootstrap``).
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import urlencode

import httpx
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from kiln_gateway.settings import Settings

log = logging.getLogger(__name__)


class HubAuth:
    """Login through the hub's OAuth: the redirect there, the callback, the user of a request."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self._s = settings
        self._http = http

    @property
    def enabled(self) -> bool:
        return self._s.auth_enabled

    @staticmethod
    def user(request: Request) -> str | None:
        return request.session.get("hub_user") if "session" in request.scope else None

    def callback_url(self, request: Request) -> str:
        return self._s.oauth_callback_url or str(request.url_for("oauth_callback"))

    def login(self, request: Request) -> RedirectResponse:
        """Send the browser to the hub to log in, remembering where it was going."""
        state = secrets.token_urlsafe(24)
        request.session["oauth_state"] = state
        request.session["next"] = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        query = urlencode({"client_id": self._s.oauth_client_id, "redirect_uri": self.callback_url(request),
                           "response_type": "code", "state": state})
        return RedirectResponse(f"{self._s.hub_public_url.rstrip('/')}/hub/api/oauth2/authorize?{query}", status_code=302)

    async def callback(self, request: Request) -> Response:
        code, state = request.query_params.get("code"), request.query_params.get("state")
        expected = request.session.pop("oauth_state", None)
        if not code or not state or not expected or not secrets.compare_digest(state, expected):
            return Response("The login could not be completed (missing or mismatched OAuth state). Please try again.\n",
                            status_code=400, media_type="text/plain")
        api = self._s.hub_api_url.rstrip("/")
        try:
            token = await self._http.post(f"{api}/oauth2/token", timeout=10, data={
                "client_id": self._s.oauth_client_id, "client_secret": self._s.hub_api_token,
                "grant_type": "authorization_code", "code": code, "redirect_uri": self.callback_url(request)})
            token.raise_for_status()
            who = await self._http.get(f"{api}/user", timeout=10,
                                       headers={"Authorization": f"Bearer {token.json()['access_token']}"})
            who.raise_for_status()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            # The hub's answer (its internal URL, its error) goes to the log, not to the browser.
            log.warning("the hub did not confirm an OAuth login: %r", exc)
            return Response("JupyterHub did not confirm the login. Please try again; if it persists, tell this "
                            "Binder's operators.\n", status_code=502, media_type="text/plain")
        request.session["hub_user"] = who.json()["name"]
        target = request.session.pop("next", None) or self._s.base_url
        return RedirectResponse(target if target.startswith("/") and not target.startswith("//") else self._s.base_url,
                                status_code=302)
