"""What the web app answers from: the request records and whether they are caught up (a port).

``kiln_analytics.stream.Analytics`` is the one the service runs (faust over Kafka, built by
``kiln_analytics.bootstrap``); tests pass one over a plain ``RequestTable``.
"""

from __future__ import annotations

from typing import Protocol

from kiln_analytics.table import RequestTable


class RequestSource(Protocol):
    """Request records kept up to date from the log; ``start``/``stop`` follow the web app's lifespan."""

    requests: RequestTable

    @property
    def ready(self) -> bool:
        """Whether the records were recovered and the log is being read."""
        ...

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
