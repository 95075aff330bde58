"""What a repository's own Dockerfile may not ask of the Docker engine.

Build steps (RUN) run on the build network, with no route to the host. A few instructions are
carried out by the engine itself instead, on the host's own network, where Kiln's parts and a
cloud's metadata service are: ADD from a URL, a FROM (or COPY --from, or RUN --mount=from=) image on
a registry at a private or loopback address, ONBUILD triggers, which run their instruction (an ADD
from a URL, say) in a later build that starts from the image, and BuildKit's ``# syntax=`` frontend
image, which could ask for anything. These are refused before the build starts, each with what to do
instead. Images from Kiln's own registry and from public registries are fine.

The check is only as good as its reading of the file: if it reads the Dockerfile in any way other
than the engine does, a Dockerfile can show it one instruction and the engine another. So the file is
read the way Docker's parser (moby/buildkit ``frontend/dockerfile/parser``) reads it: lines end at
``\\n`` only, whitespace is ``[ \\t\\v\\f\\r]``, parser directives stop at the first line that is not
one, the escape character joins lines and escapes characters in arguments, flags are split as
Docker splits them, and image names are read after Docker's shell lexer removes quotes and escapes.
What Docker and Python would read differently is refused outright instead of guessed at: control
characters, non-ASCII spaces and line separators, unreadable image names. Heredocs (BuildKit) are
read both ways, with and without, and both readings are checked, because the local engine (classic
builder) does not know them and BuildKit does.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from kilnbus.urlguard import UnsafeRepoURL, check_public_host


class DockerfileRefused(Exception):
    """The Dockerfile asks the engine for something Kiln does not allow; the message says what."""


@dataclass(frozen=True)
class Instruction:
    """One instruction as Docker's parser sees it.

    ``args`` is the text after the keyword (flags included, as written); ``flags`` are the
    ``--name=value`` options Docker extracts (without the dashes, quotes and escapes removed) and
    ``rest`` what follows them.
    """

    line: int
    keyword: str
    args: str
    flags: tuple[str, ...] = ()
    rest: str = ""
    escape: str = "\\"
    sub: Instruction | None = field(default=None, compare=False)  # ONBUILD's instruction


# -- characters Docker and Python disagree about ----------------------------------------------------

# Python's str.splitlines() ends lines at \r, \v, \f, \x1c-\x1e, \x85, \u2028 and \u2029; Docker only at
# \n, and it counts \v, \f and \r as spaces inside a line, and Go's unicode.IsSpace counts \x85 and the
# Unicode spaces when it trims. None of them has a use in a Dockerfile, so instead of reproducing every
# corner of both, a Dockerfile with any of them is refused. \t and \n are fine, and \r right before a
# \n (Windows line ends). A BOM is allowed only first (Docker drops it there; read_text already has).
_HIDDEN = re.compile("[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f\u00a0\u1680\u180e\u2000-\u200b\u2028\u2029\u202f\u205f"
                     "\u3000\ufeff\ud800-\udfff]|\r(?!\n)")


def _refuse_hidden_characters(text: str) -> None:
    m = _HIDDEN.search(text)
    if m is None:
        return
    number = text.count("\n", 0, m.start()) + 1
    # The code point, not the line: the content is the repository's, and may be made to mislead.
    raise DockerfileRefused(f"Dockerfile line {number} contains a control character or an unusual space or line "
                            f"break (U+{ord(m.group()[0]):04X}), which Kiln does not accept: Docker and Kiln's check "
                            "could read such a line differently. Use plain spaces, tabs and line ends.")


# -- Docker's reading ---------------------------------------------------------------------------------

_WHITESPACE = re.compile(r"[\t\v\f\r ]+")  # parser.reWhitespace
_SPACES = " \t\v\f\r\n"  # what strings.TrimSpace / unicode.IsSpace trim, once the rest is refused
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*", re.ASCII)
_VALID_DIRECTIVES = ("syntax", "escape", "check")
_HEREDOC = re.compile(r"(\d*)<<(-?)[\t\n\f\r ]*([^<]*)", re.ASCII)
_HEREDOC_KEYWORDS = ("ADD", "COPY", "RUN")
_GO_SPACE_BYTES = b"\t\n\v\f\r \x85\xa0"  # unicode.IsSpace(rune(b)) for a single byte, as extractBuilderFlags asks


class _Directives:
    """Parser directives as DirectiveParser reads them: only at the top, each once, stopping for good
    at the first line that is not a valid directive (an unknown ``# key=value`` stops it too)."""

    def __init__(self, prefix: str = "#") -> None:
        self.prefix = prefix
        self.done = False
        self.found: dict[str, str] = {}

    def feed(self, line: str, number: int) -> str | None:
        """The directive's name if ``line`` is one; raises for duplicates (Docker's build fails)."""
        if self.done:
            return None
        if not line.startswith(self.prefix):
            self.done = True
            return None
        m = _DIRECTIVE.fullmatch(line[len(self.prefix):].lstrip(_SPACES))
        if m is None or m.group(1).lower() not in _VALID_DIRECTIVES:
            self.done = True
            return None
        key = m.group(1).lower()
        if key in self.found:
            raise DockerfileRefused(f"Dockerfile line {number}: only one {key} parser directive can be used.")
        self.found[key] = m.group(2)
        return key


def _continuation(escape: str) -> re.Pattern[str]:
    # The parser's lineContinuationRegex: the escape character last on the line (spaces and tabs after
    # it allowed), unless escaped itself, or alone on the line.
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")


def _physical_lines(text: str) -> list[str]:
    """Lines as Docker's scanner cuts them: at ``\\n`` only, a trailing ``\\r`` dropped."""
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the scanner gives no token after the last \n
    return [line.removesuffix("\r") for line in lines]


def _lstrip(line: str) -> str:
    return line.lstrip(_SPACES)


def _is_comment(line: str) -> bool:
    return _lstrip(line).startswith("#")


def instructions(text: str, heredocs: bool = False) -> list[Instruction]:
    """The Dockerfile's instructions, read the way Docker's parser reads them.

    Parser directives are honoured at the top; a line ending in the escape character continues on the
    next; inside a continuation, comment lines and empty lines are skipped and the next line is joined
    as it stands (no space added). With ``heredocs``, the bodies of ``RUN/COPY/ADD <<EOF`` are read as
    BuildKit reads them (content, not instructions); without, as the classic builder does. Raises
    ``DockerfileRefused`` for what would make Docker's build fail at parsing anyway (a bad escape
    directive, a directive twice) and for characters the two readings could disagree on.
    """
    _refuse_hidden_characters(text)
    lines = _physical_lines(text)
    directives = _Directives()
    escape = "\\"
    continued = _continuation(escape)
    found: list[Instruction] = []
    i = 0

    def directive(line: str, number: int) -> None:
        nonlocal escape, continued
        if directives.feed(line, number) == "escape":
            value = directives.found["escape"]
            if value not in ("\\", "`"):
                raise DockerfileRefused(f"Dockerfile line {number}: the escape character must be \\ or `.")
            escape, continued = value, _continuation(value)

    def trim(line: str) -> tuple[str, bool]:
        if continued.search(line):
            return continued.sub(lambda m: m.group(1) or "", line, count=1), False
        return line, True

    while i < len(lines):
        token = _lstrip(lines[i])
        directive(token, i + 1)
        if token.startswith("#"):
            token = ""  # comments (directives included) are no part of any instruction
        i += 1
        start = i
        token, end = trim(token)
        if end and not token:
            continue
        buf = token
        while not end and i < len(lines):
            raw = lines[i]
            directive(raw, i + 1)
            i += 1
            if _is_comment(raw) or not _lstrip(raw):
                continue  # outside an instruction and inside a continuation alike
            piece, end = trim(raw)
            buf += piece
        ins = _instruction(start, buf, escape)
        found.append(ins)
        if heredocs:
            i = _skip_heredocs(ins, lines, i)
    return found


def _instruction(line: int, whole: str, escape: str) -> Instruction:
    """splitCommand: the keyword ends at any Docker whitespace; then the flags are taken off."""
    parts = _WHITESPACE.split(whole.strip(_SPACES), maxsplit=1)
    keyword = parts[0].upper()
    args = parts[1] if len(parts) == 2 else ""
    flags, rest = _builder_flags(line, args, escape)
    sub = _instruction(line, rest, escape) if keyword == "ONBUILD" and rest.strip(_SPACES) else None
    return Instruction(line, keyword, args.strip(_SPACES), tuple(flags), rest.strip(_SPACES), escape, sub)


def _extract_flags(line: str, escape: str) -> tuple[list[str], str]:
    """extractBuilderFlags, byte for byte: leading ``--words`` (quotes and escapes processed) and the rest.

    Docker walks the UTF-8 bytes and asks unicode.IsSpace of each byte alone, so bytes 0x85 and 0xA0
    inside a multi-byte character end a word there; walking bytes here keeps the same cut.
    """
    data, esc, quote_chars = line.encode(), ord(escape), (ord("'"), ord('"'))
    words: list[bytes] = []
    word = bytearray()
    phase, quote, blank_ok = "spaces", 0, False
    pos = 0
    while pos <= len(data):
        ch = data[pos] if pos < len(data) else -1
        if phase == "spaces":
            if pos == len(data):
                break
            if ch in _GO_SPACE_BYTES:
                pos += 1
                continue
            if ch != ord("-") or pos + 1 == len(data) or data[pos + 1] != ord("-"):
                return [w.decode("latin-1") for w in words], data[pos:].decode("utf-8", "surrogateescape")
            phase = "word"
        if pos == len(data):
            if bytes(word) != b"--" and (blank_ok or word):
                words.append(bytes(word))
            break
        if phase == "word":
            if ch in _GO_SPACE_BYTES:
                phase = "spaces"
                if bytes(word) == b"--":
                    return [w.decode("latin-1") for w in words], data[pos:].decode("utf-8", "surrogateescape")
                if blank_ok or word:
                    words.append(bytes(word))
                word, blank_ok = bytearray(), False
                pos += 1
                continue
            if ch in quote_chars:
                quote, blank_ok, phase = ch, True, "quote"
                pos += 1
                continue
            if ch == esc:
                if pos + 1 == len(data):
                    pos += 1
                    continue
                pos += 1
                ch = data[pos]
            word.append(ch)
            pos += 1
            continue
        # phase == "quote"
        if ch == quote:
            phase = "word"
            pos += 1
            continue
        if ch == esc:
            if pos + 1 == len(data):
                phase = "word"
                pos += 1
                continue
            pos += 1
            ch = data[pos]
        word.append(ch)
        pos += 1
    return [w.decode("latin-1") for w in words], ""


def _builder_flags(line: int, args: str, escape: str) -> tuple[list[str], str]:
    """The instruction's flags (``--`` dropped) and the text after them, refusing what engines could
    split differently: older engines escape flags with ``\\`` whatever the escape directive says, and
    non-ASCII in a flag is cut by bytes (see ``_extract_flags``)."""
    flags, rest = _extract_flags(args, escape)
    if escape != "\\" and _extract_flags(args, "\\") != (flags, rest):
        raise DockerfileRefused(f"Dockerfile line {line}: the instruction's --options use the escape character or "
                                "quotes in a way Docker versions read differently. Write the options plainly.")
    if any(not f.isascii() for f in flags) or any("\udc80" <= c <= "\udcff" for c in rest):
        raise DockerfileRefused(f"Dockerfile line {line}: the instruction's --options contain non-ASCII characters, "
                                "which Docker splits byte by byte. Write the options in ASCII.")
    return [f[2:] for f in flags], rest


def _skip_heredocs(ins: Instruction, lines: list[str], i: int) -> int:
    """Past the bodies of the heredocs ``ins`` opens (BuildKit's heredocsFromLine), from line index ``i``."""
    target = ins.sub if ins.keyword == "ONBUILD" and ins.sub is not None else ins
    if target.keyword not in _HEREDOC_KEYWORDS or "<<" not in target.rest or _json_list(target.rest) is not None:
        return i
    for word in _raw_words(f"{ins.keyword} {ins.args}"):  # BuildKit looks at the whole line, flags too
        m = _HEREDOC.fullmatch(word)
        if m is None or not m.group(3):
            continue
        try:
            names = [lex(w, "\\") for w in _raw_words(m.group(3))]
        except DockerfileRefused:
            continue
        if len(names) != 1:
            continue
        name, chomp = names[0], m.group(2) == "-"
        while i < len(lines):
            candidate = lines[i].lstrip("\t") if chomp else lines[i]
            i += 1
            if candidate == name:
                break
    return i


def _raw_words(line: str) -> list[str]:
    """Words split at unquoted, unescaped whitespace, quotes and escapes kept (RawQuotes, RawEscapes)."""
    words: list[str] = []
    word, quote, pos = "", "", 0
    while pos < len(line):
        ch = line[pos]
        if quote:
            word += ch
            if ch == "\\" and quote == '"' and pos + 1 < len(line):
                pos += 1
                word += line[pos]
            elif ch == quote:
                quote = ""
        elif ch in " \t":
            if word:
                words.append(word)
            word = ""
        elif ch in "'\"":
            word, quote = word + ch, ch
        elif ch == "\\" and pos + 1 < len(line):
            word += ch + line[pos + 1]
            pos += 1
        else:
            word += ch
        pos += 1
    if word:
        words.append(word)
    return words


def lex(word: str, escape: str) -> str:
    """A word as Docker's shell lexer (ProcessWord) leaves it when no variable is involved: quotes
    removed, escaped characters taken literally. Raises ``DockerfileRefused`` for an unclosed quote
    (Docker's build fails on it). Callers refuse ``$`` before asking."""
    out: list[str] = []
    pos = 0
    while pos < len(word):
        ch = word[pos]
        if ch == "'":
            end = word.find("'", pos + 1)
            if end < 0:
                raise DockerfileRefused("unclosed quote")
            out.append(word[pos + 1:end])
            pos = end + 1
            continue
        if ch == '"':
            pos += 1
            while True:
                if pos >= len(word):
                    raise DockerfileRefused("unclosed quote")
                c = word[pos]
                if c == '"':
                    pos += 1
                    break
                if c == escape:
                    if pos + 1 >= len(word):
                        raise DockerfileRefused("unclosed quote")
                    if word[pos + 1] in ('"', "$", escape):
                        c = word[pos + 1]
                        pos += 1
                out.append(c)
                pos += 1
            continue
        if ch == escape:
            if pos + 1 >= len(word):
                break  # an escape at the end of a word is dropped
            out.append(word[pos + 1])
            pos += 2
            continue
        out.append(ch)
        pos += 1
    return "".join(out)


def _json_list(rest: str) -> list[str] | None:
    """parseJSON: the arguments as a JSON array of strings, or None when they are not one."""
    rest = _lstrip(rest)
    if not rest.startswith("["):
        return None

    def no_constants(name: str) -> None:
        raise ValueError(name)  # Go's JSON has no NaN or Infinity

    try:
        parsed = json.loads(rest, parse_constant=no_constants)
    except ValueError:
        return None
    if isinstance(parsed, list) and all(isinstance(w, str) for w in parsed):
        return parsed
    return None


# -- image references ------------------------------------------------------------------------------

# distribution/reference's grammar (reference.ReferenceRegexp), ASCII only as Go's \w is.
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|[-]+){_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_REFERENCE = re.compile(rf"({_NAME})(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
                        r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?", re.ASCII)
_NAME_MAX = 255
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_.-]*", re.ASCII)  # Docker's valid stage names: never a host
# BuildKit runs the ``# syntax=`` image as the Dockerfile's reader: it could fetch anything from
# anywhere. Only Docker's own frontend is let through.
_OFFICIAL_FRONTEND = re.compile(r"(?:docker\.io/)?docker/dockerfile(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                                r"(?:@sha256:[0-9a-f]{64})?", re.ASCII)


def registry_host(image: str) -> str | None:
    """The registry host an image reference names, or None for Docker Hub's default.

    As distribution/reference's splitDockerDomain decides: the part before the first ``/`` is a
    host if it has a dot or a colon, is ``localhost``, or has an upper-case letter (``LOCALHOST/x``
    is a host, though no Docker Hub name could be).
    """
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        return first
    return None


def _valid_reference(image: str) -> bool:
    m = _REFERENCE.fullmatch(image)
    return m is not None and len(m.group(1)) <= _NAME_MAX


async def _check_host(where: str, image: str, trusted: list[str]) -> None:
    """Refuse an image whose registry is not Kiln's and is not on public addresses only. A name that
    does not resolve here is refused too: the engine resolves it again on the host, which may know
    names (its /etc/hosts, a search domain) that the builder does not."""
    host = registry_host(image)
    if host is None or host.lower() in trusted:
        return
    name = host.split("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
    try:
        await check_public_host(name, [])
    except UnsafeRepoURL as exc:
        if exc.cause == "private_host":
            raise DockerfileRefused(f"{where}: the image {image} comes from a registry on a private or local address, "
                                    "which Kiln does not fetch from. Use a public registry or Kiln's own.") from None
        raise DockerfileRefused(f"{where}: the registry of the image {image} does not resolve to an address here, so "
                                "Kiln cannot check where the engine would fetch it from. Use a public registry or "
                                "Kiln's own.") from None


async def _check_image(where: str, raw: str, escape: str, stages: set[str], trusted: list[str],
                       forms: Iterable[str] = ()) -> str | None:
    """Check an image named in FROM, ``COPY --from`` or ``RUN --mount=from=``; the image, or None for
    a stage, a stage number or scratch. ``raw`` is the word as written; it is checked as Docker's
    lexer leaves it, and so is each of ``forms`` (other readings engines may give it)."""
    if "$" in raw or any("$" in f for f in forms):
        raise DockerfileRefused(f"{where}: an image named through a variable is not allowed: Kiln checks where each "
                                "image comes from before the build. Name the image itself.")
    try:
        candidates = {lex(raw, escape), *forms}
    except DockerfileRefused:
        raise DockerfileRefused(f"{where}: an image name has an unclosed quote.") from None
    image: str | None = None
    for name in sorted(candidates):
        if name.lower() in stages or name.isdigit() or name == "scratch":
            continue
        if not _valid_reference(name):
            # Not echoed: it is whatever the repository wrote, control characters refused or not.
            raise DockerfileRefused(f"{where}: an image name is not a valid image reference "
                                    "([registry/]name[:tag][@digest], written plainly, without quotes or escapes).")
        await _check_host(where, name, trusted)
        image = name
    return image


def _syntax_directives(text: str) -> list[tuple[int, str]]:
    """Every ``syntax`` directive BuildKit could find (DetectSyntax): ``#`` or ``//`` comments at the
    top (after a BOM and a ``#!`` line), with or without leading spaces, or a JSON ``{"syntax": ...}``."""
    lines = _physical_lines(text)
    skip = 1 if lines and lines[0].startswith("#!") else 0
    found: list[tuple[int, str]] = []
    for prefix in ("#", "//"):
        for first in (0, skip):
            for strip in (False, True):
                parser = _Directives(prefix)
                for number in range(first, len(lines)):
                    line = _lstrip(lines[number]) if strip else lines[number]
                    if parser.feed(line, number + 1) == "syntax":
                        found.append((number + 1, parser.found["syntax"]))
                    if parser.done:
                        break
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict) and "syntax" in whole:
        found.append((1, str(whole["syntax"])))
    return found


# -- the check -------------------------------------------------------------------------------------

_REMOTE_SOURCE = re.compile(r"://|^[^/]*@[^/]*:")  # a URL, or git's user@host:path


def _add_sources(ins: Instruction) -> list[str]:
    """Every reading of an ADD's sources: JSON if it is JSON, whitespace-split words in any case."""
    words = _WHITESPACE.split(ins.rest) if ins.rest else []
    sources = words[:-1]
    if (decoded := _json_list(ins.rest)) is not None:
        sources += decoded[:-1]
    return sources


def _check_add(where: str, ins: Instruction) -> None:
    """ADD fetches URLs and git repositories itself. "://" anywhere is refused, whatever the quoting
    or escaping (checked with quotes and escapes dropped, which can only join characters the lexer
    would join), and so is a source named by a variable. (A variable destination is fine.)"""
    def stripped(s: str) -> str:
        return re.sub(r"""['"`\\]""", "", s)

    refused = "://" in ins.args or "://" in stripped(ins.args)
    for source in _add_sources(ins):
        forms = {source, stripped(source)}
        try:
            forms.add(lex(source, ins.escape))
        except DockerfileRefused:
            pass
        refused = refused or "$" in source or any(_REMOTE_SOURCE.search(f) for f in forms)
    if refused:
        raise DockerfileRefused(f"{where}: ADD from a URL or a variable is not allowed: the Docker engine would "
                                "fetch it from Kiln's own network. Download it in a RUN step instead "
                                "(RUN curl -fsSLO <url>), which runs on the build network.")


def _mount_sources(where: str, ins: Instruction) -> list[str]:
    """The ``from=`` of each ``RUN --mount``: an image BuildKit pulls (or a stage)."""
    found = []
    for flag in ins.flags:
        name, _, value = flag.partition("=")
        if name.lower() != "mount":
            continue
        try:
            fields = next(csv.reader([value]))
        except (csv.Error, StopIteration):
            raise DockerfileRefused(f"{where}: a --mount option could not be read.") from None
        for item in fields:
            key, sep, val = item.partition("=")
            if sep and key.strip().lower() == "from":
                found.append(val)
    return found


async def _check_instructions(found: list[Instruction], trusted: list[str], images: list[str]) -> None:
    stages: set[str] = set()
    for ins in found:
        where = f"Dockerfile line {ins.line}"
        if ins.keyword == "ONBUILD":
            raise DockerfileRefused(f"{where}: ONBUILD is not supported: its instruction would run in some later "
                                    "build that starts from this image. Write the steps into the Dockerfile that needs them.")
        if ins.keyword == "ADD":
            _check_add(where, ins)
        referenced: list[tuple[str, list[str]]] = []  # (word as written, other readings)
        if ins.keyword == "FROM":
            words = _WHITESPACE.split(ins.rest) if ins.rest else []
            if words:
                referenced.append((words[0], []))
                if len(words) >= 3 and words[1].lower() == "as" and _STAGE_NAME.fullmatch(words[2].lower()):
                    stages.add(words[2].lower())
        if ins.keyword in ("COPY", "ADD"):
            # Flags have had quotes and escapes removed already; BuildKit's lexer may run over the
            # value again, so both readings are checked.
            referenced += [(f.split("=", 1)[1], [f.split("=", 1)[1]]) for f in ins.flags if f.lower().startswith("from=")]
        if ins.keyword == "RUN":
            referenced += [(v, [v]) for v in _mount_sources(where, ins)]
        for raw, forms in referenced:
            image = await _check_image(where, raw, ins.escape, stages, trusted, forms)
            if image is not None and image not in images:
                images.append(image)


async def check_dockerfile(text: str, trusted_registries: list[str]) -> list[str]:
    """Refuse what the engine would fetch on the host's network; return the external images named.

    ``trusted_registries`` (host[:port]) are allowed whatever their address: Kiln's own registry.
    """
    trusted = [t.lower() for t in trusted_registries]
    classic = instructions(text)  # also refuses the characters the readings could disagree on
    for number, value in _syntax_directives(text):
        if not _OFFICIAL_FRONTEND.fullmatch(value.split(" ", 1)[0]):
            raise DockerfileRefused(f"Dockerfile line {number}: a syntax directive may only name Docker's own "
                                    "frontend (docker/dockerfile): the frontend image reads the Dockerfile and could "
                                    "fetch from anywhere. Remove the directive or use docker/dockerfile:1.")
    images: list[str] = []
    await _check_instructions(classic, trusted, images)
    await _check_instructions(instructions(text, heredocs=True), trusted, images)
    return images
