"""The requests table and its index: phase events folded into one record per request.

``RequestTable`` holds the fold's state in any mapping of request id to JSON record: the faust
table in the service (``kiln_analytics.stream``, kept in a changelog topic), a ``dict`` in tests.
Events are folded a batch at a time and each request's record is written once per batch, however
many of its events the batch held: a changelog write costs far more than a fold. The index
(``kiln_analytics.index``) is kept beside it, updated with every write and rebuilt from the table
after a recovery, so both always agree.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping

from kiln_analytics.index import Index
from kiln_analytics.requests import RequestRecord, fold
from kilnbus import AvroCodec, PhaseEvent, default_codec


class RequestTable:
    """Request records keyed by request id (bytes), and the index answered from."""

    def __init__(self, table: MutableMapping[bytes, bytes], codec: AvroCodec | None = None) -> None:
        self._table = table
        self._codec = codec or default_codec()
        self.index = Index()

    def decode(self, value: bytes | None) -> PhaseEvent:
        """The phase event in ``value``; ``kilnbus.DecodeError`` when it holds none."""
        event = self._codec.decode(value, expect=PhaseEvent)
        assert isinstance(event, PhaseEvent)
        return event

    def fold(self, events: Iterable[PhaseEvent]) -> int:
        """Fold a batch of events in; returns how many records were written."""
        dirty: dict[bytes, RequestRecord] = {}
        for event in events:
            key = event.request_id.encode()
            before = dirty.get(key)
            if before is None and (stored := self._table.get(key)) is not None:
                before = RequestRecord.loads(stored)
            after = fold(before, event)
            if after is not None:
                dirty[key] = after
        for key, record in dirty.items():
            self._table[key] = record.dumps()
            self.index.update(record)
        return len(dirty)

    def recovered(self) -> None:
        """The table was filled from elsewhere (faust's changelog): rebuild the index from it."""
        self.index.rebuild(self.records())

    def records(self) -> list[RequestRecord]:
        return [RequestRecord.loads(v) for v in self._table.values()]

    def record(self, request_id: str) -> RequestRecord | None:
        value = self._table.get(request_id.encode())
        return RequestRecord.loads(value) if value is not None else None

    def __len__(self) -> int:
        return len(self.index)
