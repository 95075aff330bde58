"""What a repository's own Dockerfile may not ask of the Docker engine.

Build steps (RUN) run on the build network, with no route to the host. A few instructions are
carried out by the engine itself instead, on the host's own network, where Kiln's parts and a
cloud's metadata service are: ADD from a URL, a FROM (or COPY --from) image on a registry at a
private or loopback address, and ONBUILD triggers, which run their instruction (an ADD from a URL,
say) in a later build that starts from the image. These are refused before the build starts, each
with what to do instead. Images from Kiln's own registry and from public registries are fine.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from kilnbus.urlguard import UnsafeRepoURL, check_public_host

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^git@")


class DockerfileRefused(Exception):
    """The Dockerfile asks the engine for something Kiln does not allow; the message says what."""


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


_DIRECTIVE = re.compile(r"^#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$")


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, read the way Docker's parser reads them.

    Parser directives (``# escape=``) are honoured at the top; a line ending in the escape character
    continues on the next; inside a continuation, comment lines and empty lines are skipped and the
    next line is joined as it stands (no space added). Reading it any other way would let a
    Dockerfile show this check one instruction and the engine another.
    """
    lines = text.splitlines()
    escape, first = "\\", 0
    for line in lines:  # directives: only before anything else, as Docker reads them
        m = _DIRECTIVE.match(line.strip())
        if m is None:
            break
        if m.group(1).lower() == "escape":
            if m.group(2) not in ("\\", "`"):
                raise DockerfileRefused(f"Dockerfile line {first + 1}: the escape character must be \\ or `.")
            escape = m.group(2)
        first += 1
    continued = re.compile(re.escape(escape) + r"[ \t]*$")
    found: list[Instruction] = []
    pending: str | None = None
    start = 0
    for number in range(first, len(lines)):
        raw = lines[number]
        blank_or_comment = not raw.strip() or raw.lstrip().startswith("#")
        if blank_or_comment:
            continue  # outside an instruction and inside a continuation alike
        if pending is None:
            start, raw = number + 1, raw.lstrip()
            pending = ""
        if continued.search(raw):
            pending += continued.sub("", raw)
            continue
        whole, pending = (pending + raw).strip(), None
        found.append(_instruction(start, whole))
    if pending and pending.strip():
        found.append(_instruction(start, pending.strip()))
    return found


def _instruction(line: int, whole: str) -> Instruction:
    keyword, *rest = whole.split(None, 1)  # any whitespace ends the keyword, tabs too
    return Instruction(line, keyword.upper(), rest[0].strip() if rest else "")


def _words(args: str) -> list[str]:
    """An instruction's arguments in either form: JSON array or shell words."""
    if args.startswith("["):
        try:
            parsed = json.loads(args)
            if isinstance(parsed, list):
                return [str(w) for w in parsed]
        except ValueError:
            pass
    try:
        return shlex.split(args)
    except ValueError:
        return args.split()


def registry_host(image: str) -> str | None:
    """The registry host an image reference names, or None for Docker Hub's default."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


async def check_dockerfile(text: str, trusted_registries: list[str]) -> list[str]:
    """Refuse what the engine would fetch on the host's network; return the external images named.

    ``trusted_registries`` (host[:port]) are allowed whatever their address: Kiln's own registry.
    """
    stages: set[str] = set()
    images: list[str] = []
    for ins in instructions(text):
        where = f"Dockerfile line {ins.line}"
        if ins.keyword == "ONBUILD":
            raise DockerfileRefused(f"{where}: ONBUILD is not supported: its instruction would run in some later "
                                    "build that starts from this image. Write the steps into the Dockerfile that needs them.")
        if ins.keyword == "ADD":
            # "://" anywhere in an ADD is refused, whatever the quoting, and so is a source named by a
            # variable: the engine fetches URLs for ADD itself. (A variable destination is fine.)
            words = [w for w in _words(ins.args) if not w.startswith("--")]
            if "://" in ins.args or any(_URL.search(w) or "$" in w for w in words[:-1]):
                raise DockerfileRefused(f"{where}: ADD from a URL or a variable is not allowed: the Docker engine would "
                                        "fetch it from Kiln's own network. Download it in a RUN step instead "
                                        "(RUN curl -fsSLO <url>), which runs on the build network.")
        referenced: list[str] = []
        if ins.keyword == "FROM":
            words = [w for w in _words(ins.args) if not w.startswith("--")]
            if words:
                referenced.append(words[0])
                if len(words) >= 3 and words[1].lower() == "as":
                    stages.add(words[2].lower())
        if ins.keyword in ("COPY", "ADD"):
            referenced += [w.split("=", 1)[1] for w in _words(ins.args) if w.startswith("--from=")]
        for image in referenced:
            if image.lower() in stages or image.isdigit() or image == "scratch":
                continue
            if "$" in image:
                raise DockerfileRefused(f"{where}: an image named through a variable ({image}) is not allowed: Kiln checks "
                                        "where each image comes from before the build. Name the image itself.")
            host = registry_host(image)
            if host is not None and host not in trusted_registries:
                name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]", 1)[0].lstrip("[")
                try:
                    await check_public_host(name, [])
                except UnsafeRepoURL as exc:
                    if exc.cause == "private_host":
                        raise DockerfileRefused(f"{where}: the image {image} comes from a registry on a private or local "
                                                "address, which Kiln does not fetch from. Use a public registry or Kiln's "
                                                "own.") from None
                    # A name that does not resolve: the engine's own pull fails and says so.
            images.append(image)
    return images
