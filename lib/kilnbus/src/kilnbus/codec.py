"""Avro single-object encoding of Kiln's records, with schema resolution on read.

Every message is ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of the writer's schema
(little-endian) + the Avro body. The reader looks the fingerprint up among the schemas it knows,
current and previous, and resolves the body to the current version of that record, so fields
added later with defaults are filled in and old messages stay readable.
"""

from __future__ import annotations

import io
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar, cast, overload

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from kilnbus.records import RECORD_TYPES, Record
from kilnbus.schemas import load_schemas

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8
R = TypeVar("R", bound=Record)


class DecodeError(ValueError):
    """A message is not a Kiln record this codec can read."""


class UnknownSchemaError(DecodeError):
    """The message names a writer schema this codec has never seen."""


def _parse(schema: dict[str, Any]) -> dict[str, Any]:
    """fastavro's parse of a record schema (its return type covers every kind of schema)."""
    return cast(dict[str, Any], parse_schema(schema, named_schemas={}))


def schema_fingerprint(parsed: dict[str, Any]) -> bytes:
    """CRC-64-AVRO of the schema's parsing canonical form, in the little-endian order the spec uses."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


class AvroCodec:
    """Encodes records to single-object Avro and decodes any known writer version to the current one."""

    def __init__(self, current: list[dict[str, Any]], previous: tuple[dict[str, Any], ...] | list[dict[str, Any]] = ()) -> None:
        self._types = {t.AVRO_NAME: t for t in RECORD_TYPES}
        self._current: dict[str, tuple[Any, bytes]] = {}  # full name -> (parsed schema, header)
        self._writers: dict[bytes, tuple[str, Any]] = {}  # fingerprint -> (full name, parsed schema)
        self._timestamps: dict[str, list[str]] = {}  # full name -> its timestamp-millis fields
        for schema in current:
            parsed = _parse(schema)
            name = parsed["name"]
            if name not in self._types:
                raise ValueError(f"schema {name} has no record class in kilnbus.records")
            fp = schema_fingerprint(parsed)
            self._current[name] = (parsed, MAGIC + fp)
            self._timestamps[name] = [f["name"] for f in schema["fields"]
                                      if isinstance(f["type"], dict) and f["type"].get("logicalType") == "timestamp-millis"]
            self._writers[fp] = (name, parsed)
        for schema in previous:
            self.register_previous(schema)

    def register_previous(self, schema: dict[str, Any]) -> None:
        """Accept messages written with an older version of a record's schema."""
        parsed = _parse(schema)
        if parsed["name"] not in self._current:
            raise ValueError(f"previous schema {parsed['name']} has no current version")
        self._writers[schema_fingerprint(parsed)] = (parsed["name"], parsed)

    def encode(self, record: Record) -> bytes:
        """Single-object encoding of ``record`` with its current schema."""
        try:
            parsed, header = self._current[record.AVRO_NAME]
        except KeyError:
            raise TypeError(f"{type(record).__name__} has no schema in this codec") from None
        data = record.to_avro()
        for name in self._timestamps[record.AVRO_NAME]:
            # fastavro converts datetimes itself, at several times the cost of doing it here.
            value = data[name]
            if isinstance(value, datetime):
                data[name] = int(value.timestamp() * 1000)
        buf = io.BytesIO()
        buf.write(header)
        schemaless_writer(buf, parsed, data)
        return buf.getvalue()

    def encode_with(self, schema: dict[str, Any], data: dict[str, Any]) -> bytes:
        """Encode a plain dict with an explicit (e.g. older) schema: for tests and migrations."""
        parsed = _parse(schema)
        buf = io.BytesIO()
        buf.write(MAGIC + schema_fingerprint(parsed))
        schemaless_writer(buf, parsed, data)
        return buf.getvalue()

    @overload
    def decode(self, data: bytes | None) -> Record: ...

    @overload
    def decode(self, data: bytes | None, expect: type[R]) -> R: ...

    @overload
    def decode(self, data: bytes | None, expect: None) -> Record: ...

    def decode(self, data: bytes | None, expect: type[R] | None = None) -> R | Record:
        """Decode a message; raise DecodeError (with the reason) for anything that is not a known record."""
        if data is None:
            raise DecodeError("empty message (a tombstone), not a Kiln record")
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise DecodeError(f"not Avro single-object encoded (starts {data[:4]!r}, {len(data)} bytes)")
        fp = data[2:HEADER_LEN]
        try:
            name, writer = self._writers[fp]
        except KeyError:
            raise UnknownSchemaError(f"unknown writer schema fingerprint {fp.hex()}") from None
        reader, _ = self._current[name]
        try:
            raw = schemaless_reader(io.BytesIO(data[HEADER_LEN:]), writer, reader)
        except Exception as exc:  # fastavro raises many types for truncated or corrupt bodies
            raise DecodeError(f"corrupt {name} body: {exc!r}") from exc
        record_type = self._types[name]
        if expect is not None and record_type is not expect:
            raise DecodeError(f"expected {expect.__name__}, got {record_type.__name__}")
        try:
            return record_type.from_avro(cast(dict[str, Any], raw))
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"{name} does not fit {record_type.__name__}: {exc}") from exc


@lru_cache(maxsize=1)
def default_codec() -> AvroCodec:
    """The codec for Kiln's schemas as installed (current and previous versions)."""
    current, previous = load_schemas()
    return AvroCodec(current, previous)
