"""Entry point: `kiln-builder` or `python -m kiln_builder`."""

from __future__ import annotations

import asyncio
import logging

from kilnbus import BusProducer, Topics, run_service, serve_consumer
from kilnbus.consumer import Handler

from kiln_builder.executor import BuildExecutor, DockerExecutor
from kiln_builder.kube_executor import KubernetesExecutor, PodSettings
from kiln_builder.handler import Builder
from kiln_builder.settings import Settings


def make_executor(settings: Settings) -> BuildExecutor:
    """The executor the settings ask for."""
    if settings.build_executor == "kubernetes":
        pods = PodSettings(namespace=settings.build_namespace, image=settings.build_image,
                           cpu_request=settings.build_cpu_request, cpu_limit=settings.build_cpu_limit,
                           memory_request=settings.build_memory_request,
                           memory_limit=settings.build_pod_memory_limit
                           or (str(settings.build_memory_limit) if settings.build_memory_limit else ""),
                           node_selector=settings.build_node_selector, tolerations=settings.build_tolerations,
                           service_account=settings.build_service_account,
                           docker_config_secret=settings.build_docker_config_secret,
                           insecure_registries=settings.insecure_registries)
        auth = (settings.registry_username, settings.registry_password) if settings.registry_username else None
        return KubernetesExecutor(pods, registry_url=settings.registry_url, registry_auth=auth,
                                  tail_lines=settings.log_tail_lines)
    auth = {"username": settings.registry_username, "password": settings.registry_password} if settings.registry_username else None
    return DockerExecutor(settings.docker_url or None, settings.build_memory_limit, auth, network=settings.build_network,
                          cgroup_parent=settings.build_cgroup_parent, cpus=settings.build_cpus)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    executor = make_executor(settings)
    builder: Builder | None = None

    def make_handler(producer: BusProducer, topics: Topics) -> Handler:
        nonlocal builder
        builder = Builder(settings, producer, topics, executor)
        return builder.handle

    try:
        # Requests wait for their build inside the handler (their offsets are committed when it ends),
        # so many are in hand at once: the queue and the attachments live in kiln_builder.builds.
        await serve_consumer(settings, "kiln-builder", lambda t: [t.build_requested], make_handler, stop,
                             max_in_flight=256, shutdown_grace_s=10, attempts_begin_in_handler=True)
    finally:
        if builder is not None:
            await builder.aclose()  # builds no handler waits for any more, and the executor's client
        else:
            await executor.aclose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s builder %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    run_service(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
