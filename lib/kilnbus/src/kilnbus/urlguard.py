"""The one rule for which repository URLs Kiln may fetch, shared by the resolver and the builder.

The resolver checks a URL before it asks the git server anything; the builder checks it again
before it fetches, because a build request is only as trustworthy as whoever could write it to the
bus. Both must apply the same rule, and services must not import each other, so it lives here.

Refused: schemes not allowed, git's ``<transport>::<address>`` remote helpers (``ext::`` runs a
command), credentials inside the URL, hosts that look like command-line options, and hosts that
resolve to private, loopback, link-local, reserved, multicast or unspecified addresses unless an
operator allowed them.
"""

from __future__ import annotations

import asyncio
import atexit
import ipaddress
import logging
import os
import re
import shutil
import socket
import tempfile
from urllib.parse import SplitResult, urlsplit

log = logging.getLogger(__name__)

# git reads "<helper>::<address>" as "run git-remote-<helper>"; ext:: runs an arbitrary command.
_REMOTE_HELPER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class UnsafeRepoURL(Exception):
    """A repository URL Kiln will not fetch; the message is safe to show (it never repeats credentials).

    ``cause`` is machine-readable (analytics), ``status`` the HTTP-like status BinderHub would use.
    """

    def __init__(self, message: str, cause: str, status: int) -> None:
        super().__init__(message)
        self.cause = cause
        self.status = status


def redact(url: str) -> str:
    """``url`` with any user name and password replaced, for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"***@{host}").geturl()


def parse_repo_url(url: str, allowed_schemes: list[str]) -> SplitResult:
    """Check the shape of ``url`` (no network): scheme, helpers, credentials, host. Returns its parts."""
    if _REMOTE_HELPER.match(url):
        raise UnsafeRepoURL("Git remote helpers (<transport>::<address>) are not allowed here.", "banned", 400)
    if _CONTROL.search(url):
        raise UnsafeRepoURL("The repository URL contains spaces or control characters.", "bad_spec", 400)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise UnsafeRepoURL("The repository URL is not a valid URL.", "bad_spec", 400) from None
    del port
    scheme = parts.scheme.lower()
    if scheme not in allowed_schemes:
        raise UnsafeRepoURL(f"Git URLs with scheme {scheme!r} are not allowed here (allowed: {', '.join(allowed_schemes)}).",
                            "banned", 400)
    # ssh://git@host/... names an account, which is not a secret; anything else before "@" is (a
    # token as user name is GitHub's usual form). The message never repeats what was there.
    if parts.password is not None or (parts.username is not None and scheme != "ssh"):
        raise UnsafeRepoURL("Repository URLs with a user name or password in them are refused: credentials in a launch "
                            "link would be stored, logged and shown to others. Launch a public repository instead.",
                            "credentials_in_url", 400)
    host = parts.hostname
    if not host:
        raise UnsafeRepoURL("The repository URL names no host.", "bad_spec", 400)
    if host.startswith("-"):
        raise UnsafeRepoURL("The repository host is not a valid host name.", "bad_spec", 400)
    return parts


def _is_internal(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return bool(addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved or addr.is_multicast
                or addr.is_unspecified)


async def public_addresses(host: str, allowed: list[str]) -> list[str]:
    """The addresses ``host`` resolves to, after checking every one is public (or the host or address allowed).

    Every address is checked, not the first: a name with one public and one private address would
    otherwise let whichever the fetcher picks reach the private one.
    """
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UnsafeRepoURL(f"The host {host!r} does not resolve.", "provider_unreachable", 404) from None
    addresses: list[str] = []
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if host not in allowed and str(addr) not in allowed and _is_internal(addr):
            # Which address it resolved to would tell the user about Kiln's own network: that goes to the log.
            log.info("host %r refused: it resolves to the internal address %s", host, addr)
            raise UnsafeRepoURL(f"The host {host!r} is on a private network; this Binder does not launch from there.",
                                "private_host", 403)
        if str(addr) not in addresses:
            addresses.append(str(addr))
    return addresses


async def check_public_host(host: str, allowed: list[str]) -> None:
    """Raise ``UnsafeRepoURL`` unless ``host`` is allowed or resolves only to public addresses."""
    if host in allowed:
        return
    await public_addresses(host, allowed)


async def check_repo_url(url: str, allowed_schemes: list[str], allowed_private_hosts: list[str]) -> SplitResult:
    """The full rule: ``parse_repo_url`` then ``check_public_host``. Returns the URL's parts."""
    parts = parse_repo_url(url, allowed_schemes)
    assert parts.hostname is not None
    await check_public_host(parts.hostname, allowed_private_hosts)
    return parts


def git_safety_args(schemes: list[str]) -> list[str]:
    """``git -c`` options for talking to an untrusted remote: no redirects, only ``schemes`` as transports.

    A redirect would take git to a host the check above never saw (an internal one); ``file``,
    ``ext`` and every other transport (submodules included) are off unless listed.
    """
    args = ["-c", "http.followRedirects=false", "-c", "protocol.allow=never", "-c", "submodule.recurse=false",
            "-c", "credential.helper=", "-c", "core.askPass=/bin/true"]
    for scheme in schemes:
        if scheme in ("http", "https", "git", "ssh"):
            args += ["-c", f"protocol.{scheme}.allow=always"]
    return args


# What git needs from the service's environment to run and reach hosts (CA bundle, proxies); the
# rest (KILN_* settings: passwords, keys) is none of a stranger's remote's or hooks' business.
_GIT_PASSED = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "GIT_SSL_CAINFO",
               "http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
# ssh reads ~/.ssh from the account's home, not $HOME: no configuration, no keys, no agent, no prompt.
GIT_SSH_COMMAND = "ssh -F /dev/null -o IdentitiesOnly=yes -o IdentityFile=/dev/null -o BatchMode=yes"


def git_env() -> dict[str, str]:
    """The environment for git run against an untrusted remote: never prompting, no config but Kiln's.

    HOME is an empty directory made for git alone (private, removed at exit), so neither git nor curl
    under it reads the service's ``~/.netrc``, ``~/.gitconfig`` or ``~/.config/git``: a remote cannot
    be sent credentials the service happens to hold.
    """
    home = tempfile.mkdtemp(prefix="kiln-git-home-")  # mode 0700
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k in _GIT_PASSED}
    return env | {"HOME": home, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true", "GIT_SSH_COMMAND": GIT_SSH_COMMAND,
                  # The service's own git configuration is not the repository's business.
                  "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
