"""The builder's settings, read once from the environment (prefix ``KILN_``)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from kilnbus import BusSettings
from kilnbus.credentials import GitCredential, GitHubApp


class Settings(BusSettings):
    """Everything the builder can be told; the bus settings included."""

    base_image: str = Field("127.0.0.1:5000/kiln/base:latest", description="The image every environment starts from.")
    offered_pythons: list[str] = Field(["3.11"], description="Python versions the base image offers (runtime.txt); first is the default.")
    base_images: dict[str, str] = Field({}, description="Base image of each Python version offered (runtime.txt python-X.Y), "
                                        "e.g. {\"3.11\": \"...:bookworm-...\", \"3.13\": \"...:trixie-...\"}; a version "
                                        "not named here starts from base_image.")
    env_image_prefix: str = Field("127.0.0.1:5000/kiln/env", description="Where shared environment images are pushed.")
    registry_username: str = Field("", description="Registry user for pushes.")
    registry_password: str = Field("", description="Registry password for pushes.")
    docker_url: str = Field("", description="Docker engine URL; empty: the usual DOCKER_HOST or local socket.")
    concurrent_builds: int = Field(2, ge=1, description="Builds running at once on this builder; more wait in a queue.")
    build_timeout_s: float = Field(1800, gt=0, description="A build running longer is stopped.")
    build_memory_limit: int = Field(4 * 2**30, ge=0, description="Memory a build may use, in bytes; 0: no limit.")
    build_network: str = Field("kiln-builds", description="Docker network build steps run on: one with outbound NAT "
                               "and no route to the host or Kiln (deploy/local/network.sh makes it). \"host\" turns "
                               "isolation off: never for a public service.")
    build_cgroup_parent: str = Field("/kiln-builds", description="Docker: parent cgroup of build steps, holding the "
                                     "process limit all builds share (deploy/local/docker.sh makes it); empty: none.")
    build_cpus: float = Field(2.0, ge=0, description="Docker: CPU cores a build may use; 0: no limit.")
    max_repo_bytes: int = Field(2**30, ge=0, description="Largest repository (checked out) that is built, in bytes.")
    max_repo_entries: int = Field(100_000, ge=0, description="Most files, folders and links a checked-out repository may "
                                  "have; 0: no limit.")
    max_fetch_bytes: int = Field(4 * 2**30, ge=0, description="Largest download of a repository with its history (as git "
                                 "stores it), in bytes; git is stopped past it. 0: no limit.")
    max_config_file_bytes: int = Field(2**20, ge=1, description="Largest configuration file (requirements.txt, "
                                       "environment.yml, runtime.txt, Dockerfile, ...) the builder reads, in bytes.")
    max_log_line_chars: int = Field(4096, ge=80, description="Build log lines longer than this are cut, with a marker.")
    build_log_memory_bytes: int = Field(4 * 2**20, ge=4096, description="Bytes of a build's log kept for requests that "
                                        "attach to it later; the oldest lines go first.")
    git_allowed_protocols: list[str] = Field(["https", "http", "git"], description="Schemes of repository URLs the builder "
                                             "fetches (the resolver has its own list).")
    allowed_private_hosts: list[str] = Field(
        default_factory=list,
        description="Git hosts the builder may fetch from although they resolve to private, loopback or link-local "
                    "addresses (the resolver's setting of the same name; set both).",
    )
    git_credentials: list[GitCredential] = Field(
        default_factory=list,
        description="Credentials for private repositories, each for a URL prefix (a host, or a group on it): a JSON list "
                    "of {url, username, password}. The same list for the resolver and the builder, which uses one "
                    "only for the repository itself (never its submodules).")
    github_app: GitHubApp | None = Field(None, description="A GitHub App installation whose short-lived tokens "
                                         "fetch private repositories: JSON {app_id, installation_id, private_key, "
                                         "api_url, web_url}. Set it for the resolver and the builder alike.")
    data_fetch_timeout_s: float = Field(600, gt=0, description="A data repository's record (Zenodo, ...) taking longer "
                                        "to download and unpack is refused.")
    swh_url: str = Field("https://archive.softwareheritage.org", description="The Software Heritage archive whose "
                         "vault prepares the directories the swh provider launches (the resolver's swh_url; set both): "
                         "swh_access_token is sent to URLs under it only.")
    swh_access_token: str = Field("", description="Software Heritage API token (a bearer token) for the vault's API: "
                                  "higher rate limits than anonymous requests. Never sent with the download.")
    swh_cooking_timeout_s: float = Field(300, gt=0, description="How long a build waits for the Software Heritage vault "
                                         "to prepare a directory before it fails saying so (the vault goes on; a later "
                                         "launch finds it ready). data_fetch_timeout_s bounds the whole fetch.")
    work_dir: str = Field("/tmp/kiln-builds", description="Where repositories are checked out while they build.")
    log_tail_lines: int = Field(15, ge=0, description="Lines of the build log repeated in a failure message.")
    # Where builds run. "kubernetes": one pod per build (kiln_builder.kube_executor), for the Helm chart.
    build_executor: Literal["docker", "kubernetes"] = Field("docker", description="Where builds run: the Docker engine "
                                                            "(docker_url) or pods on the Kubernetes cluster the builder runs in.")
    build_namespace: str = Field("default", description="Kubernetes: namespace of the build pods.")
    build_image: str = Field("moby/buildkit:v0.18.2-rootless", description="Kubernetes: image of the build pods (BuildKit rootless).")
    build_push_image: str = Field("gcr.io/go-containerregistry/crane:v0.20.2", description="Kubernetes: image of the "
                                  "build pods' push step (crane; it runs no shell and holds the push credential).")
    build_push_registry: str = Field("", description="Kubernetes: registry (host:port) the push step sends images to, "
                                     "when it is not the one image names carry (a read-only pull side, say); empty: that one.")
    build_cpu_request: str = Field("500m", description="Kubernetes: CPU a build pod requests.")
    build_cpu_limit: str = Field("", description="Kubernetes: CPU limit of a build pod; empty: none.")
    build_pod_memory_limit: str = Field("", description="Kubernetes: memory limit of a build pod as a quantity (4Gi); "
                                        "empty: build_memory_limit in bytes.")
    build_memory_request: str = Field("1Gi", description="Kubernetes: memory a build pod requests.")
    build_disk_limit: str = Field("20Gi", description="Kubernetes: disk a build pod may fill (its ephemeral-storage "
                                  "limit: BuildKit's state, the image, its files); over it the pod is evicted; empty: none.")
    build_node_selector: dict[str, str] = Field(default_factory=dict, description="Kubernetes: node labels build pods must match (JSON).")
    build_tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Kubernetes: tolerations of build pods (JSON).")
    build_service_account: str = Field("", description="Kubernetes: service account of build pods; empty: the namespace default.")
    build_docker_config_secret: str = Field("", description="Kubernetes: Secret (key config.json) with the push credentials.")
    registry_url: str = Field("", description="Kubernetes: the registry's URL, to see which images it has already.")
    insecure_registries: list[str] = Field(default_factory=list, description="Registries (host:port) reached over plain HTTP.")

    conda_channel_alias: str = Field("https://conda.anaconda.org", description="Where conda channel names resolve "
                                     "(conda's channel_alias): https://conda.anaconda.org/conda-forge, or a mirror of it.")
    conda_channels: list[str] = Field(["conda-forge"], description="Channels searched after an environment.yml's own "
                                      "(names, under conda_channel_alias), as repo2docker adds conda-forge.")

    r_cran_url: str = Field("https://packagemanager.posit.co/cran/{date}", description="CRAN-like repository R "
                            "environments install packages from ({date}: runtime.txt's snapshot date, else latest), "
                            "as repo2docker's dated snapshots; a local CRAN mirror goes here.")
    r_versions: dict[str, str] = Field({"4.2": "3.11", "4.5": "3.13"}, description="R version of each base image, as "
                                       "R version -> the Python version whose base image (Debian suite) carries it; "
                                       "the first is the default.")

    @field_validator("conda_channel_alias", "r_cran_url")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        # These URLs are written into build logs and images: a mirror that wants credentials needs
        # them elsewhere (a netrc of the build's), not in the URL.
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or "/t/" in parts.path:
            raise ValueError("must be an http(s) URL without credentials or tokens in it")
        return value

    @model_validator(mode="after")
    def _a_base_image_per_python(self) -> Settings:
        # Otherwise a version offered but unnamed would build on the default base image's Python.
        if self.base_images and (missing := [v for v in self.offered_pythons if v not in self.base_images]):
            raise ValueError(f"base_images names no image for the offered Python {', '.join(missing)}")
        return self

    @field_validator("build_cgroup_parent")
    @classmethod
    def _absolute_cgroup(cls, value: str) -> str:
        # A relative parent lands under the engine's own cgroup: outside the builds' process limit and
        # unseen by the runtime wrapper that narrows build steps (deploy/local/build_runtime.py).
        if value and not value.startswith("/"):
            raise ValueError(f"must be an absolute cgroup path such as /kiln-builds, not {value!r}")
        return value
