"""From a checked-out repository to Dockerfiles, with repo2docker's detection order and file rules.

Kiln keeps repo2docker's user-facing meaning of every file it supports (requirements.txt,
setup.py, pyproject.toml, Pipfile, environment.yml with Python and pip only, runtime.txt, apt.txt,
postBuild, start, Dockerfile, the binder/ and .binder/ folders) and builds in two stages:

- the *environment* image: the base image plus apt.txt and the Python environment, named after a
  hash of the base image and the environment files, so it is shared by every commit and every
  repository with the same environment;
- the *repository* image: the environment image plus the repository's files, package installs
  that need them, postBuild, start, and repo2docker's labels.

Anything needing conda-forge, R, Julia or Nix cannot be built from PyPI and Debian alone and is
refused with a message that says so. (Why not repo2docker itself: docs/decisions.md.)
"""

from __future__ import annotations

import hashlib
import re
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

NB_USER, NB_UID = "jovyan", 1000
REPO_SUBDIR = "repo"  # where the repository sits in the build context, beside Kiln's own files
HOME = f"/home/{NB_USER}"
_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")  # what Debian allows, and no shell syntax
_LOCAL_REQ = re.compile(r"^\s*(-r|--requirement|-c|--constraint|-e|--editable)?\s*(\.|file:|/|\.\./)", re.MULTILINE)


class BuildpackError(Exception):
    """The repository asks for something Kiln cannot build; the message says what and why."""


@dataclass
class Plan:
    """What to build: an optional environment stage and the repository stage."""

    kind: str  # "dockerfile" or "python"
    env_dockerfile: str | None = None
    env_files: dict[str, bytes] = field(default_factory=dict)  # name in the env context -> content
    env_key: str | None = None
    repo_dockerfile: str = ""
    dockerfile_path: Path | None = None  # the repository's own Dockerfile
    python_version: str = ""
    summary: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


def config_dir(repo: Path) -> Path:
    binder, dot_binder = repo / "binder", repo / ".binder"
    if binder.is_dir() and dot_binder.is_dir():
        raise BuildpackError("The repository has both binder/ and .binder/ folders; keep one.")
    return binder if binder.is_dir() else dot_binder if dot_binder.is_dir() else repo


def _unsupported(repo: Path, cfg: Path) -> None:
    at_root = cfg == repo
    checks = [
        (cfg / "Project.toml", "Julia (Project.toml)"), (cfg / "JuliaProject.toml", "Julia (JuliaProject.toml)"),
        (cfg / "REQUIRE", "Julia (REQUIRE)"), (cfg / "default.nix", "Nix (default.nix)"),
        (cfg / "install.R", "R (install.R)"),
    ]
    if at_root:
        checks.append((repo / "DESCRIPTION", "an R package (DESCRIPTION)"))
    for path, what in checks:
        if path.exists():
            raise BuildpackError(f"This repository needs {what}, which Kiln cannot build: it builds environments from "
                                 "PyPI and Debian packages only.")
    runtime = cfg / "runtime.txt"
    if runtime.exists() and runtime.read_text().strip().startswith("r-"):
        raise BuildpackError("runtime.txt asks for R, which Kiln cannot build: it builds from PyPI and Debian packages only.")


def python_version(cfg: Path, offered: list[str]) -> str:
    """The Python runtime.txt asks for, checked against what the base image offers."""
    runtime = cfg / "runtime.txt"
    default = offered[0]
    if not runtime.exists():
        return default
    text = runtime.read_text().strip()
    m = re.fullmatch(r"python-(\d+)(?:\.(\d+))?(?:\.\d+)?(?:-\d{4}-\d{2}-\d{2})?", text)
    if not m:
        raise BuildpackError(f"runtime.txt says {text!r}; expected python-X.Y (e.g. python-{default}).")
    wanted = m.group(1) + (f".{m.group(2)}" if m.group(2) else "")
    if wanted == "3" or wanted in offered:
        return default if wanted == "3" else wanted
    raise BuildpackError(f"runtime.txt asks for Python {wanted}; this Binder offers Python {', '.join(offered)}.")


def _apt_packages(cfg: Path) -> list[str]:
    path = cfg / "apt.txt"
    if not path.exists():
        return []
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not _APT_NAME.match(line):
            raise BuildpackError(f"apt.txt: {line!r} is not a Debian package name (one name per line, no versions).")
        names.append(line)
    return names


def _environment_yml(path: Path, offered: list[str]) -> tuple[str | None, list[str]]:
    """(python version or None, pip requirements) from an environment.yml of Python and pip only."""
    try:
        env = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise BuildpackError(f"{path.name} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(env, dict):
        raise BuildpackError(f"{path.name} must be a mapping with a 'dependencies' list.")
    version, pip, other = None, [], []
    for dep in env.get("dependencies") or []:
        if isinstance(dep, dict) and set(dep) == {"pip"}:
            pip.extend(str(p) for p in dep["pip"] or [])
        elif isinstance(dep, str):
            name = re.split(r"[=<>! ]", dep.split("::")[-1], maxsplit=1)[0]
            if name == "python":
                m = re.search(r"=\s*(\d+(?:\.\d+)?)", dep)
                version = m.group(1) if m else None
            elif name != "pip":
                other.append(dep)
        else:
            other.append(str(dep))
    if other:
        raise BuildpackError(f"{path.name} asks for conda packages Kiln cannot install: {', '.join(other)}. Kiln builds from "
                             "PyPI and Debian only: list them under 'pip:' (or in requirements.txt) if they are on PyPI.")
    if version and version not in offered and version != "3":
        raise BuildpackError(f"{path.name} asks for Python {version}; this Binder offers Python {', '.join(offered)}.")
    return version, pip


def _installs_package(repo: Path, cfg: Path) -> bool:
    if cfg != repo:
        return False  # with a binder folder, repo2docker ignores a root setup.py / pyproject.toml
    if (repo / "setup.py").exists():
        return True
    pyproject = repo / "pyproject.toml"
    if pyproject.exists():
        text = pyproject.read_text()
        return "[project]" in text and "[build-system]" in text
    return False


def plan(repo: Path, base_image: str, offered_pythons: list[str], labels: dict[str, str]) -> Plan:
    """Decide how to build ``repo``, following repo2docker's order (Dockerfile first, then Python)."""
    cfg = config_dir(repo)
    rel = cfg.relative_to(repo).as_posix()
    prefix = "" if rel == "." else rel + "/"
    root_dockerfile = repo / "Dockerfile"
    if root_dockerfile.exists() and re.search(r"^\s*FROM\s+andrewosh/binder-base", root_dockerfile.read_text(), re.M | re.I):
        raise BuildpackError("This Dockerfile builds on andrewosh/binder-base, which Binder stopped supporting in 2020.")
    if (cfg / "Dockerfile").exists():
        return Plan(kind="dockerfile", dockerfile_path=cfg / "Dockerfile", summary=[f"Using {prefix}Dockerfile"], labels=labels)
    _unsupported(repo, cfg)

    version = python_version(cfg, offered_pythons)
    apt = _apt_packages(cfg)
    env_files: dict[str, bytes] = {}
    env_steps: list[str] = []
    repo_steps: list[str] = []
    summary = [f"Python {version} from the base image"]
    if apt:
        env_files["apt.txt"] = ("\n".join(apt) + "\n").encode()
        summary.append(f"apt.txt: {len(apt)} package(s)")
    env_yml = next((cfg / n for n in ("environment.yml", "environment.yaml") if (cfg / n).exists()), None)
    pipfile = next((cfg / n for n in ("Pipfile.lock", "Pipfile") if (cfg / n).exists()), None)
    requirements = cfg / "requirements.txt"
    if env_yml is not None:
        yml_version, pip_reqs = _environment_yml(env_yml, offered_pythons)
        version = yml_version if yml_version and yml_version != "3" else version
        if pip_reqs:
            env_files["requirements.txt"] = ("\n".join(pip_reqs) + "\n").encode()
            env_steps.append("pip install --no-cache-dir -r /tmp/kiln-env/requirements.txt")
        summary.append(f"{env_yml.name}: {len(pip_reqs)} pip package(s)")
    elif pipfile is not None:
        for name in ("Pipfile", "Pipfile.lock"):
            if (cfg / name).exists():
                env_files[name] = (cfg / name).read_bytes()
        locked = "--ignore-pipfile" if (cfg / "Pipfile.lock").exists() else "--skip-lock"
        step = f"cd {{dir}} && PIPENV_VENV_IN_PROJECT=0 pipenv install --system --dev {locked}"
        if re.search(r"path\s*=\s*['\"]\.", (cfg / "Pipfile").read_text() if (cfg / "Pipfile").exists() else ""):
            repo_steps.append("pip install --no-cache-dir pipenv==2024.4.1 && " + step.format(dir=HOME + "/" + rel))
        else:
            env_steps.append("pip install --no-cache-dir pipenv==2024.4.1 && " + step.format(dir="/tmp/kiln-env"))
        summary.append(f"{pipfile.name} with pipenv")
    elif requirements.exists():
        text = requirements.read_text()
        if _LOCAL_REQ.search(text):
            repo_steps.append(f"pip install --no-cache-dir -r {prefix}requirements.txt")  # refers to files of the repository
        else:
            env_files["requirements.txt"] = text.encode()
            env_steps.append("pip install --no-cache-dir -r /tmp/kiln-env/requirements.txt")
        summary.append("requirements.txt")
    if _installs_package(repo, cfg):
        repo_steps.append("pip install --no-cache-dir .")
        summary.append("the repository installed as a package")

    key_material = [base_image.encode(), version.encode()] + [name.encode() + b"\0" + data for name, data in sorted(env_files.items())]
    env_key = hashlib.sha256(b"\0\0".join(key_material)).hexdigest()[:20]
    # Every instruction costs the legacy builder a container, so there are as few as the rules allow:
    # COPY --chown needs no USER switch, and the base image already runs as jovyan in its home.
    env_lines = [f"FROM {base_image}"]
    if env_files:
        env_lines.append(f"COPY --chown={NB_UID}:{NB_UID} . /tmp/kiln-env/")
    if apt:
        env_lines += ["USER root",
                      "RUN apt-get update -qq && xargs -a /tmp/kiln-env/apt.txt apt-get install -y -qq --no-install-recommends"
                      " && apt-get clean && rm -rf /var/lib/apt/lists/*", f"USER {NB_USER}"]
    env_lines += [f"RUN {step}" for step in env_steps]
    env_lines.append(f'ENV PYTHONUNBUFFERED=1\nLABEL org.kiln.env="{env_key}"')

    repo_lines = ["FROM {env_image}", f"COPY --chown={NB_UID}:{NB_UID} {REPO_SUBDIR}/ {HOME}/"]
    repo_lines += [f"RUN {step}" for step in repo_steps]
    if (cfg / "postBuild").exists():
        repo_lines.append(f"RUN chmod +x {prefix}postBuild && ./{prefix}postBuild")
        summary.append("postBuild")
    if (cfg / "start").exists():
        repo_lines += ["USER root", "COPY kiln-entrypoint /usr/local/bin/kiln-entrypoint",
                       "RUN chmod 0755 /usr/local/bin/kiln-entrypoint" + f" && chmod +x {HOME}/{prefix}start", f"USER {NB_USER}",
                       f"ENV R2D_ENTRYPOINT={HOME}/{prefix}start",
                       'ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/kiln-entrypoint"]']
        summary.append("start")
    # Labels last and in one instruction (the build API's labels parameter costs a step per label).
    repo_lines.append("LABEL " + " ".join(f"{k}={json.dumps(v)}" for k, v in labels.items()))
    return Plan(kind="python", env_dockerfile="\n".join(env_lines) + "\n", env_files=env_files, env_key=env_key,
                repo_dockerfile="\n".join(repo_lines) + "\n", python_version=version, summary=summary, labels=labels)


ENTRYPOINT_SCRIPT = """#!/bin/sh
# Runs the repository's start script in front of the server command, as repo2docker's entrypoint does.
if [ -n "$R2D_ENTRYPOINT" ]; then exec "$R2D_ENTRYPOINT" "$@"; fi
exec "$@"
"""
