"""Event ids on the stream: where an event sits in the log, signed so only its client can resume.

``<request id>.<partition>.<offset>.<issued at>.<signature>``: the signature is an HMAC-SHA256,
with the gateway's resume secret, of everything before it. So nobody who has read request ids
from the log (analytics included) can resume someone else's stream and read its token, and the
holder of a genuine id cannot move it: a resume replays the request's own events from the exact
position the gateway handed out, never from a partition or offset the client chose. Ids expire
(``issued at`` is in Unix seconds) so one that leaked in a log or a proxy is worthless a day later.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass

_ID = re.compile(r"^([0-9a-f]{32})\.(\d{1,6})\.(\d{1,19})\.(\d{1,12})\.([0-9a-f]{32})$")
# Gateways sharing the secret may disagree on the time a little; an id from slightly in the future
# is one of theirs, not a forgery (which the signature rules out anyway).
_CLOCK_SKEW_S = 300


class EventIdError(ValueError):
    """A ``Last-Event-ID`` that cannot be resumed from; the message is for the client."""


@dataclass(frozen=True)
class EventId:
    """A verified position in the log of one request."""

    request_id: str
    partition: int
    offset: int
    issued_at: int


class EventIds:
    """Issues and checks signed, expiring event ids."""

    def __init__(self, secret: str, lifetime_s: int = 86400) -> None:
        self._key = secret.encode()
        self.lifetime_s = lifetime_s

    def _sign(self, request_id: str, partition: int, offset: int, issued_at: int) -> str:
        message = f"{request_id}.{partition}.{offset}.{issued_at}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def format(self, request_id: str, partition: int, offset: int, now: float | None = None) -> str:
        issued_at = int(time.time() if now is None else now)
        return f"{request_id}.{partition}.{offset}.{issued_at}.{self._sign(request_id, partition, offset, issued_at)}"

    def check(self, value: str, now: float | None = None) -> EventId:
        """The id's parts; EventIdError when it is malformed, not signed by this secret, or expired."""
        m = _ID.match(value.strip())
        if m is None:
            raise EventIdError("Last-Event-ID is not an event id this Kiln issued.")
        request_id, partition, offset, issued_at = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        if not hmac.compare_digest(m.group(5), self._sign(request_id, partition, offset, issued_at)):
            raise EventIdError("Last-Event-ID is not an event id this Kiln issued.")
        now = time.time() if now is None else now
        if issued_at > now + _CLOCK_SKEW_S:
            raise EventIdError("Last-Event-ID is not an event id this Kiln issued.")
        if now - issued_at > self.lifetime_s:
            raise EventIdError(f"Last-Event-ID has expired (event ids are valid for {self.lifetime_s} seconds); "
                               "start a new launch instead of resuming this one.")
        return EventId(request_id, partition, offset, issued_at)

    def parse(self, value: str, now: float | None = None) -> EventId | None:
        """The id's parts, or None when :meth:`check` refuses it."""
        try:
            return self.check(value, now)
        except EventIdError:
            return None
