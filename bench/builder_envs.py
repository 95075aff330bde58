"""Builder benchmark for conda and R environments, against hand-written Dockerfiles in the same run.

1. A conda environment (environment.yml with two packages from a conda channel this script makes,
   served on the build network's mirror port as the tests serve theirs) and an R environment (R,
   IRkernel and r-cran-jsonlite from Debian): Kiln's first build, request to ``built`` (clone,
   environment image, repository image, push), against ``docker build --no-cache`` + ``docker push``
   of a Dockerfile a person would write for the same environment with the same tools.
2. The rebuild after a notebook-only commit (median of 3): Kiln against a cached ``docker build`` +
   push of the same change.

    .venv/bin/python bench/builder_envs.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kiln_builder.bootstrap import run
from kiln_builder.buildpacks import CONDA_INSTALL_SCRIPT
from kiln_builder.settings import Settings
from kilnbus import BuildRequested, BusProducer, BusSettings, Delivery, Phase, PhaseEvent, Topics, ensure_topics
from tests.bus.helpers import start_consumer
from tests.support.condachannel import conda_package, index_channel, serve_channels
from tests.support.githost import commit, git, make_repo, start_githost

# The pip benchmark's setup (the broker's admin, the registry's admin for the docker CLI), base
# image, notebook and timer serve this one too.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from builder_builds import BASE, NOTEBOOK, ROOT, timed

REBUILDS = 3


def by_hand(context: Path, dockerfile: str, tag: str, no_cache: bool) -> float:
    (context / "Dockerfile").write_text(dockerfile)
    build = ["docker", "build", "-q", "--network", "kiln-builds", "-t", tag, "."] + (["--no-cache"] if no_cache else [])
    return timed(*build, cwd=context) + timed("docker", "push", "-q", tag)


CONDA_BY_HAND = f"""FROM {BASE}
COPY --chown=1000:1000 kiln-conda.json kiln_conda_install.py /tmp/env/
RUN /opt/kiln-conda/bin/python /tmp/env/kiln_conda_install.py /tmp/env/kiln-conda.json
ENV PATH=/srv/conda/envs/notebook/bin:$PATH
COPY --chown=1000:1000 . /home/jovyan/
"""
R_BY_HAND = f"""FROM {BASE}
USER root
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends r-base-core r-cran-irkernel r-cran-remotes \\
    r-cran-jsonlite && apt-get clean && rm -rf /var/lib/apt/lists/*
USER jovyan
RUN R --quiet --no-save -e "IRkernel::installspec(prefix = '/srv/venv')"
COPY --chown=1000:1000 . /home/jovyan/
"""


async def main() -> None:
    bus = BusSettings(topic_prefix=f"bench-envs-{uuid.uuid4().hex[:8]}.", topic_partitions=3)
    await ensure_topics(bus)
    topics = Topics(bus.topic_prefix)
    marker = uuid.uuid4().hex[:8]
    prefix = f"127.0.0.1:5000/kiln/binder-bench{marker}-"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        noarch = root / "mirror" / "bench" / "noarch"
        conda_package(noarch, "bench-dep", "1.0", {"share/bench-dep/data.txt": (marker.encode() * 1000, 0o644)})
        conda_package(noarch, "bench-tool", "1.0", {"bin/bench-tool": (b"#!/bin/sh\necho ok\n", 0o755)},
                      depends=["bench-dep"])
        await index_channel(root / "mirror" / "bench")
        # New text each run, so no environment image of an earlier run is reused.
        conda_env = f"# {marker}\nchannels: [bench]\ndependencies:\n  - bench-tool\n"
        r_env = f"# {marker}\ndependencies:\n  - r-base\n  - r-jsonlite\n"
        conda_repo = make_repo(root / "git", "org/conda", {"environment.yml": conda_env, "index.ipynb": NOTEBOOK % 0})
        r_repo = make_repo(root / "git", "org/r", {"environment.yml": r_env, "index.ipynb": NOTEBOOK % 0})
        host = start_githost(root / "git")
        phases: dict[str, list[PhaseEvent]] = defaultdict(list)
        done: dict[str, float] = {}
        arrived = asyncio.Event()

        async def collect(d: Delivery[PhaseEvent]) -> None:
            phases[d.value.request_id].append(d.value)
            if d.value.phase in (Phase.BUILT, Phase.FAILED):
                done[d.value.request_id] = time.perf_counter()
                arrived.set()

        secret = ROOT / ".state" / "secrets" / "registry-builder"
        login = {"registry_username": "builder", "registry_password": secret.read_text().strip()} if secret.exists() else {}
        listed = [line.split() for line in (ROOT / ".state" / "base-images").read_text().splitlines() if line.strip()]
        results: dict[str, dict[str, float]] = {}
        with serve_channels(root / "mirror") as mirror:
            settings = Settings(**bus.model_dump(), base_image=BASE, base_images=dict(listed),
                                offered_pythons=[v for v, _ in listed], env_image_prefix=f"127.0.0.1:5000/kiln/env-bench{marker}",
                                work_dir=str(root / "work"), allowed_private_hosts=["127.0.0.1"],
                                conda_channel_alias=mirror.alias, conda_channels=[], **login)
            stop = asyncio.Event()
            builder = asyncio.create_task(run(settings, stop))
            async with BusProducer(bus) as producer:
                reader = await start_consumer(bus, topics, [topics.phase_events], collect, producer, group="bench-envs")
                try:
                    await asyncio.sleep(3)

                    async def build(repo: Path, url: str, image: str) -> float:
                        ref = git(repo, "rev-parse", "HEAD")
                        rid = uuid.uuid4().hex
                        t = time.perf_counter()
                        await producer.publish(topics.build_requested, f"{image}:{ref}", BuildRequested(
                            request_id=rid, image_name=f"{image}:{ref}", repo_url=url, ref=ref, provider="git", spec=url))
                        while rid not in done:
                            arrived.clear()
                            await arrived.wait()
                        failed = [p.message for p in phases[rid] if p.phase is Phase.FAILED]
                        assert not failed, failed
                        return done[rid] - t

                    for name, repo in (("conda", conda_repo), ("r", r_repo)):
                        url = f"{host.url}/org/{name}"
                        first = await build(repo, url, f"{prefix}{name}")
                        rebuilds = []
                        for n in range(REBUILDS):
                            commit(repo, {"index.ipynb": NOTEBOOK % (100 + n)}, "notebook only")
                            rebuilds.append(await build(repo, url, f"{prefix}{name}"))
                        results[name] = {"first": first, "rebuild": statistics.median(rebuilds)}
                finally:
                    await reader.close()
                    stop.set()
                    await builder

            # The same environments by hand, in the same run, with the same tools.
            ctx = root / "hand-conda"
            subprocess.run(["git", "clone", "-q", f"{host.url}/org/conda", str(ctx)], check=True)
            (ctx / "kiln-conda.json").write_text(json.dumps({"channels": [f"{mirror.alias}/bench"],
                                                             "specs": ["bench-tool"], "prefix": "/srv/conda/envs/notebook"}))
            (ctx / "kiln_conda_install.py").write_bytes(CONDA_INSTALL_SCRIPT)
            hand = {"conda": (ctx, CONDA_BY_HAND)}
            ctx = root / "hand-r"
            subprocess.run(["git", "clone", "-q", f"{host.url}/org/r", str(ctx)], check=True)
            hand["r"] = (ctx, R_BY_HAND)
            for name, (context, dockerfile) in hand.items():
                tag = f"{prefix}hand-{name}:1"
                results[name]["hand_first"] = by_hand(context, dockerfile, tag, no_cache=True)
                rebuilds = []
                for n in range(REBUILDS):
                    (context / "index.ipynb").write_text(NOTEBOOK % (200 + n))
                    rebuilds.append(by_hand(context, dockerfile, tag, no_cache=False))
                results[name]["hand_rebuild"] = statistics.median(rebuilds)
        host.server.shutdown()

    print("builder benchmark: conda (local channel) and R (Debian) environments; baseline: hand-written Dockerfiles\n")
    for name, r in results.items():
        print(f"  {name:5} first build     Kiln {r['first']:6.1f} s   docker build --no-cache + push {r['hand_first']:6.1f} s"
              f"   ratio {r['first'] / r['hand_first']:.2f}")
        print(f"  {name:5} notebook rebuild Kiln {r['rebuild']:6.2f} s   cached docker build + push    {r['hand_rebuild']:6.2f} s"
              f"   ratio {r['rebuild'] / r['hand_rebuild']:.2f}   (medians of {REBUILDS})")


if __name__ == "__main__":
    asyncio.run(main())
