"""reminder link clicks

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 12:50:00

One row per opened reminder link (GET /r/{token} on the review web service): which reminder
and attempt, and when. Nothing about who clicked (no address, no browser).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reminder_clicks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reminder_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("clicked_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_reminder_clicks_reminder_id", "reminder_clicks", ["reminder_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_reminder_clicks_reminder_id", table_name="reminder_clicks")
    op.drop_table("reminder_clicks")
