"""A request's phase events as BinderHub's event-stream JSON, one to one.

Kiln's own phases (accepted, resolved, stopped) are for the log and analytics; BinderHub clients
do not know them, so they are not sent. The server token arrives sealed and is opened here, for
the one client whose stream it is.
"""

from __future__ import annotations

from typing import Any

from kilnbus import Phase, PhaseEvent
from kilnbus.sealing import Sealer, SealError

CLIENT_PHASES = frozenset({Phase.WAITING, Phase.FETCHING, Phase.BUILDING, Phase.PUSHING, Phase.BUILT,
                           Phase.LAUNCHING, Phase.READY, Phase.FAILED, Phase.UNKNOWN})


def project(event: PhaseEvent, sealer: Sealer | None, context: dict[str, str]) -> dict[str, Any] | None:
    """The JSON a BinderHub client expects for ``event``, or None when the client is not told of it.

    ``context`` holds what the gateway knows of the request (binder_request, client ip, ...).
    """
    if event.phase not in CLIENT_PHASES:
        return None
    out: dict[str, Any] = {"phase": event.phase.value, "message": event.message}
    if event.phase is Phase.PUSHING and event.progress is not None:
        out["progress"] = {
            layer: p.status if p.status is not None and p.current is None else {"current": p.current, "total": p.total}
            for layer, p in event.progress.items()
        }
    if event.image_name is not None and event.phase in (Phase.BUILT, Phase.READY):
        out["imageName"] = event.image_name
    if event.phase is Phase.FAILED and event.status_code is not None:
        out["status_code"] = event.status_code
    if event.phase is Phase.READY and event.url is not None:
        token = ""
        if event.sealed_token is not None:
            if sealer is None:
                return {"phase": "failed", "status_code": 500,
                        "message": "The server is ready, but this gateway holds no key to open its token "
                                   "(KILN_TOKEN_SEAL_KEYS).\n"}
            try:
                token = sealer.unseal(event.sealed_token)
            except SealError:
                return {"phase": "failed", "status_code": 500,
                        "message": "The server is ready, but its token was sealed with a key this gateway does not hold.\n"}
        out.update(
            url=event.url,
            token=token,
            image=event.image_name,
            repo_url=event.repo_url,
            binder_ref_url=event.ref_url,
            binder_launch_host=context.get("binder_launch_host", event.launch_host or ""),
            binder_request=context.get("binder_request", ""),
            binder_persistent_request=f"v2/{event.provider}/{event.resolved_spec}" if event.resolved_spec else "",
            binder_client_ip=context.get("binder_client_ip", ""),
        )
    return out
