"""The audit log: who did what to which incident, and how it ended, one row per decision or refusal.

Written through `Store.audit` by bot.incidents.service, bot.incidents.runner, bot.incidents.oncall and
bot.slo.gate; read back (`audits`, as plain dicts) by the tests, and `last_promotion` by the warning's "what
changed" (bot.incidents.service). The detail is made JSON-safe here (anything not
JSON becomes its str) and loses its credentials on the way in (bot.infra.store.fitting, bot.infra.redact).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import insert, select

from bot.infra.store.database import Database
from bot.infra.store.tables import audit_log


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def audit(self, *, actor: str, action: str, result: str, incident_id: int | None = None,
              detail: dict[str, Any] | None = None) -> None:
        with self.db.begin() as conn:
            conn.execute(insert(audit_log).values(at=self.db.clock(), incident_id=incident_id, actor=actor,
                                                  action=action, result=result,
                                                  detail=json.loads(json.dumps(detail or {}, default=str))))

    def audits(self, incident_id: int | None = None) -> list[dict[str, Any]]:
        query = select(audit_log).order_by(audit_log.c.id)
        if incident_id is not None:
            query = query.where(audit_log.c.incident_id == incident_id)
        with self.db.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    def last_promotion(self, service: str, version: str, look_back: int = 200) -> dict[str, Any] | None:
        """The gate's newest promotion of `version` for `service` among the last `look_back` promotions, or None."""
        query = (select(audit_log).where(audit_log.c.action == "promote", audit_log.c.result == "ok")
                 .order_by(audit_log.c.id.desc()).limit(look_back))
        with self.db.engine.connect() as conn:
            for row in conn.execute(query).all():
                detail = row.detail or {}
                if detail.get("service") == service and str(detail.get("version")) == str(version):
                    return dict(row._mapping)
        return None
