"""0002_authorization: the incidents' columns for the authorization rule (bot.incidents.authorization).

Loaded by Alembic from bot/infra/migrations/env.py. first_approver: with two_person, the first approver's
confirmation; armed_by: what opened the incident (detection | alertmanager | request), since only the first
two may arm the automatic run. Both nullable, so existing rows stay valid. batch_alter_table so SQLite,
whose ALTER TABLE is limited, gets the same change (adding a nullable column needs no table copy there).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_authorization"
down_revision: str | None = "0001_initial"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("first_approver", sa.String(32), nullable=True))
        batch.add_column(sa.Column("armed_by", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("armed_by")
        batch.drop_column("first_approver")
