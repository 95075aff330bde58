"""Checking ``<provider>/<spec>`` at the door, before anything reaches the other services.

Only the shape is checked here (the resolver decides whether a repository and ref exist), using
the same rules as BinderHub's providers: a prefix from the shared table (``kilnbus.providers``, the
providers the resolver can launch), the provider's spec layout, a sane ref, and no control
characters or oversized input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from kilnbus.providers import RefLayout, UnknownProvider
from kilnbus.providers import provider as lookup


class SpecError(ValueError):
    """A launch request that cannot be valid; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# What git accepts as a ref name, roughly (git check-ref-format), plus the "HEAD" and sha forms.
_BAD_REF = re.compile(r"(^[./-])|(\.\.)|([\x00-\x20\x7f~^:?*\[\\])|(@\{)|(\.lock$)|(/\.)|(//)|([./]$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class LaunchSpec:
    """A syntactically valid launch request."""

    provider: str
    spec: str
    ref: str


def parse(provider: str, spec: str, max_length: int = 1024) -> LaunchSpec:
    """Check a ``<provider>/<spec>`` pair; raise SpecError saying what is wrong."""
    try:
        p = lookup(provider)
    except UnknownProvider as exc:
        raise SpecError(str(exc), 404) from None
    if len(provider) + 1 + len(spec) > max_length:
        raise SpecError(f"The spec is {len(spec)} characters long; at most {max_length - len(provider) - 1} are accepted.")
    spec = spec.rstrip("/")
    if not spec:
        raise SpecError(f"The spec for {provider!r} is empty.")
    if _CONTROL.search(spec) or _CONTROL.search(unquote(spec)):
        raise SpecError("The spec contains control characters.")
    if p.ref_layout is RefLayout.AFTER_OWNER_REPO and spec.count("/") == 1:
        raise SpecError(f"{spec!r} has no ref; add one, e.g. {spec}/HEAD.")
    if p.ref_layout is RefLayout.LAST_SEGMENT and "/" not in spec:
        # The repository is one percent-encoded segment; what it lacks is the ref after it.
        raise SpecError(f"{unquote(spec)!r} has no ref; add one after the encoded URL, e.g. {spec}/HEAD.")
    if not re.fullmatch(p.spec_pattern, spec):
        raise SpecError(f"{spec!r} is not a valid {p.display_name} spec; expected something like {p.placeholder.removeprefix('example: ')}"
                        + ("/<ref>" if p.ref_enabled else "") + ".")
    repo, ref = p.split_ref(spec)
    if provider == "git":
        url = unquote(repo)
        if not re.match(r"^(https?|git|ssh)://[^/]+", url) and not re.match(r"^[\w.-]+@[\w.-]+:", url):
            raise SpecError(f"{url!r} is not a git URL Kiln can clone (http, https, git or ssh).")
    if ref != "HEAD" and _BAD_REF.search(unquote(ref)):
        raise SpecError(f"{ref!r} is not a valid git ref.")
    return LaunchSpec(provider, spec, ref)


# How many rounds of percent-decoding a path to open may need before it stops changing. A browser
# decodes once; anything wrapped deeper than this is no honest link, so it is refused outright.
_MAX_DECODES = 4
# A scheme, as a URL parser reads one at the start of a reference ("javascript:", "http:", "c:").
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _layers(value: str) -> list[str]:
    """``value`` and each percent-decoding of it, until decoding changes nothing more."""
    layers = [value]
    for _ in range(_MAX_DECODES):
        decoded = unquote(layers[-1])
        if decoded == layers[-1]:
            return layers
        layers.append(decoded)
    raise SpecError("The path to open is percent-encoded too many times.")


def check_open_path(value: str) -> None:
    """Refuse a ``urlpath``/``labpath``/``filepath`` that a browser could resolve off the server.

    Every decoding of the value is checked, since the value may be decoded again on its way to
    the browser (and a browser itself reads ``%2e%2e`` as ``..``). What a WHATWG URL parser does
    with a relative reference decides the rules: it turns backslashes into slashes, drops leading
    spaces and control characters and removes tabs and newlines anywhere, reads ``//`` at the
    start as a new host and a leading ``word:`` as a scheme.
    """
    for layer in _layers(value):
        if _CONTROL.search(layer):
            raise SpecError("The path to open contains control characters.")
        if "\\" in layer:
            raise SpecError("The path to open may not contain backslashes.")
        if layer[:1].isspace():
            raise SpecError("The path to open may not start with whitespace.")
        if layer.startswith("//"):
            raise SpecError("The path to open may not start with '//': a browser reads that as another host.")
        if _SCHEME.match(layer):
            raise SpecError("The path to open must be a path inside the server, not a URL.")
        if ".." in layer.split("/"):
            raise SpecError("The path to open may not contain '..'.")


def launch_path(urlpath: str | None, labpath: str | None, filepath: str | None) -> str:
    """The path inside the server to open (BinderHub's rules), refusing anything that leaves it.

    The parameters are the query values as received (decoded once). The result is relative to the
    server's URL; the loading page still checks that resolving it stays on the server's origin.
    """
    if labpath:
        check_open_path(labpath)
        path = "doc/tree/" + labpath.strip("/")
    elif filepath:
        check_open_path(filepath)
        path = "tree/" + filepath.strip("/")
    else:
        check_open_path(urlpath or "")
        path = (urlpath or "").removeprefix("/")  # "/lab" and "lab" both mean the server's /lab
    check_open_path(path)  # what the browser resolves, prefix included
    return path
