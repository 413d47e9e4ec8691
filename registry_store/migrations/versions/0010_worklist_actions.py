"""worklist items and actions

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 03:00:00

What coordinators do on the reminder worklist: ``worklist_items`` holds where each reminder
stands (assignee, call-back date, last call outcome, completion by phone or on paper) and
``worklist_actions`` every action taken, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worklist_items",
        sa.Column("reminder_id", sa.Integer(), nullable=False),
        sa.Column("assigned_to", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("call_back_on", sa.Date(), nullable=True),
        sa.Column("last_outcome", sqlmodel.sql.sqltypes.AutoString(length=24), nullable=True),
        sa.Column("completed_how", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("completed_on", sa.Date(), nullable=True),
        sa.Column("updated_by", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("reminder_id"),
    )
    op.create_table(
        "worklist_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reminder_id", sa.Integer(), nullable=False),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("username", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=24), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=24), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_worklist_actions_reminder_id", "worklist_actions", ["reminder_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_worklist_actions_reminder_id", table_name="worklist_actions")
    op.drop_table("worklist_actions")
    op.drop_table("worklist_items")
