"""0005_baselines: recorded SLO baselines (issue 16), one row per relative SLO and promotion
(bot.infra.store.baselines).

Loaded by Alembic from bot/infra/migrations/env.py. A new table only; nothing existing changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_baselines"
down_revision: str | None = "0004_drills"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "slo_baselines",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("slo", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("promoted", sa.String(64), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("window_seconds", sa.Float, nullable=False),
        sa.Column("recorded_at", sa.Float, nullable=False),
    )
    op.create_index("ix_slo_baselines_service_slo", "slo_baselines", ["service", "slo"])


def downgrade() -> None:
    op.drop_index("ix_slo_baselines_service_slo", table_name="slo_baselines")
    op.drop_table("slo_baselines")
