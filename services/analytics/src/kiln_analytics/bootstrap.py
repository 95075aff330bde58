"""The analytics service's composition root: the one place that reads the environment and makes the
Kafka client (the faust application) and the web app over it.

Faust takes the bus's connection settings in its own form (broker URLs, a ``Credentials`` object);
they are derived from ``BusSettings.client_kwargs()``, the one mapping of Kiln's settings to Kafka
client options, so TLS and SASL are configured once for every service.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faust
import uvicorn
from starlette.applications import Starlette

from kiln_analytics.app import create_app
from kiln_analytics.settings import Settings
from kiln_analytics.stream import Analytics

log = logging.getLogger(__name__)


def faust_broker(client_kwargs: dict[str, Any]) -> list[str]:
    """Faust's broker URLs for aiokafka's ``bootstrap_servers``."""
    return [f"kafka://{host.strip()}" for host in str(client_kwargs["bootstrap_servers"]).split(",")]


def faust_credentials(client_kwargs: dict[str, Any]) -> faust.types.auth.CredentialsT | None:
    """Faust's credentials for aiokafka's security options (None: plaintext).

    Faust turns them back into the same aiokafka options (``security_protocol``, ``sasl_*``,
    ``ssl_context``) when it makes its clients.
    """
    protocol = client_kwargs["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    if "sasl_mechanism" not in client_kwargs:
        return faust.SSLCredentials(client_kwargs.get("ssl_context"))
    # SASL_PLAINTEXT or SASL_SSL: faust picks the protocol from whether there is an SSL context.
    return faust.SASLCredentials(username=client_kwargs["sasl_plain_username"],
                                 password=client_kwargs["sasl_plain_password"],
                                 mechanism=client_kwargs["sasl_mechanism"], ssl_context=client_kwargs.get("ssl_context"))


def faust_app(settings: Settings) -> faust.App:
    """The faust application: the group (application id), its table store and the bus's connection."""
    kafka = settings.client_kwargs()
    datadir = Path(settings.analytics_data_dir) / settings.analytics_group
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust makes only the last folder
    return faust.App(
        settings.analytics_group,
        broker=faust_broker(kafka),
        broker_credentials=faust_credentials(kafka),
        store=settings.analytics_store,
        datadir=str(datadir),
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",  # a new group reads the whole log
        table_standby_replicas=0,
        broker_session_timeout=settings.analytics_session_timeout_s,
        key_serializer="raw",
        value_serializer="raw",
    )


def build_analytics(settings: Settings) -> Analytics:
    # services.sh waits for this line: the table is recovered and the log is being read.
    return Analytics(settings, faust_app(settings),
                     on_ready=lambda: log.info("kiln-analytics: consuming the phase events"))


def build_app(settings: Settings) -> Starlette:
    return create_app(settings, build_analytics(settings))


def server(settings: Settings) -> uvicorn.Server:
    """uvicorn serving the API and dashboard on ``analytics_host:analytics_port``."""
    return uvicorn.Server(uvicorn.Config(build_app(settings), host=settings.analytics_host,
                                         port=settings.analytics_port, log_level="warning"))


def main() -> None:
    """Read the settings from the environment and serve until SIGTERM/SIGINT (uvicorn's own handling)."""
    server(Settings()).run()
