"""Alertmanager alerts already handled (the alerts table), by fingerprint and startsAt.

Called through `Store` by bot.incidents.alerts (Alertmanager's intake) only: `claim_alert` makes a repeat send of
an alert open nothing new, and `update_alert` links the claim to its incident, marks it resolved once, or drops it
when handling failed so Alertmanager's retry is not deduped. Rows go back to the intake as plain dicts.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from bot.infra.store.database import Database
from bot.infra.store.tables import alerts


class Alerts:
    def __init__(self, db: Database) -> None:
        self.db = db

    def claim_alert(self, fingerprint: str, starts_at: str, *, service: str, alertname: str,
                    resolved_at: float | None = None) -> bool:
        """True the first time an alert (fingerprint + startsAt) is seen; False for a repeat send of it."""
        stmt = self.db.insert(alerts).values(fingerprint=fingerprint, starts_at=starts_at, service=service,
                                             alertname=alertname, received_at=self.db.clock(), resolved_at=resolved_at)
        with self.db.begin() as conn:
            # Primary key taken (a repeat send, handled here or by another replica): nothing inserted. A claim
            # another replica has not committed yet is waited for (PostgreSQL): taken if it commits.
            claimed = conn.execute(stmt.on_conflict_do_nothing(index_elements=[alerts.c.fingerprint,
                                                                               alerts.c.starts_at])
                                   .returning(alerts.c.fingerprint)).first()
        return claimed is not None

    def update_alert(self, fingerprint: str, starts_at: str, *, unresolved_only: bool = False,
                     **values: Any) -> dict[str, Any] | None:
        """Set columns of a claimed alert (incident_id, resolved_at), or with `delete=True` drop the claim
        (its handling failed, so Alertmanager's retry must not be deduped). With unresolved_only, only while
        it is not resolved yet, so a resolved notification acts once. The row afterwards, None if unchanged."""
        key = [alerts.c.fingerprint == fingerprint, alerts.c.starts_at == starts_at]
        where = [*key, alerts.c.resolved_at.is_(None)] if unresolved_only else key
        with self.db.begin() as conn:
            if values.pop("delete", False):
                conn.execute(alerts.delete().where(*where))
                return None
            if conn.execute(update(alerts).where(*where).values(**values)).rowcount != 1:
                return None
            row = conn.execute(select(alerts).where(*key)).one()
        return dict(row._mapping)
