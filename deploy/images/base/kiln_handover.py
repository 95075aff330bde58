"""Kiln's Jupyter server extension for warm servers: the launch's environment, given at hand-over.

Kiln starts a few servers of popular images ahead of time (the launcher's warm pool). Such a
server is started before anyone asked for it, so what belongs to the launch that gets it (the
repository it was asked from, the client's address: BinderHub's ``BINDER_*`` variables) is given
when the launcher hands it over: one authenticated ``POST {base_url}kiln/handover``, before the
launcher tells anyone the server's URL. Kernels and terminals started after it see the variables.

Only the server's owner can call it (the hub's token check; the launcher mints that token), only
once, and only for the six ``BINDER_*`` names. ``GET`` says whether it has been handed over, so a
launcher that restarts never hands one server to two launches.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

NAMES = frozenset({"BINDER_REPO_URL", "BINDER_REF_URL", "BINDER_LAUNCH_HOST", "BINDER_REQUEST",
                   "BINDER_PERSISTENT_REQUEST", "BINDER_CLIENT_IP"})
MAX_VALUE = 4096


class HandoverHandler(APIHandler):
    """``GET``: whether the server was handed over; ``POST``: hand it over with the launch's environment."""

    handed = False  # per process: one server, one hand-over

    @web.authenticated
    def get(self) -> None:
        self.finish(json.dumps({"handed": HandoverHandler.handed}))

    @web.authenticated
    def post(self) -> None:
        if HandoverHandler.handed:
            raise web.HTTPError(409, "this server has been handed over already")
        try:
            body: Any = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body is not JSON") from None
        environment = body.get("environment") if isinstance(body, dict) else None
        if not isinstance(environment, dict):
            raise web.HTTPError(400, "expected {\"environment\": {name: value}}")
        for name, value in environment.items():
            if name not in NAMES or not isinstance(value, str) or len(value) > MAX_VALUE or "\0" in value:
                raise web.HTTPError(400, f"not a launch variable: {str(name)[:64]!r}")
        HandoverHandler.handed = True
        os.environ.update(environment)
        self.finish(json.dumps({"handed": True}))


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "kiln_handover"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    route = url_path_join(serverapp.web_app.settings["base_url"], "kiln/handover")
    serverapp.web_app.add_handlers(".*$", [(route, HandoverHandler)])
