"""Who may approve: policy `approvers` hold user IDs and user-group IDs; groups are expanded with
usergroups.users.list and cached for a short TTL.

Called by bot.incidents.authorization before any approval, dismissal, Stop, Retry, freeze or unfreeze. When a group
cannot be read, its members are not approvers for that check (fail closed) and the reason is returned, so the
refusal can say why; a failed read is never cached.

Given the store, the members are also cached in the database (`usergroup:<id>` in shared_cache, for the same TTL),
so N replicas make one usergroups.users.list call (Slack Tier 2) per group per TTL, not N. The database being
unreachable only costs the shared cache: the group is then read from Slack as without one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from bot.infra.store import Store
from bot.slack.blocks import inert

log = logging.getLogger(__name__)


class Approvers:
    def __init__(self, list_group: Callable[[str], list[str]], ttl: float = 60.0, *,
                 store: Store | None = None) -> None:
        self._list_group = list_group
        self._ttl = ttl
        self._store = store
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}  # group -> (expires, by time.monotonic, members)
        self._lock = threading.Lock()

    def _members(self, group: str) -> frozenset[str]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(group)
            if hit and now < hit[0]:
                return hit[1]
        shared = self._shared(group)
        if shared is not None:
            members, left = shared
        else:
            members, left = frozenset(self._list_group(group)), self._ttl  # raises: the check fails closed
            self._share(group, members)
        with self._lock:
            self._cache[group] = (now + min(left, self._ttl), members)
        return members

    def _shared(self, group: str) -> tuple[frozenset[str], float] | None:
        """The members another replica (or this one) read within the TTL, and the seconds they have left."""
        if self._store is None:
            return None
        try:
            hit = self._store.cached(f"usergroup:{group}")
        except SQLAlchemyError as exc:  # the shared cache is only a saving: read the group from Slack instead
            log.warning("user group %s: shared cache unavailable: %s", group, exc)
            return None
        if hit is None or not isinstance(hit[0], list):
            return None
        return frozenset(str(u) for u in hit[0]), hit[1]

    def _share(self, group: str, members: frozenset[str]) -> None:
        if self._store is None:
            return
        try:
            self._store.cache(f"usergroup:{group}", sorted(members), self._ttl)
        except SQLAlchemyError as exc:  # the other replicas read the group themselves: only a saving is lost
            log.warning("user group %s: could not share its members: %s", group, exc)

    def members(self, group: str) -> frozenset[str]:
        """The members of user group `group`, through the same caches as `check` (bot.incidents.readiness asks
        whether the approvers resolve to a person). Raises whatever kept the group from being read."""
        return self._members(group)

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
