"""kilnbus: the one library every Kiln service shares, for the bus and the Avro codec.

It holds only what crosses service boundaries: the record types, their Avro single-object
encoding, the topic declarations, the error tree, and the bus a service is written against
(``Bus``: ``KafkaBus`` with Kiln's delivery rules, acks=all and idempotence on the way in,
commit-after-handle and dead-lettering on the way out; ``MemoryBus`` with the same semantics in one
process), its handler contract (``kilnbus.dispatch``), log readers and the phase reporter.
"""

from kilnbus.bus import Bus, Consumer, KafkaBus, Routes, serve
from kilnbus.codec import AvroCodec, DecodeError, UnknownSchemaError, default_codec
from kilnbus.consumer import BusConsumer, begin_attempt
from kilnbus.dispatch import Delivery, Handler, Outgoing
from kilnbus.errors import (
                            BadRequest,
                            Forbidden,
                            InternalError,
                            KilnError,
                            NotFound,
                            TooManyRequests,
                            TransientError,
                            Unavailable,
                            is_transient,
)
from kilnbus.follow import LogFollower
from kilnbus.lifecycle import run_service
from kilnbus.memory import MemoryBus
from kilnbus.producer import BusProducer
from kilnbus.reader import KafkaLogReader, LogReader, LogRecord, PartitionsNotFound, Position
from kilnbus.records import (
                            BuildRequested,
                            DeadLetter,
                            HubLaunchRequested,
                            LaunchRequested,
                            LayerProgress,
                            Phase,
                            PhaseEvent,
                            Record,
)
from kilnbus.reporter import PhaseReporter
from kilnbus.runner import serve_consumer
from kilnbus.settings import BusSettings
from kilnbus.topics import Topic, Topics, ensure_topics

__all__ = [
                            "AvroCodec",
                            "BadRequest",
                            "BuildRequested",
                            "Bus",
                            "BusConsumer",
                            "BusProducer",
                            "BusSettings",
                            "Consumer",
                            "DeadLetter",
                            "DecodeError",
                            "Delivery",
                            "Forbidden",
                            "Handler",
                            "HubLaunchRequested",
                            "InternalError",
                            "KafkaBus",
                            "KafkaLogReader",
                            "KilnError",
                            "LaunchRequested",
                            "LayerProgress",
                            "LogFollower",
                            "LogReader",
                            "LogRecord",
                            "MemoryBus",
                            "NotFound",
                            "Outgoing",
                            "PartitionsNotFound",
                            "Phase",
                            "PhaseEvent",
                            "PhaseReporter",
                            "Position",
                            "Record",
                            "Routes",
                            "TooManyRequests",
                            "Topic",
                            "Topics",
                            "TransientError",
                            "Unavailable",
                            "UnknownSchemaError",
                            "begin_attempt",
                            "default_codec",
                            "ensure_topics",
                            "is_transient",
                            "run_service",
                            "serve",
                            "serve_consumer",
]
