"""Who may launch what: ban and allow lists by spec pattern, and per-repository quotas."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln_resolver.settings import Settings, SpecRule

DEFAULT_BAN_REASON = "Please contact the admins of this Binder for more information."


@dataclass(frozen=True)
class Refusal:
    message: str
    cause: str
    status: int


class Policy:
    def __init__(self, settings: Settings) -> None:
        self._banned = [(re.compile(r.pattern, re.IGNORECASE), r) for r in settings.banned_specs]
        self._allowed = [re.compile(p, re.IGNORECASE) for p in settings.allowed_specs]
        self._high = [re.compile(p, re.IGNORECASE) for p in settings.high_quota_specs]
        self._quota = settings.per_repo_quota
        self._quota_high = settings.per_repo_quota_higher

    def refuse_spec(self, provider: str, spec: str) -> Refusal | None:
        """A refusal when the spec is banned, or an allow list exists and it is not on it (a ban wins)."""
        target = f"{provider}/{spec}"
        rule: SpecRule | None = next((r for pattern, r in self._banned if pattern.match(target)), None)
        if rule is None and self._allowed and not any(p.match(target) for p in self._allowed):
            rule = SpecRule(pattern="", reason="Only listed repositories may launch on this Binder.")
        if rule is None:
            return None
        return Refusal(f"Sorry, {target} is not allowed to launch. {rule.reason or DEFAULT_BAN_REASON}", "banned", 403)

    def quota_for(self, provider: str, spec: str) -> int:
        """Servers allowed per repository for this spec (0: unlimited)."""
        if self._quota_high and any(p.match(f"{provider}/{spec}") for p in self._high):
            return self._quota_high
        return self._quota
