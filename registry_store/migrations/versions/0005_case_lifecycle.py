"""Case lifecycle: why a case was withdrawn; each reminder's anchor and notes

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 13:00:00

``cases.status_reason`` says why a case is no longer active ("procedure entered-in-error",
"deleted at source", "withdrawn by NAME: reason"). ``reminders.anchor`` is the date a time
point counts from (``surgery``, ``discharge`` or ``surgery_fallback`` when the discharge is
missing or before the surgery); ``reminders.note`` explains a due date that moved after
attempts had already gone out.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("status_reason", sa.String(length=500), nullable=True))
    with op.batch_alter_table("reminders") as batch:
        batch.add_column(sa.Column("anchor", sa.String(length=24), nullable=True))
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reminders") as batch:
        batch.drop_column("note")
        batch.drop_column("anchor")
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("status_reason")
