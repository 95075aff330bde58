"""The records that travel on Kiln's topics, one dataclass per Avro schema in ``schemas/``.

Field names and types mirror the ``.avsc`` files exactly; a test checks that they agree.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Self, TypeVar

R = TypeVar("R", bound="Record")


def utcnow() -> datetime:
    """Now, in UTC, at the millisecond precision Avro's timestamp-millis keeps."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Phase(str, enum.Enum):
    """Phases of a request: BinderHub's event-stream phases, then Kiln's own."""

    WAITING = "waiting"
    FETCHING = "fetching"
    BUILDING = "building"
    PUSHING = "pushing"
    BUILT = "built"
    LAUNCHING = "launching"
    READY = "ready"
    FAILED = "failed"
    UNKNOWN = "unknown"
    ACCEPTED = "accepted"
    RESOLVED = "resolved"
    STOPPED = "stopped"

    @property
    def is_terminal(self) -> bool:
        """After this phase the client's stream ends."""
        return self in (Phase.READY, Phase.FAILED)


@dataclass
class Record:
    """Base of every record on the bus. ``AVRO_NAME`` ties a class to its schema."""

    AVRO_NAME: ClassVar[str] = ""

    def to_avro(self) -> dict[str, Any]:
        """The record as the dict fastavro writes (shallow: records hold no nested records but progress)."""
        return {name: getattr(self, name) for name in self._field_names()}

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_FIELD_NAMES")
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(cls))
            cls._FIELD_NAMES = names  # type: ignore[attr-defined]
        return names

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> Self:
        """Build the record from the dict fastavro read (already resolved to the current schema).

        The reader schema guarantees every field is present, so ``__init__`` is skipped: it would
        only check again what Avro resolution has already checked, on the consumer's hot path.
        """
        record = object.__new__(cls)
        record.__dict__.update(data)
        return record


@dataclass
class LaunchRequested(Record):
    """A client asked for ``<provider>/<spec>`` to be launched (gateway -> resolver)."""

    AVRO_NAME: ClassVar[str] = "org.kiln.events.LaunchRequested"
    request_id: str
    provider: str
    spec: str
    requested_at: datetime = field(default_factory=utcnow)
    launch_host: str = ""
    hub_user: str | None = None
    build_only: bool = False
    client_ip: str | None = None


@dataclass
class BuildRequested(Record):
    """No image exists for a resolved commit: build it (resolver -> builder, keyed by image)."""

    AVRO_NAME: ClassVar[str] = "org.kiln.events.BuildRequested"
    request_id: str
    image_name: str
    repo_url: str
    ref: str
    provider: str
    spec: str
    ref_url: str = ""
    resolved_spec: str = ""
    requested_at: datetime = field(default_factory=utcnow)
    launch: bool = True
    hub_user: str | None = None
    launch_host: str = ""
    client_ip: str | None = None
    content: str = "git"  # git, or a data repository's kind: how the builder fetches repo_url (schema v2)


@dataclass
class HubLaunchRequested(Record):
    """An image is in the registry: start a server from it (resolver/builder -> launcher)."""

    AVRO_NAME: ClassVar[str] = "org.kiln.events.HubLaunchRequested"
    request_id: str
    image_name: str
    repo_url: str
    ref: str
    provider: str
    spec: str
    ref_url: str = ""
    resolved_spec: str = ""
    requested_at: datetime = field(default_factory=utcnow)
    hub_user: str | None = None
    launch_host: str = ""
    client_ip: str | None = None

    @classmethod
    def from_build(cls, build: BuildRequested) -> HubLaunchRequested:
        """The launch of the image ``build`` asked for (by the resolver for a cached image, or the builder once built)."""
        return cls(request_id=build.request_id, image_name=build.image_name, repo_url=build.repo_url, ref=build.ref,
                   provider=build.provider, spec=build.spec, ref_url=build.ref_url, resolved_spec=build.resolved_spec,
                   requested_at=build.requested_at, hub_user=build.hub_user, launch_host=build.launch_host,
                   client_ip=build.client_ip)


@dataclass
class LayerProgress:
    """Push progress of one image layer: bytes so far and in all, or a status word."""

    current: int | None = None
    total: int | None = None
    status: str | None = None


@dataclass
class PhaseEvent(Record):
    """One step in the life of a request; the client's event stream is a projection of these."""

    AVRO_NAME: ClassVar[str] = "org.kiln.events.PhaseEvent"
    request_id: str
    phase: Phase
    service: str
    timestamp: datetime = field(default_factory=utcnow)
    message: str = ""
    image_name: str | None = None
    progress: dict[str, LayerProgress] | None = None
    url: str | None = None
    sealed_token: bytes | None = None
    failure_cause: str | None = None
    status_code: int | None = None
    provider: str | None = None
    spec: str | None = None
    repo_url: str | None = None
    ref: str | None = None
    ref_url: str | None = None
    resolved_spec: str | None = None
    launch_host: str | None = None
    server_name: str | None = None
    queue_position: int | None = None
    request_origin: str | None = None
    build_token: bool | None = None
    warm: bool | None = None
    client_tag: str | None = None
    private: bool | None = None

    def to_avro(self) -> dict[str, Any]:
        out = super().to_avro()
        out["phase"] = self.phase.value
        if self.progress is not None:
            out["progress"] = {k: vars(v) for k, v in self.progress.items()}
        return out

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> PhaseEvent:
        data["phase"] = Phase(data["phase"])
        if data["progress"] is not None:
            data["progress"] = {k: LayerProgress(**v) for k, v in data["progress"].items()}
        return super().from_avro(data)


@dataclass
class DeadLetter(Record):
    """A message a consumer could not handle, set aside with where it came from and why."""

    AVRO_NAME: ClassVar[str] = "org.kiln.events.DeadLetter"
    source_topic: str
    source_partition: int
    source_offset: int
    consumer_group: str
    error: str
    key: bytes | None = None
    value: bytes | None = None
    failed_at: datetime = field(default_factory=utcnow)


RECORD_TYPES: tuple[type[Record], ...] = (LaunchRequested, BuildRequested, HubLaunchRequested, PhaseEvent, DeadLetter)
