"""0001_initial: the store's schema as `metadata.create_all` made it at commit a8443bc, before Alembic.

Loaded by Alembic from bot/infra/migrations/env.py. A database created before Alembic (it has the tables but no
alembic_version) is stamped with this revision instead of running it (bot.infra.migrations.upgrade). Plain
SQLAlchemy types only: the fitted TypeDecorators of bot.infra.store change what is written, not the DDL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("active_service", sa.String(128), nullable=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("trigger", sa.String(128), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("baseline", sa.JSON, nullable=False),
        sa.Column("breach_started_at", sa.Float, nullable=True),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("warned_at", sa.Float, nullable=True),
        sa.Column("channel", sa.String(32), nullable=True),
        sa.Column("message_ts", sa.String(32), nullable=True),
        sa.Column("progress_ts", sa.String(32), nullable=True),
        sa.Column("requested_by", sa.String(32), nullable=True),
        sa.Column("approved_by", sa.String(32), nullable=True),
        sa.Column("approved_at", sa.Float, nullable=True),
        sa.Column("executed_at", sa.Float, nullable=True),
        sa.Column("recovered_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("resume_from", sa.Integer, nullable=True),
        sa.Column("halt_kind", sa.String(16), nullable=True),
        sa.Column("auto_at", sa.Float, nullable=True),
        sa.Column("verification", sa.JSON, nullable=False),
        # Unnamed, like Column(unique=True) in create_all: "one open incident per service".
        sa.UniqueConstraint("active_service"),
    )
    op.create_index("ix_incidents_service", "incidents", ["service"])

    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("incident_id", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("slack_ts", sa.String(32), nullable=True),
    )
    op.create_index("ix_events_incident_id", "events", ["incident_id"])

    op.create_table(
        "steps",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("incident_id", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("executor", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("plan", sa.JSON, nullable=False),
        sa.Column("outcome", sa.JSON, nullable=True),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.create_index("ix_steps_incident_id", "steps", ["incident_id"])

    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("incident_id", sa.Integer, nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("result", sa.String(32), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_incident_id", "audit", ["incident_id"])

    op.create_table(
        "slo_state",
        sa.Column("service", sa.String(128), primary_key=True),
        sa.Column("slo", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("breach_since", sa.Float, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )

    op.create_table(
        "service_state",
        sa.Column("service", sa.String(128), primary_key=True),
        sa.Column("healthy_since", sa.Float, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )

    op.create_table(
        "seen_requests",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_seen_requests_at", "seen_requests", ["at"])

    op.create_table(
        "freezes",
        sa.Column("service", sa.String(128), primary_key=True),
        sa.Column("frozen_at", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("incident_id", sa.Integer, nullable=True),
        sa.Column("blocked_version", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
    )

    op.create_table(
        "alerts",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("starts_at", sa.String(64), primary_key=True),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("alertname", sa.String(255), nullable=False),
        sa.Column("incident_id", sa.Integer, nullable=True),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("resolved_at", sa.Float, nullable=True),
    )


def downgrade() -> None:
    for table in ("alerts", "freezes", "seen_requests", "service_state", "slo_state", "audit", "steps", "events",
                  "incidents"):
        op.drop_table(table)  # their indexes go with them
