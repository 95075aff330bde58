"""Event ids on the stream: where an event sits in the log, signed so only its client can resume.

``<request id>.<partition>.<offset>.<signature>``: the signature (HMAC-SHA256 of the request id
with the gateway's resume secret) stops anyone who has read request ids from the log, analytics
included, from resuming someone else's stream and reading its token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

_ID = re.compile(r"^([0-9a-f]{32})\.(\d{1,6})\.(\d{1,19})\.([0-9a-f]{32})$")


@dataclass(frozen=True)
class EventId:
    request_id: str
    partition: int
    offset: int


class EventIds:
    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def _sign(self, request_id: str) -> str:
        return hmac.new(self._key, request_id.encode(), hashlib.sha256).hexdigest()[:32]

    def format(self, request_id: str, partition: int, offset: int) -> str:
        return f"{request_id}.{partition}.{offset}.{self._sign(request_id)}"

    def parse(self, value: str) -> EventId | None:
        """The id's parts, or None when it is malformed or not signed by this gateway's secret."""
        m = _ID.match(value.strip())
        if m is None or not hmac.compare_digest(m.group(4), self._sign(m.group(1))):
            return None
        return EventId(m.group(1), int(m.group(2)), int(m.group(3)))
