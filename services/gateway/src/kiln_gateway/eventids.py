"""Event ids on the stream: where an event sits in the log, signed, and bound to the client that holds it.

``<request id>.<partition>.<offset>.<issued at>.<holder>.<signature>``: the signature is an
HMAC-SHA256, with the gateway's resume secret, of everything before it. So nobody who has read
request ids from the log (analytics included) can resume someone else's stream and read its token,
and the holder of a genuine id cannot move it: a resume replays the request's own events from the
exact position the gateway handed out, never from a partition or offset the client chose. Ids
expire (``issued at`` is in Unix seconds) so one that leaked in a log or a proxy is worthless a day
later.

``holder`` binds the id to who may resume with it: an HMAC of the request id and of the holder's
name (:func:`holder_name`), which is the hub user in the authenticated mode and the client's key
(its address, an IPv6 /64) otherwise. An id is a capability for the request's server token until it
expires, so without the binding any copy of it (a shared HAR file, a screenshot of the devtools) would
hand the token to whoever has it; with it, the copy is worth something only to the same login, or
from the same network address. A browser reconnecting after a blip sends the same session cookie
and comes from the same address, so it resumes. The holder is a separate field, under the
signature, so a resume by someone else is told exactly that (403), not that the id is forged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass

_ID = re.compile(r"^([0-9a-f]{32})\.(\d{1,6})\.(\d{1,19})\.(\d{1,12})\.([0-9a-f]{16})\.([0-9a-f]{32})$")
# Gateways sharing the secret may disagree on the time a little; an id from slightly in the future
# is one of theirs, not a forgery (which the signature rules out anyway).
_CLOCK_SKEW_S = 300


class EventIdError(ValueError):
    """A ``Last-Event-ID`` that cannot be resumed from; the message is for the client."""


class EventIdNotYours(EventIdError):
    """A genuine, unexpired ``Last-Event-ID`` that was issued to another holder."""


def holder_name(hub_user: str | None, client_key: str) -> str:
    """Who an event id belongs to: the hub user when there is a login, else the client's key.

    The two kinds are prefixed so that no address can ever equal a user name.
    """
    return f"user:{hub_user}" if hub_user is not None else f"addr:{client_key}"


@dataclass(frozen=True)
class EventId:
    """A verified position in the log of one request."""

    request_id: str
    partition: int
    offset: int
    issued_at: int


class EventIds:
    """Issues and checks signed, expiring event ids bound to their holder."""

    def __init__(self, secret: str, lifetime_s: int = 86400) -> None:
        self._key = secret.encode()
        self.lifetime_s = lifetime_s

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def _holder(self, request_id: str, holder: str) -> str:
        # Keyed and per request: the field neither reveals the holder's address nor links one
        # client's launches to each other. 64 bits: it cannot be forged (the signature covers it),
        # only matched by being the holder.
        return self._mac(f"holder\0{request_id}\0{holder}")[:16]

    def format(self, request_id: str, partition: int, offset: int, holder: str = "", now: float | None = None) -> str:
        issued_at = int(time.time() if now is None else now)
        body = f"{request_id}.{partition}.{offset}.{issued_at}.{self._holder(request_id, holder)}"
        return f"{body}.{self._mac(body)[:32]}"

    def check(self, value: str, holder: str = "", now: float | None = None) -> EventId:
        """The id's parts; EventIdError when it is malformed, not signed by this secret or expired,
        and EventIdNotYours when it is genuine but was issued to another ``holder``."""
        m = _ID.match(value.strip())
        if m is None:
            raise EventIdError("Last-Event-ID is not an event id this Kiln issued.")
        request_id, partition, offset, issued_at = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        body = value.strip().rsplit(".", 1)[0]
        if not hmac.compare_digest(m.group(6), self._mac(body)[:32]):
            raise EventIdError("Last-Event-ID is not an event id this Kiln issued.")
        now = time.time() if now is None else now
        if issued_at > now + _CLOCK_SKEW_S:
            raise EventIdError("Last-Event-ID is not an event id this Kiln issued.")
        if now - issued_at > self.lifetime_s:
            raise EventIdError(f"Last-Event-ID has expired (event ids are valid for {self.lifetime_s} seconds); "
                               "start a new launch instead of resuming this one.")
        if not hmac.compare_digest(m.group(5), self._holder(request_id, holder)):
            raise EventIdNotYours("Last-Event-ID belongs to a stream another client started; "
                                  "start a new launch instead of resuming this one.")
        return EventId(request_id, partition, offset, issued_at)

    def parse(self, value: str, holder: str = "", now: float | None = None) -> EventId | None:
        """The id's parts, or None when :meth:`check` refuses it."""
        try:
            return self.check(value, holder, now)
        except EventIdError:
            return None
