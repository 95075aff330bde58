"""kilnbus: the one library every Kiln service shares, for the Kafka bus and the Avro codec.

It holds only what crosses service boundaries: the record types, their Avro single-object
encoding, the topic declarations, and producer/consumer helpers with Kiln's delivery rules
(acks=all and idempotence on the way in, commit-after-handle and dead-lettering on the way out).
"""

from kilnbus.codec import AvroCodec, DecodeError, UnknownSchemaError, default_codec
from kilnbus.consumer import BusConsumer, Delivery, begin_attempt
from kilnbus.lifecycle import run_service
from kilnbus.producer import BusProducer
from kilnbus.runner import serve_consumer
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
from kilnbus.settings import BusSettings
from kilnbus.topics import Topic, Topics, ensure_topics

__all__ = [
    "AvroCodec",
    "BuildRequested",
    "BusConsumer",
    "begin_attempt",
    "BusProducer",
    "BusSettings",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "HubLaunchRequested",
    "LaunchRequested",
    "LayerProgress",
    "Phase",
    "PhaseEvent",
    "Record",
    "Topic",
    "Topics",
    "UnknownSchemaError",
    "default_codec",
    "ensure_topics",
    "run_service",
    "serve_consumer",
]
