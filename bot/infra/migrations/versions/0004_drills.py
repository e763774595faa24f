"""0004_drills: rollback drills (issue 15), one row per drill (bot.infra.store.drills).

Loaded by Alembic from bot/infra/migrations/env.py. A new table only; the org-wide freeze is a row of `freezes`
(service "*"), so nothing existing changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_drills"
down_revision: str | None = "0003_replicas"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "drills",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("baseline", sa.String(64), nullable=True),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("steps_planned", sa.Integer, nullable=False),
        sa.Column("steps_total", sa.Integer, nullable=False),
        sa.Column("planning_seconds", sa.Float, nullable=False),
        sa.Column("recover_seconds", sa.Float, nullable=True),
        sa.Column("restored", sa.Boolean, nullable=True),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=False),
    )
    op.create_index("ix_drills_service_started_at", "drills", ["service", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_drills_service_started_at", table_name="drills")
    op.drop_table("drills")
