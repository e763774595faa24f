"""Slack requests already handled (the seen_requests table), by idempotency key.

Called through `Store` by handlers.dedupe (`claim_request`: a Slack retry or a replayed signed request finds its
key taken and does nothing a second time, in any process sharing the database) and by bot.incidents.detection
(`forget_requests`, the periodic clean-up of old keys each evaluation cycle), and by bot.slo.gate for what it says
once per candidate (a `once:` key, never forgotten).
"""

from __future__ import annotations

from bot.infra.store.database import Database
from bot.infra.store.tables import seen_requests

# Keys under this prefix are kept: a notice said once per candidate (bot.slo.gate) must stay said.
KEPT = "once:"


class SeenRequests:
    def __init__(self, db: Database) -> None:
        self.db = db

    def forget_requests(self, older_than: float) -> int:
        """Drop request keys claimed before `older_than`: Slack stops retrying within minutes, and Bolt refuses
        a replay whose signed timestamp is over 5 minutes old, so old keys can never match again."""
        with self.db.begin() as conn:
            return int(conn.execute(seen_requests.delete().where(
                seen_requests.c.at < older_than, ~seen_requests.c.key.startswith(KEPT, autoescape=True))).rowcount)

    def claim_request(self, key: str) -> bool:
        """True the first time `key` is claimed, False for a retry or replay of the same Slack request."""
        stmt = self.db.insert(seen_requests).values(key=key[:255], at=self.db.clock())
        with self.db.begin() as conn:
            # Key taken (a retry or replay, handled here or by another replica): nothing inserted. A claim another
            # replica has not committed yet is waited for (PostgreSQL): taken if it commits.
            claimed = conn.execute(stmt.on_conflict_do_nothing(index_elements=[seen_requests.c.key])
                                   .returning(seen_requests.c.key)).first()
        return claimed is not None

    def release_request(self, key: str) -> None:
        """Give a claim back: what it guarded did not happen (a promotion the registry refused), so it may again."""
        with self.db.begin() as conn:
            conn.execute(seen_requests.delete().where(seen_requests.c.key == key[:255]))
