"""Where builds run. ``BuildExecutor`` is the interface; ``DockerExecutor`` runs builds on a Docker
engine through its HTTP API (the Kubernetes executor, building in pods, implements the same).

docker-py's streaming calls block, so each runs in a thread that hands lines to the event loop.
A build is stopped by closing its HTTP connection, which makes the engine cancel it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import tarfile
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, cast

import docker
from docker.errors import APIError, DockerException, ImageNotFound

from kiln_builder.errors import BuildFailed, BuildTimedOut

log = logging.getLogger(__name__)
LineSink = Callable[[str], Awaitable[None]]
_RUNNING_IN = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ProgressSink = Callable[[dict[str, Any]], Awaitable[None]]
# Chunks of an engine stream read ahead of the event loop at most: past them the reading thread waits,
# so a slow consumer (the bus) slows the engine's stream instead of piling its output up in memory.
STREAM_READ_AHEAD = 256
CONTEXT_IN_MEMORY = 64 * 2**20  # a build context larger than this is spooled to a temporary file
__all__ = ["BuildExecutor", "BuildFailed", "DockerExecutor", "LineSink", "ProgressSink"]  # BuildFailed: kept importable here


class BuildExecutor(Protocol):
    """Where builds run: the Docker engine here (DockerExecutor), build pods on Kubernetes later."""

    async def build(self, context: dict[str, bytes] | Path, dockerfile: str, tag: str, on_line: LineSink,
                    buildargs: dict[str, str] | None = None, timeout_s: float = 3600,
                    extra_files: dict[str, bytes] | None = None, labels: dict[str, str] | None = None,
                    subdir: str = "") -> None: ...

    async def push(self, image: str, on_progress: ProgressSink) -> None: ...

    async def has_image(self, image: str) -> bool: ...

    async def onbuild_triggers(self, image: str, kiln_registry: bool) -> list[str]:
        """The ONBUILD triggers of ``image``, which a build starting from it would run."""
        ...

    async def pull(self, image: str) -> bool: ...

    async def aclose(self) -> None:
        """Close whatever client the executor keeps open (the builder is stopping)."""
        ...


def _tar_context(context: dict[str, bytes] | Path, dockerfile: str, extra: dict[str, bytes] | None = None,
                 subdir: str = "") -> IO[bytes]:
    """A build context as a tar stream, with the generated Dockerfile added as .kiln.Dockerfile.

    With ``subdir``, a repository goes under that folder, so that ``COPY subdir/`` takes only its
    files and not Kiln's own (the Dockerfile, the entrypoint). Past 64 MiB it is spooled to a
    temporary file: a repository with its history may be gigabytes, which must not sit in memory.
    """
    buf: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=CONTEXT_IN_MEMORY)  # noqa: SIM115 (the caller closes it)
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if isinstance(context, Path):
            # The checkout's .git (made by Kiln from its mirror, fetch._git_dir) goes too, as repo2docker's does.
            for path in sorted(context.rglob("*")):
                rel = path.relative_to(context)
                tar.add(path, arcname=f"{subdir}/{rel.as_posix()}" if subdir else rel.as_posix(), recursive=False)
        else:
            for name, data in context.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        for name, content in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o755
            tar.addfile(info, io.BytesIO(content))
        data = dockerfile.encode()
        info = tarfile.TarInfo(".kiln.Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


class DockerExecutor:
    """Builds with the engine's (legacy) builder, each step isolated and bounded.

    Build steps run strangers' code, so they run on ``network`` (a bridge with outbound NAT and no
    route to the host: deploy/local/network.sh), under a memory limit, a CPU quota and the process
    limit of ``cgroup_parent`` (a cgroup the operator made, shared by all builds). The engine is
    started with no-new-privileges, which covers build steps too.
    """

    def __init__(self, base_url: str | None = None, memory_limit: int = 0, registry_auth: dict[str, str] | None = None,
                 network: str = "kiln-builds", cgroup_parent: str = "", cpus: float = 0) -> None:
        self._base_url = base_url
        self._memory_limit = memory_limit
        self._auth = registry_auth or None
        self._api_version: str | None = None
        self._network = network
        # docker-py's build() accepts only some of the build API's limits; the others are query
        # parameters of the same request, which its client (a requests session) adds to each call.
        self._build_params: dict[str, str | int] = {}
        if cgroup_parent:
            self._build_params["cgroupparent"] = cgroup_parent
        if cpus:
            self._build_params.update(cpuperiod=100_000, cpuquota=int(cpus * 100_000))

    def _client(self) -> docker.APIClient:
        # A client per call (closing it is how a streaming build is cancelled), but the API version is
        # negotiated once: negotiating made each new client cost ~9 ms, four times per rebuild.
        if self._api_version is None:
            first = docker.APIClient(**self._connection(), timeout=600)
            self._api_version = first.api_version
            return first
        return docker.APIClient(**self._connection(), version=self._api_version, timeout=600)

    def _connection(self) -> dict[str, Any]:
        if self._base_url:
            return {"base_url": self._base_url}
        return cast(dict[str, Any], docker.utils.kwargs_from_env())  # DOCKER_HOST, DOCKER_TLS_VERIFY, ... else the local socket

    async def _stream(self, start: Callable[[docker.APIClient], Iterator[dict[str, Any]]], sink: Callable[[dict[str, Any]], Awaitable[None]],
                      timeout_s: float, params: dict[str, str | int] | None = None) -> None:
        """Run a streaming engine call in a thread; pass each chunk to ``sink``; abort it on timeout.

        ``params`` are added to the call's query string.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()  # bounded by ``room``: chunks, plus the end and an error
        room = threading.Semaphore(STREAM_READ_AHEAD)
        stopped = threading.Event()
        client = self._client()
        client.params.update(params or {})
        done = object()

        def hand_over(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                pass  # the loop is closed: nobody reads any more

        def pump() -> None:
            try:
                for chunk in start(client):
                    room.acquire()  # waits while STREAM_READ_AHEAD chunks are not taken yet
                    if stopped.is_set():
                        return
                    hand_over(chunk)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
                if not stopped.is_set():
                    hand_over(exc)
            finally:
                if not stopped.is_set():
                    hand_over(done)

        threading.Thread(target=pump, daemon=True, name="docker-stream").start()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                item = await asyncio.wait_for(queue.get(), remaining)
                if item is done:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, (APIError, DockerException)):
                        # The engine's words (socket paths, internal names) go to the log, not to the user.
                        log.warning("the Docker engine refused a call: %s", item)
                        raise BuildFailed("The build service's container engine refused the build. Please try again; if it "
                                          "persists, tell this Binder's operators.", "engine_error") from None
                    raise item
                room.release()
                await sink(item)
        finally:
            stopped.set()
            room.release()  # a pump waiting for room wakes, sees it is stopped, and ends
            client.close()  # a build still running is cancelled by the engine when its connection closes

    async def build(self, context: dict[str, bytes] | Path, dockerfile: str, tag: str, on_line: LineSink,
                    buildargs: dict[str, str] | None = None, timeout_s: float = 3600,
                    extra_files: dict[str, bytes] | None = None, labels: dict[str, str] | None = None,
                    subdir: str = "") -> None:
        tar = await asyncio.to_thread(_tar_context, context, dockerfile, extra_files, subdir)
        try:
            await self._build(tar, tag, on_line, buildargs, timeout_s, labels)
        finally:
            tar.close()  # a spooled context's temporary file goes with it

    async def _build(self, tar: IO[bytes], tag: str, on_line: LineSink, buildargs: dict[str, str] | None,
                     timeout_s: float, labels: dict[str, str] | None) -> None:
        limits = {"memory": self._memory_limit, "memswap": self._memory_limit} if self._memory_limit else None
        error: list[str] = []
        step_containers: list[str] = []
        partial = ""  # the engine may split a line across chunks (apt's "E" and ": Unable to locate ...")

        async def emit(line: str) -> None:
            if m := _RUNNING_IN.search(line):
                step_containers.append(m.group(1))
            if line.strip():
                await on_line(line + "\n")

        async def sink(chunk: dict[str, Any]) -> None:
            nonlocal partial
            if "stream" in chunk:
                # The engine colours a step's stderr; the log is shown as text, so the codes go.
                *lines, partial = (partial + _ANSI.sub("", chunk["stream"])).split("\n")
                if len(partial) > 65536:  # a line that never ends is passed on in pieces (cut downstream), not kept
                    lines.append(partial)
                    partial = ""
                for line in lines:
                    await emit(line)
            elif "error" in chunk:
                error.append(chunk["error"].strip())
                await on_line(chunk["error"].rstrip() + "\n")

        def start(client: docker.APIClient) -> Iterator[dict[str, Any]]:
            return cast(Iterator[dict[str, Any]], client.build(fileobj=tar, custom_context=True, dockerfile=".kiln.Dockerfile", tag=tag, rm=True, forcerm=True,
                                network_mode=self._network, decode=True, buildargs=buildargs or {}, container_limits=limits, pull=False,
                                labels=labels or None))

        try:
            await self._stream(start, sink, timeout_s, self._build_params)
            await emit(partial)
        except TimeoutError:
            # Closing the connection stops the build between steps, not the step running now.
            await asyncio.to_thread(self._remove_containers, step_containers)
            raise BuildTimedOut(timeout_s) from None
        if error:
            message = error[-1]
            if re.search(r"returned a non-zero code: 137\b", message) and self._memory_limit:
                raise BuildFailed(f"The build used more than its memory limit of {self._memory_limit / 2**30:.1f} GiB and was "
                                  "stopped.", "build_memory")
            raise BuildFailed(message)

    def _remove_containers(self, ids: list[str]) -> None:
        client = self._client()
        try:
            for cid in ids:
                try:
                    client.remove_container(cid, force=True)
                except (APIError, DockerException):
                    pass  # already gone
        finally:
            client.close()

    async def push(self, image: str, on_progress: ProgressSink) -> None:
        name, _, tag = image.rpartition(":")
        error: list[str] = []

        async def sink(chunk: dict[str, Any]) -> None:
            if "error" in chunk:
                error.append(chunk["error"])
            await on_progress(chunk)

        await self._stream(lambda c: c.push(name, tag=tag, stream=True, decode=True, auth_config=self._auth), sink, 3600)
        if error:
            raise BuildFailed(f"Pushing the image to the registry failed: {error[-1]}", "push_failed")

    async def has_image(self, image: str) -> bool:
        def inspect() -> bool:
            client = self._client()
            try:
                client.inspect_image(image)
                return True
            except ImageNotFound:
                return False
            finally:
                client.close()

        return await asyncio.to_thread(inspect)

    async def onbuild_triggers(self, image: str, kiln_registry: bool) -> list[str]:
        """The ONBUILD triggers of ``image``, pulled first if the engine lacks it (the build would pull it
        anyway). Kiln's registry credentials go only to Kiln's registry (``kiln_registry``)."""
        def inspect() -> list[str]:
            client = self._client()
            try:
                try:
                    found = client.inspect_image(image)
                except ImageNotFound:
                    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
                    try:
                        client.pull(name, tag=tag, auth_config=self._auth if kiln_registry else None)
                        found = client.inspect_image(image)
                    except (APIError, ImageNotFound):
                        return []  # not to be had: the build's own FROM fails and says so
                return list((found.get("Config") or {}).get("OnBuild") or [])
            finally:
                client.close()

        return await asyncio.to_thread(inspect)

    async def pull(self, image: str) -> bool:
        """Fetch ``image`` from the registry if it is there (an environment image another builder made)."""
        def pull() -> bool:
            client = self._client()
            try:
                client.pull(image.rpartition(":")[0], tag=image.rpartition(":")[2], auth_config=self._auth)
                return True
            except (APIError, ImageNotFound):
                return False
            finally:
                client.close()

        return await asyncio.to_thread(pull)

    async def aclose(self) -> None:
        """Nothing to close: each call above opens the engine's client and closes it when done."""
