"""A request's phase events as BinderHub's event-stream JSON, one to one.

Kiln's own phases (accepted, resolved, stopped) are for the log and analytics; BinderHub clients
do not know them, so they are not sent. The server token arrives sealed and is opened here, for
the one client whose stream it is: it opens only if it was sealed for that stream's request, and
the server URL the client is sent to is the one sealed with it, so a ``ready`` event forged or
replayed into the stream can neither hand over another request's token nor redirect the browser.
"""

from __future__ import annotations

import logging
from typing import Any

from kilnbus import Phase, PhaseEvent
from kilnbus.sealing import Sealer, SealError, SealMismatch

log = logging.getLogger(__name__)

CLIENT_PHASES = frozenset({Phase.WAITING, Phase.FETCHING, Phase.BUILDING, Phase.PUSHING, Phase.BUILT,
                           Phase.LAUNCHING, Phase.READY, Phase.FAILED, Phase.UNKNOWN})


def _refused(message: str) -> dict[str, Any]:
    return {"phase": "failed", "status_code": 500, "message": message.rstrip("\n") + "\n"}


def project(event: PhaseEvent, sealer: Sealer | None, context: dict[str, str], request_id: str) -> dict[str, Any] | None:
    """The JSON a BinderHub client expects for ``event``, or None when the client is not told of it.

    ``context`` holds what the gateway knows of the request (binder_request, client ip, ...);
    ``request_id`` is the stream's own request (its routing key), not the event's say-so.
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
    if event.phase in (Phase.LAUNCHING, Phase.READY) and event.warm is not None:
        out["warm"] = event.warm  # a server started ahead of time (Kiln's; BinderHub clients ignore it)
    if event.phase is Phase.READY and event.url is not None:
        # Only the launcher's ready events carry a server, and it always seals the token with the
        # URL: a server URL without a seal did not come from it, so the client is not sent there.
        if event.sealed_token is None:
            log.warning("request %s: a ready event with a server URL but no sealed token was refused", request_id)
            return _refused("The server is ready, but its ready event carries no sealed token, so Kiln does not trust it.")
        if sealer is None:
            return _refused("The server is ready, but this gateway holds no key to open its token (KILN_TOKEN_SEAL_KEYS).")
        try:
            opened = sealer.open(event.sealed_token, request_id=request_id)
        except SealMismatch as exc:
            log.warning("request %s: a ready event's sealed token was refused: %s", request_id, exc)
            return _refused("The server is ready, but its token was not sealed for this launch, so it is not handed over.")
        except SealError:
            return _refused("The server is ready, but its token was sealed with a key this gateway does not hold.")
        if opened.url != event.url:
            log.warning("request %s: a ready event's URL differs from the one sealed with its token", request_id)
            return _refused("The server is ready, but its address does not match the one sealed with its token.")
        out.update(
            url=opened.url,
            token=opened.secret,
            image=event.image_name,
            repo_url=event.repo_url,
            binder_ref_url=event.ref_url,
            binder_launch_host=context.get("binder_launch_host", event.launch_host or ""),
            binder_request=context.get("binder_request", ""),
            binder_persistent_request=f"v2/{event.provider}/{event.resolved_spec}" if event.resolved_spec else "",
            binder_client_ip=context.get("binder_client_ip", ""),
        )
    return out
