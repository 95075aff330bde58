"""The builder's composition root: the one place that builds real clients from the settings.

``run`` makes the executor (the Docker engine, or build pods on Kubernetes, with the registry's push
credentials), the git fetcher and the Kafka bus, hands them to ``Builder`` and serves its routes
with ``run_on`` until ``stop``; on the way out it stops the builds still running (while the bus can
still report them), then closes the bus and the executor. ``run_on`` takes any bus and builder, so
the fast tier (tests/chain) serves the same routes the same way on a ``MemoryBus`` with fake ports.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kiln_builder.datafetch import ContentFetcher, DataFetcher
from kiln_builder.executor import BuildExecutor, DockerExecutor
from kiln_builder.fetch import FetchPolicy, GitFetcher
from kiln_builder.handler import Builder
from kiln_builder.kube_executor import KubernetesExecutor, PodSettings
from kiln_builder.service import GROUP, SERVE_OPTIONS, routes
from kiln_builder.settings import Settings
from kiln_builder.swhvault import SwhVault
from kilnbus import Bus, KafkaBus, PhaseReporter, serve
from kilnbus.credentials import CredentialStore


def make_executor(settings: Settings) -> BuildExecutor:
    """The executor the settings ask for, with the registry credentials its pushes use."""
    if settings.build_executor == "kubernetes":
        pods = PodSettings(namespace=settings.build_namespace, image=settings.build_image,
                           push_image=settings.build_push_image, push_registry=settings.build_push_registry,
                           cpu_request=settings.build_cpu_request, cpu_limit=settings.build_cpu_limit,
                           memory_request=settings.build_memory_request,
                           memory_limit=settings.build_pod_memory_limit
                           or (str(settings.build_memory_limit) if settings.build_memory_limit else ""),
                           disk_limit=settings.build_disk_limit,
                           node_selector=settings.build_node_selector, tolerations=settings.build_tolerations,
                           service_account=settings.build_service_account,
                           docker_config_secret=settings.build_docker_config_secret,
                           insecure_registries=settings.insecure_registries)
        basic = (settings.registry_username, settings.registry_password) if settings.registry_username else None
        return KubernetesExecutor(pods, registry_url=settings.registry_url, registry_auth=basic,
                                  tail_lines=settings.log_tail_lines)
    auth = {"username": settings.registry_username, "password": settings.registry_password} if settings.registry_username else None
    return DockerExecutor(settings.docker_url or None, settings.build_memory_limit, auth, network=settings.build_network,
                          cgroup_parent=settings.build_cgroup_parent, cpus=settings.build_cpus)


def make_fetcher(settings: Settings) -> ContentFetcher:
    """git, keeping mirrors in the work folder, and data repositories' records: both under the builder's limits."""
    policy = FetchPolicy(max_bytes=settings.max_repo_bytes, max_entries=settings.max_repo_entries,
                         max_fetch_bytes=settings.max_fetch_bytes, allowed_schemes=settings.git_allowed_protocols,
                         allowed_private_hosts=settings.allowed_private_hosts)
    credentials = CredentialStore(settings.git_credentials, settings.github_app)
    return ContentFetcher(GitFetcher(policy, Path(settings.work_dir) / "git-cache", credentials.for_url if credentials else None),
                          DataFetcher(policy, timeout=settings.data_fetch_timeout_s,
                                      swh=SwhVault(settings.swh_url, settings.swh_access_token,
                                                   settings.swh_cooking_timeout_s)))


async def run_on(bus: Bus, builder: Builder, stop: asyncio.Event, **options: Any) -> None:
    """Serve ``builder``'s routes on ``bus`` (started) until ``stop``, then stop the builds no handler
    waits for any more, while ``bus`` can still report them. ``options`` override ``SERVE_OPTIONS``."""
    try:
        await serve(bus, GROUP, routes(bus.topics, builder), stop, **{**SERVE_OPTIONS, **options})
    finally:
        await builder.aclose()


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Serve build requests until ``stop`` is set."""
    executor = make_executor(settings)
    try:
        async with KafkaBus(settings) as bus:
            # The producer itself, not the bus: log lines are queued with send(), not published one by one.
            reporter = PhaseReporter(bus.producer, bus.topics, "builder")
            await run_on(bus, Builder(settings, reporter, bus.topics, executor, make_fetcher(settings)), stop)
    finally:
        await executor.aclose()  # the Kubernetes API client it made
