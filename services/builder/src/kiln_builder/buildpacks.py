"""From a checked-out repository to Dockerfiles, with repo2docker's detection order and file rules.

Kiln keeps repo2docker's user-facing meaning of every file it supports (requirements.txt,
setup.py, pyproject.toml, Pipfile, environment.yml, runtime.txt, apt.txt, postBuild, start,
Dockerfile, the binder/ and .binder/ folders) and builds in two stages:

- the *environment* image: the base image plus apt.txt and the Python environment, named after a
  hash of the base image and the environment files, so it is shared by every commit and every
  repository with the same environment;
- the *repository* image: the environment image plus the repository's files, package installs
  that need them, postBuild, start, and repo2docker's labels.

An environment.yml's conda packages are solved and installed in the build by py-rattler (in the
base image, outside the user's environment) from the configured channels into
/srv/conda/envs/notebook, which then comes first on PATH. R, Julia and Nix are refused with a
message that says so. (Why not repo2docker itself: docs/decisions.md.)

The checkout is hostile content: every file Kiln reads goes through ``RepoFiles``, which follows
no symbolic link out of the checkout, reads only regular files, and at most ``max_file_bytes`` of
each. Messages name the file and the problem, never the file's bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet

NB_USER, NB_UID = "jovyan", 1000
REPO_SUBDIR = "repo"  # where the repository sits in the build context, beside Kiln's own files
HOME = f"/home/{NB_USER}"
_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")  # what Debian allows, and no shell syntax
# Linear: [ \t] where \s (which also matches newlines) let each line start re-scan all blank lines below it.
_LOCAL_REQ = re.compile(r"^[ \t]*(?:(?:-r|--requirement|-c|--constraint|-e|--editable)[ \t=]*)?(?:\.|file:|/)", re.MULTILINE)


DEFAULT_MAX_FILE_BYTES = 1 << 20
CONDA_PREFIX = "/srv/conda/envs/notebook"
CONDA_INSTALLER = "/opt/kiln-conda/bin/python"  # py-rattler's environment in the base image
# A conda match spec Kiln passes on: a package name and a version constraint, no URLs or paths.
_CONDA_SPEC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(?: [A-Za-z0-9_.*=<>!,|~ ]*)?", re.ASCII)
_CONDA_CHANNEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(?:/label/[A-Za-z0-9][A-Za-z0-9_.\-]*)?", re.ASCII)
MAX_CONDA_SPECS = 500


@dataclass(frozen=True)
class CondaSettings:
    """Where conda channels are fetched from: channel names resolve under ``channel_alias`` (conda's
    setting of that name; a mirror of conda.anaconda.org goes here), and ``default_channels`` are
    searched after an environment.yml's own."""

    channel_alias: str = "https://conda.anaconda.org"
    default_channels: tuple[str, ...] = ("conda-forge",)

    def url(self, channel: str) -> str:
        return f"{self.channel_alias.rstrip('/')}/{channel}"


class BuildpackError(Exception):
    """The repository asks for something Kiln cannot build; the message says what and why."""

    def __init__(self, message: str, cause: str = "unsupported_environment") -> None:
        super().__init__(message)
        self.cause = cause


class RepoFiles:
    """Reads a checkout's configuration files without trusting them.

    A file that is a symbolic link is followed only while it stays inside the checkout (a
    ``requirements.txt`` linking to ``binder/requirements.txt`` is fine; one linking to
    ``/proc/self/environ``, ``/dev/zero``, ``/etc/passwd`` or ``../../x`` is refused unread).
    """

    def __init__(self, root: Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.root = root
        self._real_root = os.path.realpath(root)
        self.max_file_bytes = max_file_bytes

    def name(self, path: Path) -> str:
        """How the user calls ``path``: relative to the repository."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.name

    def present(self, path: Path) -> bool:
        """Whether the repository has an entry at ``path`` (a link counts, wherever it points)."""
        return os.path.lexists(path)

    def _real(self, path: Path) -> str:
        real = os.path.realpath(path)
        if real != self._real_root and not real.startswith(self._real_root + os.sep):
            raise BuildpackError(f"{self.name(path)} is a symbolic link that leads outside the repository; Kiln does not "
                                 "follow it. Make it a regular file.", "unsafe_repository")
        return real

    def check(self, path: Path) -> None:
        """Refuse ``path`` if it is a link leading outside the repository (for files Kiln does not read itself)."""
        if self.present(path):
            self._real(path)

    def is_dir(self, path: Path) -> bool:
        """Whether ``path`` is a folder of the repository (a link to a folder inside it counts)."""
        if not self.present(path):
            return False
        return os.path.isdir(self._real(path))

    def read_bytes(self, path: Path) -> bytes:
        """The bytes of the regular file at ``path``, refusing links out, other kinds of file, and big files."""
        real = self._real(path)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: real has no links left.
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError:
            raise BuildpackError(f"{self.name(path)} cannot be read (it is not a regular file of the repository).",
                                 "unsafe_repository") from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise BuildpackError(f"{self.name(path)} is not a regular file.", "unsafe_repository")
            # Never trust st_size (/proc files say 0): read one byte past the limit to know.
            data = f.read(self.max_file_bytes + 1)
        if len(data) > self.max_file_bytes:
            raise BuildpackError(f"{self.name(path)} is larger than {_size(self.max_file_bytes)}; this Binder reads "
                                 "configuration files up to that size.", "unsafe_repository")
        return data

    def read_text(self, path: Path) -> str:
        """``read_bytes`` decoded as UTF-8 (a BOM is allowed)."""
        try:
            return self.read_bytes(path).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BuildpackError(f"{self.name(path)} is not UTF-8 text.", "unsupported_environment") from None


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB" if n >= 2**10 else f"{n} bytes"


@dataclass
class Plan:
    """What to build: an optional environment stage and the repository stage."""

    kind: str  # "dockerfile" or "python"
    env_dockerfile: str | None = None
    env_files: dict[str, bytes] = field(default_factory=dict)  # name in the env context -> content
    env_key: str | None = None
    repo_dockerfile: str = ""
    dockerfile_path: Path | None = None  # the repository's own Dockerfile
    dockerfile_text: str = ""  # its content, read through RepoFiles
    python_version: str = ""
    summary: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


def config_dir(repo: Path, files: RepoFiles | None = None) -> Path:
    """Where the configuration files are: binder/, .binder/ or the repository's root."""
    files = files or RepoFiles(repo)
    binder, dot_binder = repo / "binder", repo / ".binder"
    has_binder, has_dot_binder = files.is_dir(binder), files.is_dir(dot_binder)
    if has_binder and has_dot_binder:
        raise BuildpackError("The repository has both binder/ and .binder/ folders; keep one.")
    return binder if has_binder else dot_binder if has_dot_binder else repo


def _unsupported(repo: Path, cfg: Path, files: RepoFiles) -> None:
    checks = [
        (cfg / "Project.toml", "Julia (Project.toml)"), (cfg / "JuliaProject.toml", "Julia (JuliaProject.toml)"),
        (cfg / "REQUIRE", "Julia (REQUIRE)"), (cfg / "default.nix", "Nix (default.nix)"),
    ]
    for path, what in checks:
        if files.present(path):
            raise BuildpackError(f"This repository needs {what}, which this Binder cannot build: Julia's downloads and a "
                                 "Nix binary cache are not configured here (docs/build-rules.md says what an operator "
                                 "needs).")


@dataclass(frozen=True)
class RSettings:
    """Where R comes from: Debian's r-base-core of the base image's suite (``versions``: R version ->
    the Python version whose base image carries it, the default first) and CRAN packages from
    ``cran_url`` (``{date}``: runtime.txt's snapshot date, else ``latest``)."""

    cran_url: str = "https://packagemanager.posit.co/cran/{date}"
    versions: tuple[tuple[str, str], ...] = (("4.2", "3.11"), ("4.5", "3.13"))


@dataclass
class _RRequest:
    version: str | None  # X.Y, or None for the default
    date: str | None
    why: str


def _r_request(repo: Path, cfg: Path, files: RepoFiles) -> _RRequest | None:
    """Whether the repository asks for R, as repo2docker reads it (runtime.txt r-..., a root
    DESCRIPTION with no binder folder) and install.R."""
    runtime = cfg / "runtime.txt"
    if files.present(runtime):
        text = files.read_text(runtime).strip()
        if text.startswith("r-"):
            m = re.fullmatch(r"r-(?:([0-9]{1,2}\.[0-9]{1,2})(?:\.[0-9]{1,3})?)?-?([0-9]{4}-[0-9]{2}-[0-9]{2})?", text, re.ASCII)
            if not m or not (m.group(1) or m.group(2)):
                raise BuildpackError(f"{files.name(runtime)} does not name an R version Kiln understands; expected "
                                     "r-X.Y, r-X.Y-YYYY-MM-DD or r-YYYY-MM-DD.")
            return _RRequest(m.group(1), m.group(2), files.name(runtime))
    if files.present(cfg / "install.R"):
        return _RRequest(None, None, files.name(cfg / "install.R"))
    if cfg == repo and files.present(repo / "DESCRIPTION"):
        return _RRequest(None, None, "DESCRIPTION")
    return None


def python_version(cfg: Path, offered: list[str], files: RepoFiles | None = None) -> str:
    """The Python runtime.txt asks for, checked against what the base image offers."""
    files = files or RepoFiles(cfg)
    runtime = cfg / "runtime.txt"
    default = offered[0]
    if not files.present(runtime):
        return default
    text = files.read_text(runtime).strip()
    m = re.fullmatch(r"python-(\d+)(?:\.(\d+))?(?:\.\d+)?(?:-\d{4}-\d{2}-\d{2})?", text)
    if not m:
        # Not repeating what the file says: it is the repository's content, not Kiln's message.
        raise BuildpackError(f"{files.name(runtime)} does not name a Python version Kiln understands; expected "
                             f"python-X.Y (e.g. python-{default}).")
    wanted = m.group(1) + (f".{m.group(2)}" if m.group(2) else "")
    if wanted == "3" or wanted in offered:
        return default if wanted == "3" else wanted
    raise BuildpackError(f"runtime.txt asks for Python {wanted}; this Binder offers Python {', '.join(offered)}.")


def _apt_packages(cfg: Path, files: RepoFiles) -> list[str]:
    path = cfg / "apt.txt"
    if not files.present(path):
        return []
    names = []
    for number, line in enumerate(files.read_text(path).splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not _APT_NAME.match(line):
            raise BuildpackError(f"{files.name(path)}, line {number}: not a Debian package name (one name per line, no "
                                 "versions).")
        names.append(line)
    return names


class _AliasRefused(Exception):
    """An environment.yml uses an anchor or alias; ``line`` is where (1-based)."""

    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that stops at the first anchor or alias.

    safe_load keeps an alias as a second reference to the same object, so a few KB of nested aliases
    stand for millions of entries, and reading them out (the pip list is flattened and joined into
    requirements.txt) copies every one: a 5 KB file became megabytes, an 800 KB one exhausted memory.
    environment.yml files have no use for anchors, so rather than count what an alias bomb expands
    to, none is read. Refused while parsing, before anything is built from it: time and memory stay
    those of the file itself (capped by ``max_file_bytes``), since without aliases a YAML document's
    objects are never more than its text.
    """

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _AliasRefused(event.start_mark.line + 1)
        return super().compose_node(parent, index)


@dataclass
class _Environment:
    python: str | None  # the base image's Python it asks for (None: the default, or Python from conda)
    pip: list[str]
    conda: list[str]  # match specs, python among them when it comes from conda
    channels: list[str]
    r: list[str] = field(default_factory=list)  # Debian packages standing for its r-* entries
    conda_python: bool = False  # the file's Python is solved from the conda channels


def _environment_yml(path: Path, offered: list[str], files: RepoFiles) -> _Environment:
    """What an environment.yml asks for: its Python, pip requirements, conda packages and channels."""
    try:
        env = yaml.load(files.read_text(path), Loader=_NoAliasLoader) or {}  # a SafeLoader: no arbitrary objects
    except _AliasRefused as exc:
        raise BuildpackError(f"{path.name}, line {exc.line}: YAML anchors and aliases (&name, *name) are not supported "
                             "in environment.yml (they can make a small file expand without bound). Write each entry "
                             "out in full.", "unsupported_environment") from None
    except RecursionError:
        raise BuildpackError(f"{path.name} is nested too deeply to read.") from None
    except yaml.YAMLError as exc:
        # Where, not what: the parser's problem text can quote the file.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise BuildpackError(f"{path.name} is not valid YAML{where}.") from None
    if not isinstance(env, dict):
        raise BuildpackError(f"{path.name} must be a mapping with a 'dependencies' list.")
    python_spec: str | None = None
    pip: list[str] = []
    conda: list[str] = []
    r: list[str] = []
    channels = _conda_channels(env.get("channels"), path.name)
    dependencies = env.get("dependencies") or []
    if not isinstance(dependencies, list):
        raise BuildpackError(f"{path.name}: 'dependencies' must be a list.")
    for dep in dependencies:
        if isinstance(dep, dict) and set(dep) == {"pip"}:
            # Only strings: str() of a YAML alias bomb (lists of lists by reference) would never end.
            if not isinstance(dep["pip"] or [], list) or not all(isinstance(p, str) for p in dep["pip"] or []):
                raise BuildpackError(f"{path.name}: the entries under 'pip:' must be requirement strings.")
            if any(len(entry.splitlines()) != 1 or "\x00" in entry for entry in dep["pip"] or []):
                # One requirement per entry: a line break of any kind pip splits on would start another.
                raise BuildpackError(f"{path.name}: an entry under 'pip:' is empty or spans several lines.")
            pip.extend(dep["pip"] or [])
        elif isinstance(dep, str):
            name, spec = _split_conda_spec(dep)
            if name == "python":
                python_spec = spec
            elif name.startswith("r-") or name == "r":
                r.append(_debian_r_package(name, path.name))
            elif name != "pip":
                conda.append(_conda_spec(name, spec, path.name))
        else:
            raise BuildpackError(f"{path.name}: each entry under 'dependencies' must be a package (a string) or "
                                 "the 'pip:' list.")
    if len(conda) > MAX_CONDA_SPECS:
        raise BuildpackError(f"{path.name} lists more than {MAX_CONDA_SPECS} conda packages.")
    if python_spec is None:
        return _Environment(None, pip, conda, channels, r)
    # As repo2docker: with conda packages, Python comes from conda (packages built for conda's Python
    # import only there). With pip alone, the base image's Python serves when it fits the spec.
    version = _python_from_conda_spec(python_spec, offered, path.name, refuse=False)  # Python 2, bad specs: refused
    if version == NOT_OFFERED or conda:
        return _Environment(None, pip, [_conda_spec("python", python_spec, path.name), *conda], channels, r,
                            conda_python=True)
    return _Environment(version, pip, conda, channels, r)


def _debian_r_package(name: str, source: str) -> str:
    """The Debian package of an environment.yml r-* entry: Debian builds CRAN packages as r-cran-<name>
    (binaries: nothing is compiled); r-base and r-irkernel come with every R environment."""
    cran = name.removeprefix("r-")
    if cran in ("", "base", "essentials", "irkernel", "recommended"):
        return ""
    debian = f"r-cran-{cran}"
    if len(debian) > 100 or not _APT_NAME.match(debian):
        raise BuildpackError(f"{source}: an r-* entry is not a package name.")
    return debian


def _conda_channels(value: object, source: str) -> list[str]:
    """The channels an environment.yml names: channel names only, looked up where this Binder's
    channels are (its channel alias), never a URL or path of the repository's choosing."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise BuildpackError(f"{source}: 'channels' must be a list of channel names.")
    if len(value) > 20:
        raise BuildpackError(f"{source} names more than 20 channels.")
    names = []
    for channel in value:
        channel = channel.strip()
        if channel in ("defaults", "nodefaults"):
            continue  # Anaconda's defaults are not offered; conda-forge (or the configured channels) are
        if len(channel) > 100 or not _CONDA_CHANNEL.fullmatch(channel):
            raise BuildpackError(f"{source}: channels must be channel names such as conda-forge or bioconda; this "
                                 "Binder fetches them from its own channel server, not from URLs or paths.")
        names.append(channel)
    return names


def _conda_spec(name: str, spec: str, source: str) -> str:
    text = f"{name} {spec}".strip()
    if len(text) > 200 or not _CONDA_SPEC.fullmatch(text):
        raise BuildpackError(f"{source}: a conda dependency is not a package name with an optional version "
                             "(as numpy or numpy >=1.26).")
    return text


def _split_conda_spec(dep: str) -> tuple[str, str]:
    """(name, version spec) of a conda match spec: ``conda-forge::python >=3.9,<3.12`` -> ("python", ">=3.9,<3.12")."""
    if len(dep) > 256 or any(ord(c) < 32 for c in dep):
        # Checked before any pattern sees it: a long entry must cost no more than its length.
        raise BuildpackError("environment.yml: a dependency is longer than 256 characters or has control characters.")
    dep = dep.split("::")[-1].strip()
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", dep, re.DOTALL)
    return (m.group(1).lower(), m.group(2).strip()) if m else (dep, "")


NOT_OFFERED = ""  # what _python_from_conda_spec returns, when told not to refuse, for a Python not offered


def _python_from_conda_spec(spec: str, offered: list[str], source: str, refuse: bool = True) -> str | None:
    """The offered Python an environment.yml's ``python`` entry means, as conda reads its spec.

    ``python=3.11``, ``python 3.11``, ``python=3.11.*`` and ``python==3.11.4`` ask for 3.11;
    ``python=3`` for any Python 3 (the default); a range (``>=3.8``, ``>=3.9,<3.12``) for the newest
    offered Python inside it. No spec: the default. A Python 3 that is not offered raises, or with
    ``refuse=False`` gives ``NOT_OFFERED``; Python 2 and specs Kiln cannot read always raise.
    """
    spec = spec.split("[", 1)[0].strip()  # a bracketed part ([build=...]) says nothing of the version
    if not spec:
        return None
    if m := re.fullmatch(r"(?:==?)?\s*([0-9]{1,3})(?:\.([0-9]{1,3}))?(?:\.[0-9*]+)*(?:\.\*)?", spec):
        wanted = m.group(1) + (f".{m.group(2)}" if m.group(2) else "")
        if wanted == "3":
            return None
        if wanted in offered:
            return wanted
        if not refuse and m.group(1) == "3":
            return NOT_OFFERED
        # Digits only, so it is safe to repeat.
        raise BuildpackError(f"{source} asks for Python {wanted}; this Binder offers Python {', '.join(offered)}.")
    try:
        allowed = SpecifierSet(spec.replace(" ", ""))
    except InvalidSpecifier:
        raise BuildpackError(f"{source}: the version given for python is not one Kiln understands; write e.g. "
                             f"python={offered[0]} or python>=3.10.") from None
    fitting = [v for v in offered if allowed.contains(v)]
    if not fitting and not refuse and any(allowed.contains(f"3.{minor}") for minor in range(6, 40)):
        return NOT_OFFERED
    if not fitting:
        raise BuildpackError(f"{source} asks for a Python no version offered here satisfies; this Binder offers "
                             f"Python {', '.join(offered)}.")
    return max(fitting, key=lambda v: tuple(int(x) for x in v.split(".")))


def _pipfile_python(env_files: dict[str, bytes], offered: list[str]) -> str | None:
    """The Python a Pipfile.lock (first) or Pipfile names in its ``requires`` section, if any.

    Not parsed whole: a few KB of crafted TOML (dotted keys) take gigabytes to parse, and pipenv,
    which reads the files in the build's own limits, says what is wrong with them. The lock's value
    is found by a pattern, the Pipfile's in its ``[requires]`` section, line by line.
    """
    version_value = re.compile(r'"?python_(?:full_)?version"?[ \t]*[:=][ \t]*"([0-9]{1,3}(?:\.[0-9]{1,3}){0,2})",?',
                               re.ASCII)
    wanted = None
    lock = env_files.get("Pipfile.lock", b"").decode("utf-8", "replace")
    if m := re.search(r'"python_(?:full_)?version"\s{0,10}:\s{0,10}"([0-9]{1,3}(?:\.[0-9]{1,3}){0,2})"', lock, re.ASCII):
        wanted = m.group(1)
    if wanted is None:
        section = ""
        for line in env_files.get("Pipfile", b"").decode("utf-8", "replace").splitlines():
            if header := re.fullmatch(r"\[([A-Za-z0-9_.\- ]{1,64})\]", line.strip()):
                section = header.group(1).strip()
            elif section == "requires" and (m := version_value.fullmatch(line.strip())):
                wanted = m.group(1)
                break
    if wanted is None:
        return None
    major, _, rest = wanted.partition(".")
    version = major + (f".{rest.split('.')[0]}" if rest else "")
    if version == "3":
        return None
    if version not in offered:  # ASCII digits and dots only: safe to repeat
        raise BuildpackError(f"The Pipfile asks for Python {version}; this Binder offers Python {', '.join(offered)}.")
    return version


def _installs_package(repo: Path, cfg: Path, files: RepoFiles) -> bool:
    if cfg != repo:
        return False  # with a binder folder, repo2docker ignores a root setup.py / pyproject.toml
    if files.present(repo / "setup.py"):
        return True
    pyproject = repo / "pyproject.toml"
    if files.present(pyproject):
        text = files.read_text(pyproject)
        return "[project]" in text and "[build-system]" in text
    return False


def plan(repo: Path, base_image: str, offered_pythons: list[str], labels: dict[str, str],
         max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, base_images: Mapping[str, str] | None = None,
         conda: CondaSettings | None = None, r_settings: RSettings | None = None) -> Plan:
    """Decide how to build ``repo``, following repo2docker's order (Dockerfile first, then Python).

    The environment starts from ``base_images[version]`` for the Python chosen (one base image per
    Debian suite), else from ``base_image``.
    """
    files = RepoFiles(repo, max_file_bytes)
    cfg = config_dir(repo, files)
    rel = cfg.relative_to(repo).as_posix()
    prefix = "" if rel == "." else rel + "/"
    root_dockerfile = repo / "Dockerfile"
    if files.present(root_dockerfile) and re.search(r"^[ \t]*FROM[ \t]+andrewosh/binder-base", files.read_text(root_dockerfile),
                                                    re.MULTILINE | re.IGNORECASE):
        raise BuildpackError("This Dockerfile builds on andrewosh/binder-base, which Binder stopped supporting in 2020.")
    if files.present(cfg / "Dockerfile"):
        return Plan(kind="dockerfile", dockerfile_path=cfg / "Dockerfile", dockerfile_text=files.read_text(cfg / "Dockerfile"),
                    summary=[f"Using {prefix}Dockerfile"], labels=labels)
    _unsupported(repo, cfg, files)
    # Files only checked for presence here are still refused when they lead outside the checkout.
    for name in ("postBuild", "start", "setup.py"):
        files.check(cfg / name)

    env_yml = next((cfg / n for n in ("environment.yml", "environment.yaml") if files.present(cfg / n)), None)
    pipfile = next((cfg / n for n in ("Pipfile.lock", "Pipfile") if files.present(cfg / n)), None)
    requirements = cfg / "requirements.txt"
    r_wanted = _r_request(repo, cfg, files)
    # As repo2docker: runtime.txt picks the Python of the pip build only; environment.yml and a
    # Pipfile name their own (and ignore requirements.txt, runtime.txt and a root setup.py).
    if r_wanted is not None:
        version = offered_pythons[0]  # set below from the R version's base image
    elif env_yml is None and pipfile is None:
        version = python_version(cfg, offered_pythons, files)
    else:
        files.check(cfg / "runtime.txt")
        version = offered_pythons[0]
    apt = _apt_packages(cfg, files)
    env_files: dict[str, bytes] = {}
    env_steps: list[str] = []
    repo_steps: list[str] = []
    summary: list[str] = []
    if apt:
        env_files["apt.txt"] = ("\n".join(apt) + "\n").encode()
        summary.append(f"apt.txt: {len(apt)} package(s)")
    conda_step = ""
    conda_python = ""
    r_packages: list[str] = []
    if env_yml is not None:
        wanted = _environment_yml(env_yml, offered_pythons, files)
        version = wanted.python or version
        conda_python = next((spec for spec in wanted.conda if wanted.conda_python and spec.split()[0] == "python"), "")
        if wanted.r and r_wanted is None:
            r_wanted = _RRequest(None, None, f"{env_yml.name}'s r-* packages")
        r_packages = [name for name in wanted.r if name]
        if wanted.conda:
            settings = conda or CondaSettings()
            channels = list(dict.fromkeys([*wanted.channels, *settings.default_channels]))
            if not channels and wanted.conda_python and len(wanted.conda) == 1:
                raise BuildpackError(f"{env_yml.name} asks for a Python this Binder does not offer (it offers Python "
                                     f"{', '.join(offered_pythons)}) and there is no conda channel to take it from.")
            if not channels:
                raise BuildpackError(f"{env_yml.name} asks for conda packages, but names no channel and this Binder "
                                     "has no default channel.")
            env_files["kiln-conda.json"] = json.dumps({"channels": [settings.url(c) for c in channels],
                                                       "specs": wanted.conda, "prefix": CONDA_PREFIX}).encode()
            env_files["kiln_conda_install.py"] = CONDA_INSTALL_SCRIPT
            conda_step = f"{CONDA_INSTALLER} /tmp/kiln-env/kiln_conda_install.py /tmp/kiln-env/kiln-conda.json"
            summary.append(f"{env_yml.name}: {len(wanted.conda)} conda package(s) from {', '.join(channels)}")
        # `python -m pip`: the environment's own pip, conda's Python's when it has one.
        if wanted.pip:
            text = "\n".join(wanted.pip) + "\n"
            if _LOCAL_REQ.search(text):
                # Refers to the repository's files: installed once they are copied, as repo2docker does.
                # Carried in base64: the Dockerfile instruction stays one line whatever the text holds.
                encoded = base64.b64encode(text.encode()).decode()
                repo_steps.append(f"echo {encoded} | base64 -d > /tmp/kiln-env-requirements.txt && "
                                  "python -m pip install --no-cache-dir -r /tmp/kiln-env-requirements.txt")
            else:
                env_files["requirements.txt"] = text.encode()
                env_steps.append("python -m pip install --no-cache-dir -r /tmp/kiln-env/requirements.txt")
        summary.append(f"{env_yml.name}: {len(wanted.pip)} pip package(s)")
    elif pipfile is not None:
        for name in ("Pipfile", "Pipfile.lock"):
            if files.present(cfg / name):
                env_files[name] = files.read_bytes(cfg / name)
        version = _pipfile_python(env_files, offered_pythons) or version
        locked = "--ignore-pipfile" if files.present(cfg / "Pipfile.lock") else "--skip-lock"
        step = f"cd {{dir}} && PIPENV_VENV_IN_PROJECT=0 pipenv install --system --dev {locked}"
        pipfile_text = env_files["Pipfile"].decode(errors="replace") if "Pipfile" in env_files else ""
        if re.search(r"path\s*=\s*['\"]\.", pipfile_text):
            repo_steps.append("pip install --no-cache-dir pipenv==2024.4.1 && " + step.format(dir=HOME + "/" + rel))
        else:
            env_steps.append("pip install --no-cache-dir pipenv==2024.4.1 && " + step.format(dir="/tmp/kiln-env"))
        summary.append(f"{pipfile.name} with pipenv")
    elif files.present(requirements):
        text = files.read_text(requirements)
        if _LOCAL_REQ.search(text):
            repo_steps.append(f"pip install --no-cache-dir -r {prefix}requirements.txt")  # refers to files of the repository
        else:
            env_files["requirements.txt"] = text.encode()
            env_steps.append("pip install --no-cache-dir -r /tmp/kiln-env/requirements.txt")
        summary.append("requirements.txt")
    r_lines: list[str] = []
    if r_wanted is not None:
        r_conf = r_settings or RSettings()
        offered_r = dict(r_conf.versions)
        r_version = r_wanted.version or next(iter(offered_r))
        if r_version not in offered_r or offered_r[r_version] not in offered_pythons:
            usable = [v for v, py in offered_r.items() if py in offered_pythons]
            raise BuildpackError(f"{r_wanted.why} asks for R {r_version}; this Binder offers R {', '.join(usable)}.")
        version = offered_r[r_version]
        cran = r_conf.cran_url.replace("{date}", r_wanted.date or "latest")
        apt_r = ["r-base-core", "r-cran-irkernel", "r-cran-remotes", *dict.fromkeys(r_packages)]
        env_files["kiln-r.json"] = json.dumps({"r": r_version, "cran": cran, "debian": apt_r}).encode()
        rprofile = f"options(repos = c(CRAN = {json.dumps(cran)}))"
        r_lines = ["USER root",
                   ("RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends " + " ".join(apt_r)
                    + " && apt-get clean && rm -rf /var/lib/apt/lists/*"
                    + f" && printf '%s\\n' {shlex.quote(rprofile)} >> /etc/R/Rprofile.site"
                    + f" && mkdir -p /srv/rlibs && chown {NB_UID}:{NB_UID} /srv/rlibs"),
                   f"USER {NB_USER}",
                   # The R kernel beside Python's, where the server's Jupyter looks (its own prefix).
                   "ENV R_LIBS_USER=/srv/rlibs",
                   "RUN R --quiet --no-save -e \"IRkernel::installspec(prefix = '/srv/venv', displayname = 'R')\""]
        summary.append(f"R {r_version} from Debian ({r_wanted.why}), CRAN packages from {cran}"
                       + (f", {len(r_packages)} Debian r-cran package(s)" if r_packages else ""))
        if files.present(cfg / "install.R"):
            env_files["install.R"] = files.read_bytes(cfg / "install.R")
            env_steps.append("cd /tmp/kiln-env && Rscript install.R")
            summary.append("install.R")
        if cfg == repo and files.present(repo / "DESCRIPTION"):
            repo_steps.append("R --quiet --no-save -e \"remotes::install_local(upgrade = 'never')\"")
            summary.append("DESCRIPTION: the repository installed as an R package")
    if env_yml is None and pipfile is None and r_wanted is None and _installs_package(repo, cfg, files):
        repo_steps.append("pip install --no-cache-dir .")
        summary.append("the repository installed as a package")
    summary.insert(0, f"Python from conda ({conda_python})" if conda_python else f"Python {version} from the base image")
    base_image = (base_images or {}).get(version, base_image)

    key_material = [base_image.encode(), version.encode()] + [name.encode() + b"\0" + data for name, data in sorted(env_files.items())]
    env_key = hashlib.sha256(b"\0\0".join(key_material)).hexdigest()[:20]
    # Every instruction costs the legacy builder a container, so there are as few as the rules allow:
    # COPY --chown needs no USER switch, and the base image already runs as jovyan in its home.
    env_lines = [f"FROM {base_image}"]
    if env_files:
        env_lines.append(f"COPY --chown={NB_UID}:{NB_UID} . /tmp/kiln-env/")
    if apt:
        env_lines += ["USER root",
                      ("RUN apt-get update -qq && xargs -a /tmp/kiln-env/apt.txt apt-get install -y -qq --no-install-recommends"
                      " && apt-get clean && rm -rf /var/lib/apt/lists/*"), f"USER {NB_USER}"]
    env_lines += r_lines
    if conda_step:
        # The conda environment first on PATH, in login shells too (KILN_ENV_PATH: the base image's profile
        # script), and its Python, when it has one, is the kernel the server starts.
        env_lines += [f"RUN {conda_step}",
                      (f"ENV KILN_ENV_PATH={CONDA_PREFIX}/bin:${{KILN_ENV_PATH}} PATH={CONDA_PREFIX}/bin:${{PATH}} "
                       f"CONDA_PREFIX={CONDA_PREFIX}"),
                      f"RUN {CONDA_KERNEL_STEP}"]
    env_lines += [f"RUN {step}" for step in env_steps]
    env_lines.append(f'ENV PYTHONUNBUFFERED=1\nLABEL org.kiln.env="{env_key}"')

    repo_lines = ["FROM {env_image}", f"COPY --chown={NB_UID}:{NB_UID} {REPO_SUBDIR}/ {HOME}/"]
    repo_lines += [f"RUN {step}" for step in repo_steps]
    if files.present(cfg / "postBuild"):
        repo_lines.append(f"RUN chmod +x {prefix}postBuild && ./{prefix}postBuild")
        summary.append("postBuild")
    if files.present(cfg / "start"):
        repo_lines += ["USER root", "COPY kiln-entrypoint /usr/local/bin/kiln-entrypoint",
                       "RUN chmod 0755 /usr/local/bin/kiln-entrypoint" + f" && chmod +x {HOME}/{prefix}start", f"USER {NB_USER}",
                       f"ENV R2D_ENTRYPOINT={HOME}/{prefix}start",
                       'ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/kiln-entrypoint"]']
        summary.append("start")
    # Labels last and in one instruction (the build API's labels parameter costs a step per label).
    repo_lines.append("LABEL " + " ".join(f"{k}={json.dumps(v)}" for k, v in labels.items()))
    return Plan(kind="python", env_dockerfile="\n".join(env_lines) + "\n", env_files=env_files, env_key=env_key,
                repo_dockerfile="\n".join(repo_lines) + "\n", python_version=version, summary=summary, labels=labels)


# The kernel the server (in /srv/venv) starts is conda's Python when the environment has one: its
# ipykernel (from PyPI unless the environment has it) registered as python3, which hides the server's own.
CONDA_KERNEL_STEP = (f"if [ -x {CONDA_PREFIX}/bin/python ]; then py={CONDA_PREFIX}/bin/python"
                     " && { $py -c 'import ipykernel' 2>/dev/null || { { $py -m pip --version >/dev/null 2>&1"
                     " || $py -m ensurepip -q; } && $py -m pip install -q --no-cache-dir ipykernel; }; }"
                     " && $py -m ipykernel install --prefix /srv/venv --name python3 --display-name 'Python 3 (ipykernel)'"
                     " >/dev/null; fi")

CONDA_INSTALL_SCRIPT = (Path(__file__).parent / "conda_install.py").read_bytes()

ENTRYPOINT_SCRIPT = """#!/bin/sh
# Runs the repository's start script in front of the server command, as repo2docker's entrypoint does.
if [ -n "$R2D_ENTRYPOINT" ]; then exec "$R2D_ENTRYPOINT" "$@"; fi
exec "$@"
"""
