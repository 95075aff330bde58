"""Kiln's one error tree: what went wrong, in words a user may see, with its cause, HTTP status and retriability.

Handlers raise these; the runner (``kilnbus.dispatch``) maps them to an outcome:

- not retriable: a ``failed`` phase event for the request's user, with the error's cause, status and
  message; the record counts as handled (an outcome, not poison, so no dead letter);
- retriable: retried with back-off up to ``max_attempts``, then ``failed`` the same way, plus a
  dead letter for the operators;
- any other exception is a bug: ``failed`` with cause ``internal_error`` and a generic message, plus
  a dead letter carrying the exception.

``message`` is shown to users as it is: never put internals (paths, tracebacks, secrets) in it.
"""

from __future__ import annotations

import socket

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError


class KilnError(Exception):
    """Base of every error a Kiln service raises on purpose; class attributes are the defaults."""

    cause: str = "internal_error"
    status: int = 500
    retriable: bool = False

    def __init__(self, message: str, *, cause: str | None = None, status: int | None = None,
                 retriable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Instance attributes only when given, so a subclass's defaults show through otherwise.
        if cause is not None:
            self.cause = cause
        if status is not None:
            self.status = status
        if retriable is not None:
            self.retriable = retriable


class BadRequest(KilnError):
    """The request cannot succeed as asked (a malformed spec, an unsupported provider)."""

    cause = "bad_request"
    status = 400


class NotFound(KilnError):
    """What the request names does not exist (repository, ref, image)."""

    cause = "not_found"
    status = 404


class Forbidden(KilnError):
    """The request is not allowed (a blocked host, a refused Dockerfile)."""

    cause = "forbidden"
    status = 403


class TooManyRequests(KilnError):
    """A quota is full; trying again later may work, but not by retrying now."""

    cause = "quota"
    status = 429


class Unavailable(KilnError):
    """A dependency is briefly away (the hub, a registry, a git host): worth retrying."""

    cause = "unavailable"
    status = 503
    retriable = True


class InternalError(KilnError):
    """Kiln itself failed in a way it noticed; the message still must be fit for users."""

    cause = "internal_error"
    status = 500


class TransientError(Unavailable):
    """Former name of ``Unavailable``, kept while services move over; message optional as before."""

    def __init__(self, message: str = "a dependency is briefly unavailable", **kwargs: bool | int | str | None) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror, KafkaConnectionError,
                                        KafkaTimeoutError]
    try:  # not a dependency of kilnbus, but the services talk HTTP through it
        import httpx

        types += [httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError]
    except ImportError:
        pass
    return tuple(types)


_TRANSIENT = _transient_types()


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the handler could help: the broker or the network, not a bug or a bad record.

    A ``KilnError`` says so itself (``retriable``); Kafka errors by their own ``retriable`` flag;
    network errors are transient.
    """
    if isinstance(exc, KilnError):
        return exc.retriable
    if isinstance(exc, KafkaError):
        return bool(exc.retriable) or isinstance(exc, _TRANSIENT)
    # Legacy: exceptions outside the tree that declare a bool ``retriable`` on their class are still
    # honoured (tests/security/test_poison_records.py relies on it); new code raises KilnErrors.
    explicit = getattr(type(exc), "retriable", None)
    if isinstance(explicit, bool):
        return explicit
    return isinstance(exc, _TRANSIENT)
