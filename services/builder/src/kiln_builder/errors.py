"""The builder's failures, in kilnbus's error tree: each carries the message a user sees and its cause.

A build's outcome is told to every request waiting for it by the builder itself (``handler``), as a
``failed`` event with the message and cause and, as BinderHub's build failures, no HTTP status; the
status the tree gives these errors only matters should one ever reach the runner.
"""

from __future__ import annotations

from kilnbus import KilnError


class BuildFailed(KilnError):
    """The build stopped; the message says why in words a user can act on, ``cause`` names it for analytics."""

    cause = "build_failed"

    def __init__(self, message: str, cause: str | None = None, *, status: int | None = None) -> None:
        super().__init__(message, cause=cause, status=status)


class FetchFailed(BuildFailed):
    """The repository could not be fetched, or is not one this Binder builds (too large, unsafe)."""

    cause = "fetch_failed"


class BuildTimedOut(BuildFailed):
    """A build ran past its time limit and was stopped."""

    cause = "build_timeout"

    def __init__(self, timeout_s: float) -> None:
        limit = f"{timeout_s / 60:.0f} minutes" if timeout_s >= 120 else f"{timeout_s:.0f} seconds"
        super().__init__(f"The build took longer than the limit of {limit} and was stopped.")
        self.timeout_s = timeout_s


__all__ = ["BuildFailed", "BuildTimedOut", "FetchFailed"]
