"""``GET /build/<provider>/<spec>``: BinderHub's event stream, as a projection of the phase-event log.

One launch-requested event is published per new request; the request's phase events come back
through the router. A client that reconnects with ``Last-Event-ID`` resumes the same request:
what it missed is replayed from the log, then it goes on live. Only the client the event ids were
issued to can resume: the same hub user in the authenticated mode, else the same client key
(address, or IPv6 /64); see kiln_gateway.eventids.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from kiln_gateway import metrics
from kiln_gateway.auth import HubAuth
from kiln_gateway.buildtokens import BuildTokenError, BuildTokens
from kiln_gateway.clientaddr import ClientAddresses, client_key
from kiln_gateway.eventids import EventIdError, EventIdNotYours, EventIds, holder_name
from kiln_gateway.projection import project
from kiln_gateway.ratelimit import RateLimiter, SpentTokens
from kiln_gateway.router import EventRouter, Subscription
from kiln_gateway.settings import Settings
from kiln_gateway.specs import SpecError, launch_path, parse
from kilnbus import LaunchRequested, Phase, PhaseEvent, Topics
from kilnbus.dispatch import Publisher
from kilnbus.sealing import Sealer

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(body: dict[str, Any], event_id: str | None = None) -> str:
    lines = [f"id: {event_id}"] if event_id else []
    lines.append("data: " + json.dumps(body, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def failure(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    """An error as BinderHub sends it on the event stream: one ``failed`` event, and the status."""
    body = sse_event({"phase": "failed", "status_code": status, "message": message.rstrip("\n") + "\n"})
    return Response(body, status_code=status, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})})


def origin_of(request: Request) -> str:
    """The origin a build token is bound to: the Origin header's host, else the Host header."""
    origin = request.headers.get("origin", "")
    if origin:
        return origin.split("://", 1)[-1]
    return request.headers.get("host", "")


def banned(settings: Settings, ip: str) -> str | None:
    """The label of the banned network ``ip`` belongs to, if any."""
    if not settings.ban_networks or not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    for cidr, label in settings.ban_networks.items():
        if addr in ipaddress.ip_network(cidr, strict=False):
            return label
    return None


@dataclass
class LaunchStreams:
    """Everything the /build endpoint needs, made once at start-up."""

    settings: Settings
    router: EventRouter
    producer: Publisher  # the bus (kiln_gateway.ports); publish() waits for its acknowledgement
    topics: Topics
    sealer: Sealer | None
    event_ids: EventIds
    build_tokens: BuildTokens
    rate_limiter: RateLimiter
    addresses: ClientAddresses
    auth: HubAuth | None = None
    # Shared with nothing else: the /v2 page only issues tokens; spending them is this door's business.
    spent_tokens: SpentTokens = field(default_factory=SpentTokens)

    async def handle(self, request: Request) -> Response:
        provider = request.path_params["provider"]
        raw_spec = request.path_params["spec"]
        ip = self.addresses.of(request)
        if "text/event-stream" not in request.headers.get("accept", ""):
            return failure("This endpoint streams events: send 'Accept: text/event-stream'.", 400)
        if label := banned(self.settings, ip):
            return failure(f"Requests from {label} are not allowed.", 403)
        hub_user = None
        if self.auth is not None and self.auth.enabled:
            hub_user = self.auth.user(request)
            if hub_user is None:
                return failure("Authentication required: log in to this Binder first.", 403)
        try:
            launch = parse(provider, raw_spec, self.settings.max_spec_length)
        except SpecError as exc:
            metrics.REFUSED.labels(reason="spec").inc()
            return failure(str(exc), exc.status)
        try:
            # BinderHub's clients add the path to open themselves, but a client that sends one here
            # is held to the loading page's rules: nothing that leaves the server is accepted.
            q = request.query_params
            launch_path(q.get("urlpath"), q.get("labpath"), q.get("filepath"))
        except SpecError as exc:
            metrics.REFUSED.labels(reason="path").inc()
            return failure(str(exc), exc.status)
        build_only = request.query_params.get("build_only", "").lower() == "true"
        if build_only and not self.settings.enable_api_only_mode:
            return failure("build_only=true is allowed only in API-only mode.", 400)

        context = {
            "binder_launch_host": self.settings.badge_base_url or str(request.base_url),
            "binder_request": f"v2/{provider}/{launch.spec}",
            "binder_client_ip": ip,
        }
        key = client_key(ip)
        holder = holder_name(hub_user, key)
        if last := request.headers.get("last-event-id"):
            return await self._resume(last, context, holder, hub_user)

        headers: dict[str, str] = {}
        charged = bool(self.rate_limiter.limit) and hub_user is None  # logged-in users are not limited (as BinderHub)
        token = request.query_params.get("build_token")
        if token:
            try:
                checked = self.build_tokens.check(token, provider, launch.spec, origin_of(request))
            except BuildTokenError as exc:
                return failure(str(exc), 403)
            # The page that issued the token charged its client for one launch: the token's first
            # launch is that one. Any further launch with it is charged like one without a token,
            # or a script could fetch one token and launch with it until it expires.
            if checked.token_id is not None and self.spent_tokens.spend(checked.token_id, checked.expires_at):
                charged = False
        if charged:
            verdict = self.rate_limiter.hit(key)
            headers = verdict.headers()
            if not verdict.allowed:
                metrics.REFUSED.labels(reason="rate_limit").inc()
                return failure(f"Rate limit exceeded. Try again in {verdict.retry_after()} seconds.", 429, headers)

        request_id = uuid.uuid4().hex
        sub = self.router.subscribe(request_id, self.settings.stream_buffer)  # before publishing: no event missed
        # The accepted event starts the request's record in the log (analytics' clock starts here,
        # and it carries what BinderHub's launch event needs); both go out in one round trip.
        accepted = PhaseEvent(request_id=request_id, phase=Phase.ACCEPTED, service="gateway", provider=provider,
                              spec=launch.spec, launch_host=request.headers.get("host", ""),
                              request_origin=request.headers.get("origin") or request.headers.get("sec-fetch-site", ""),
                              build_token=bool(token))
        try:
            await asyncio.wait_for(asyncio.gather(
                self.producer.publish(self.topics.launch_requested, request_id, LaunchRequested(
                    request_id=request_id, provider=provider, spec=launch.spec, launch_host=context["binder_launch_host"],
                    build_only=build_only, client_ip=ip or None, hub_user=hub_user)),
                self.producer.publish(self.topics.phase_events, request_id, accepted),
            ), self.settings.publish_timeout_s)
        except (KafkaError, TimeoutError) as exc:
            self.router.unsubscribe(sub)
            log.error("could not publish launch request %s: %r", request_id, exc)
            return failure("Kiln cannot take launch requests right now (its event bus is unreachable). Please try again shortly.", 503)
        metrics.LAUNCH_REQUESTS.labels(provider=provider).inc()
        return self._stream(sub, context, holder, provider, started=time.monotonic(), headers=headers)

    async def _resume(self, last_event_id: str, context: dict[str, str], holder: str, hub_user: str | None) -> Response:
        try:
            event_id = self.event_ids.check(last_event_id, holder)
        except EventIdNotYours:
            metrics.REFUSED.labels(reason="event_id_holder").inc()
            who = ("another hub user" if hub_user is not None else
                   "another network address (a resume must come from the address the launch came from)")
            return failure(f"This launch was started by {who}, so it cannot be resumed here; start a new launch.", 403)
        except EventIdError as exc:
            metrics.REFUSED.labels(reason="event_id").inc()
            return failure(str(exc), 400)
        sub = self.router.subscribe(event_id.request_id, self.settings.stream_buffer)
        try:
            seen = await self.router.replay(sub, event_id.partition, event_id.offset)
        except (KafkaError, ValueError) as exc:
            self.router.unsubscribe(sub)
            log.warning("resuming the stream of %s failed: %r", event_id.request_id, exc)
            return failure("Cannot resume this stream right now; please try again shortly.", 503)
        if seen is not None and seen.is_terminal:
            self.router.unsubscribe(sub)
            return Response(status_code=204)  # the stream had ended; 204 tells EventSource not to reconnect
        metrics.RESUMES.inc()
        return self._stream(sub, context, holder, provider=None, started=None)

    def _stream(self, sub: Subscription, context: dict[str, str], holder: str, provider: str | None,
                started: float | None, headers: dict[str, str] | None = None) -> StreamingResponse:
        return StreamingResponse(self._events(sub, context, holder, provider, started), media_type="text/event-stream",
                                 headers={**SSE_HEADERS, **(headers or {})})

    async def _events(self, sub: Subscription, context: dict[str, str], holder: str, provider: str | None,
                      started: float | None) -> AsyncIterator[str]:
        """The stream's events as SSE; each id is bound to ``holder``, the client this stream serves."""
        metrics.OPEN_STREAMS.inc()
        idle_since = time.monotonic()
        try:
            while True:
                item = await sub.next(timeout=self.settings.heartbeat_interval_s)
                if item is None:
                    if time.monotonic() - idle_since > self.settings.stream_timeout_s:
                        yield sse_event({"phase": "failed", "message": "Kiln has heard nothing about this launch for "
                                         f"{self.settings.stream_timeout_s:.0f} seconds and gives up waiting.\n"})
                        return
                    yield ":heartbeat\n\n"
                    continue
                idle_since = time.monotonic()
                if dropped := sub.take_dropped():
                    yield sse_event({"phase": "building", "message": f"[... {dropped} log lines skipped: this connection "
                                     "is slower than the build ...]\n"})
                body = project(item.event, self.sealer, context, sub.request_id)
                if body is None:
                    continue
                yield sse_event(body, self.event_ids.format(sub.request_id, item.partition, item.offset, holder))
                if body["phase"] in ("ready", "failed"):
                    if provider is not None and started is not None:
                        status = "success" if body["phase"] == "ready" else "failure"
                        metrics.LAUNCHES.labels(status=status, provider=provider).inc()
                        if status == "success":
                            metrics.TIME_TO_READY.observe(time.monotonic() - started)
                    return
        finally:
            metrics.OPEN_STREAMS.dec()
            self.router.unsubscribe(sub)


