"""Who may approve: policy `approvers` hold user IDs and user-group IDs; groups are expanded with
usergroups.users.list and cached for a short TTL.

Called by bot.incidents.authorization before any approval, dismissal, Stop, Retry, freeze or unfreeze. When a group
cannot be read, its members are not approvers for that check (fail closed) and the reason is returned, so the
refusal can say why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from bot.slack.blocks import inert


class Approvers:
    def __init__(self, list_group: Callable[[str], list[str]], ttl: float = 60.0) -> None:
        self._list_group = list_group
        self._ttl = ttl
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def _members(self, group: str) -> frozenset[str]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(group)
            if hit and now - hit[0] < self._ttl:
                return hit[1]
        members = frozenset(self._list_group(group))
        with self._lock:
            self._cache[group] = (now, members)
        return members

    def check(self, user: str, approvers: Sequence[str]) -> tuple[bool, str]:
        """(allowed, reason). The reason names what failed, for the ephemeral refusal and the audit log."""
        if user in approvers:
            return True, "listed as an approver"
        problems = []
        for group in (a for a in approvers if a.startswith("S")):
            try:
                if user in self._members(group):
                    return True, f"member of <!subteam^{group}>"
            except Exception as exc:  # noqa: BLE001 - any lookup failure means "not proven a member": fail closed
                problems.append(f"could not read <!subteam^{group}>: {inert(str(exc))}")
        reason = "you are not an approver for this service"
        if problems:
            reason += " (" + "; ".join(problems) + ")"
        return False, reason
