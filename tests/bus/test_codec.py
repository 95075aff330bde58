"""The Avro codec: every schema round-trips, old writers are readable, garbage is refused clearly."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kilnbus import (
    AvroCodec,
    BuildRequested,
    DeadLetter,
    DecodeError,
    HubLaunchRequested,
    LaunchRequested,
    LayerProgress,
    Phase,
    PhaseEvent,
    UnknownSchemaError,
    default_codec,
)
from kilnbus.codec import MAGIC
from kilnbus.records import RECORD_TYPES
from kilnbus.schemas import load_schemas, schema_dir

WHEN = datetime(2026, 11, 26, 12, 0, 0, 123000, tzinfo=UTC)

SAMPLES = [
    LaunchRequested(request_id="r1", provider="gh", spec="org/repo/main", requested_at=WHEN,
                    launch_host="http://127.0.0.1:8585/", hub_user="ana", build_only=True, client_ip="127.0.0.1"),
    BuildRequested(request_id="r2", image_name="127.0.0.1:5000/kiln/org-2drepo:abc", repo_url="https://x/y.git",
                   ref="a" * 40, provider="gh", spec="org/repo/main", ref_url="https://x/y/tree/a",
                   resolved_spec="org/repo/" + "a" * 40, requested_at=WHEN),
    HubLaunchRequested(request_id="r3", image_name="img:1", repo_url="https://x/y.git", ref="b" * 40,
                       provider="git", spec="https%3A%2F%2Fx%2Fy.git/HEAD", requested_at=WHEN, hub_user=None),
    PhaseEvent(request_id="r4", phase=Phase.PUSHING, service="builder", timestamp=WHEN, message="Pushing image\n",
               progress={"sha256:1": LayerProgress(current=10, total=20), "sha256:2": LayerProgress(status="Pushed")}),
    PhaseEvent(request_id="r5", phase=Phase.READY, service="launcher", timestamp=WHEN, url="http://127.0.0.1:8000/user/x/",
               sealed_token=b"\x00sealed\xff", image_name="img:1"),
    DeadLetter(source_topic="t", source_partition=1, source_offset=7, consumer_group="g", error="bad",
               key=b"k", value=b"\x00\x01", failed_at=WHEN),
]


def test_every_record_type_has_a_sample_and_a_schema() -> None:
    assert {type(s) for s in SAMPLES} == set(RECORD_TYPES)
    current, _ = load_schemas()
    assert {f"{s['namespace']}.{s['name']}" for s in current} == {t.AVRO_NAME for t in RECORD_TYPES}


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
def test_dataclass_fields_match_schema(record_type: type) -> None:
    """The Python records and the .avsc files must not drift apart."""
    schema = next(s for s in load_schemas()[0] if f"{s['namespace']}.{s['name']}" == record_type.AVRO_NAME)
    assert [f["name"] for f in schema["fields"]] == [f.name for f in dataclasses.fields(record_type)]
    for field in schema["fields"]:
        # Every field added after the first version needs a default, or old messages become unreadable.
        dc_field = next(f for f in dataclasses.fields(record_type) if f.name == field["name"])
        has_py_default = dc_field.default is not dataclasses.MISSING or dc_field.default_factory is not dataclasses.MISSING
        if "default" in field:
            assert has_py_default, f"{field['name']} has an Avro default but no Python default"


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__ + ":" + getattr(r, "request_id", "dl"))
def test_round_trip(record: Any) -> None:
    codec = default_codec()
    data = codec.encode(record)
    assert data[:2] == MAGIC
    assert codec.decode(data) == record
    assert codec.decode(data, expect=type(record)) == record


def test_single_object_header_is_the_spec_fingerprint() -> None:
    """The 8 bytes after C3 01 are CRC-64-AVRO of the canonical form, little-endian (the spec's test value for "int")."""
    from fastavro import parse_schema

    from kilnbus.codec import schema_fingerprint

    assert schema_fingerprint(parse_schema("int")) == (0x7275D51A3F395C8F).to_bytes(8, "little")


def _older(schema: dict[str, Any], drop: set[str]) -> dict[str, Any]:
    older = copy.deepcopy(schema)
    older["fields"] = [f for f in older["fields"] if f["name"] not in drop]
    return older


def _current(name: str) -> dict[str, Any]:
    return next(s for s in load_schemas()[0] if s["name"] == name)


def test_message_from_an_older_schema_is_read_with_defaults() -> None:
    """A v1 writer that lacked fields added later: the current reader fills in their defaults."""
    v1 = _older(_current("PhaseEvent"), {"failure_cause", "status_code", "queue_position", "server_name"})
    codec = default_codec()
    fresh = AvroCodec(*load_schemas())
    written = fresh.encode_with(v1, {
        "request_id": "old", "phase": "building", "service": "builder", "timestamp": WHEN, "message": "Step 1/3",
        "image_name": None, "progress": None, "url": None, "sealed_token": None, "provider": None, "spec": None,
        "repo_url": None, "ref": None, "ref_url": None, "resolved_spec": None, "launch_host": None,
    })
    with pytest.raises(UnknownSchemaError):
        codec.decode(written)  # not registered: the reader cannot guess the writer's schema
    fresh.register_previous(v1)
    event = fresh.decode(written)
    assert isinstance(event, PhaseEvent)
    assert (event.request_id, event.phase, event.message) == ("old", Phase.BUILDING, "Step 1/3")
    assert event.failure_cause is None and event.queue_position is None


def test_previous_schemas_folder_is_loaded(tmp_path: Any) -> None:
    """Superseded versions kept in schemas/previous/ are accepted by the default loader."""
    for p in schema_dir().glob("*.avsc"):
        (tmp_path / p.name).write_text(p.read_text())
    (tmp_path / "previous").mkdir()
    v1 = _older(_current("LaunchRequested"), {"client_ip", "build_only"})
    (tmp_path / "previous" / "launch_requested.v1.avsc").write_text(json.dumps(v1))
    codec = AvroCodec(*load_schemas(tmp_path))
    data = codec.encode_with(v1, {"request_id": "x", "provider": "gh", "spec": "a/b/c", "requested_at": WHEN,
                                  "launch_host": "", "hub_user": None})
    assert codec.decode(data) == LaunchRequested(request_id="x", provider="gh", spec="a/b/c", requested_at=WHEN)


def test_newer_phase_symbol_reads_as_unknown() -> None:
    """A writer that knows a phase this reader does not: the enum default keeps the message readable."""
    newer = copy.deepcopy(_current("PhaseEvent"))
    newer["fields"][1]["type"]["symbols"].append("teleporting")
    codec = AvroCodec(*load_schemas())
    codec.register_previous(newer)  # "previous" means "other known writer"; direction does not matter
    base = SAMPLES[3].to_avro()
    data = codec.encode_with(newer, {**base, "phase": "teleporting", "progress": None})
    assert codec.decode(data).phase is Phase.UNKNOWN


@pytest.mark.parametrize(
    "garbage, reason",
    [
        (None, "tombstone"),
        (b"", "not Avro single-object"),
        (b'{"phase": "ready"}', "not Avro single-object"),
        (MAGIC + b"\x00" * 8 + b"body", "unknown writer schema"),
    ],
)
def test_garbage_is_refused_with_a_reason(garbage: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        default_codec().decode(garbage)


def test_truncated_body_is_a_decode_error() -> None:
    data = default_codec().encode(SAMPLES[4])
    with pytest.raises(DecodeError, match="corrupt"):
        default_codec().decode(data[:-12])


def test_wrong_record_type_is_refused() -> None:
    data = default_codec().encode(SAMPLES[0])
    with pytest.raises(DecodeError, match="expected PhaseEvent"):
        default_codec().decode(data, expect=PhaseEvent)


@given(
    request_id=st.text(min_size=1, max_size=64),
    message=st.text(max_size=500),
    phase=st.sampled_from(list(Phase)),
    layers=st.dictionaries(st.text(max_size=20), st.builds(LayerProgress, st.none() | st.integers(0, 2**62),
                                                           st.none() | st.integers(0, 2**62), st.none() | st.text(max_size=20)),
                           max_size=5),
    token=st.none() | st.binary(max_size=200),
)
def test_any_phase_event_round_trips(request_id: str, message: str, phase: Phase,
                                     layers: dict[str, LayerProgress], token: bytes | None) -> None:
    event = PhaseEvent(request_id=request_id, phase=phase, service="s", timestamp=WHEN, message=message,
                       progress=layers or None, sealed_token=token)
    assert default_codec().decode(default_codec().encode(event)) == event
