"""Bus settings, read once from the environment (prefix ``KILN_``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BusSettings(BaseSettings):
    """Where Kafka is and how to reach it. Every service embeds these."""

    model_config = SettingsConfigDict(env_prefix="KILN_", extra="ignore")

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated.")
    topic_prefix: str = Field("kiln.", description="Prefix of every Kiln topic; lets several Kilns share a cluster.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to the brokers."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: str | None = Field(None, description="SASL password.")
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle that signed the brokers' certificates.")
    topic_partitions: int = Field(6, ge=1, description="Partitions of each Kiln topic when Kiln creates it.")
    topic_replication: int = Field(1, ge=1, description="Replication factor of each Kiln topic when Kiln creates it.")
    handler_max_crashes: int = Field(3, ge=0, description="A request in hand during this many crashes of the service "
                                     "handling it (OOM kill, SIGKILL) is set aside with a failed event instead of being "
                                     "tried again; 0: never.")
    kafka_group_instance_id: str | None = Field(
        None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$",
        description="Static group membership (Kafka's group.instance.id): a name unique to this instance that "
                    "stays the same when it restarts, so a crashed and restarted instance takes its partitions "
                    "back at once instead of after the session timeout. A stopped static member does not leave its "
                    "group: its partitions wait for it up to the session timeout. Unset: dynamic membership.")
    metrics_host: str = Field("127.0.0.1", description="Address of the /metrics server of services without a web app.")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Port of that /metrics server; unset: none.")

    def group_id(self, name: str) -> str:
        """The consumer group a service called ``name`` joins.

        Under the default prefix it is ``name`` itself (the groups' committed offsets stay where they
        are); under another prefix (a second Kiln on one cluster, a test) the prefix goes first, so
        that no group mixes two Kilns' topics: a group's leader assigns every member's topics, and
        cannot when it may not see them.
        """
        return name if self.topic_prefix == "kiln." else f"{self.topic_prefix}{name}"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by every aiokafka client Kiln makes."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            kwargs.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password,
            )
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(cafile=self.kafka_ssl_cafile)
        return kwargs
