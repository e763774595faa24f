"""0003_replicas: what many replicas on one database coordinate through (issue 13).

Loaded by Alembic from bot/infra/migrations/env.py. New tables: leases (replica membership and evaluation shards,
with fencing epochs), work (durable plan runs, verification ticks, automatic-rollback timers and closes), inbox
(Slack requests stored before their ack), budgets (Slack edit budgets shared by replicas) and shared_cache.
New nullable columns: the outbox claim of each event, and the warning's claim on each incident.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_replicas"
down_revision: str | None = "0002_authorization"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_table(
        "work",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("incident_id", sa.Integer, nullable=True),
        sa.Column("due_at", sa.Float, nullable=False),
        sa.Column("every", sa.Float, nullable=True),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("owner_epoch", sa.Integer, nullable=True),
        sa.Column("taken_at", sa.Float, nullable=True),
    )
    op.create_index("ix_work_incident_id", "work", ["incident_id"])
    op.create_index("ix_work_due_at", "work", ["due_at"])
    op.create_table(
        "inbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(255), nullable=False, unique=True),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("owner_epoch", sa.Integer, nullable=True),
        sa.Column("done_at", sa.Float, nullable=True),
    )
    op.create_index("ix_inbox_done_at", "inbox", ["done_at"])
    op.create_table(
        "budgets",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("next_at", sa.Float, nullable=False),
    )
    op.create_table(
        "shared_cache",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("claim_until", sa.Float, nullable=True))
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("warn_claimed_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("warn_claim_until", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("warn_claim_until")
        batch.drop_column("warn_claimed_by")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("claim_until")
        batch.drop_column("claimed_by")
    for table in ("shared_cache", "budgets", "inbox", "work", "leases"):
        op.drop_table(table)
