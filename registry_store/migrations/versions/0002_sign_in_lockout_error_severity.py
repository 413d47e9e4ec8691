"""review sign-in lockout, error severity

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 13:29:45.077145
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Server defaults fill the rows already there; NOT NULL columns cannot be added without.
    with op.batch_alter_table("mapping_errors", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("severity", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False,
                      server_default="error")
        )
    # Until now ``rule`` held the severity ("warning" or empty); it now names the rule.
    op.execute("UPDATE mapping_errors SET severity = 'warning', rule = '' WHERE rule = 'warning'")
    op.execute("UPDATE mapping_errors SET rule = '' WHERE rule = 'error'")
    with op.batch_alter_table("mapping_errors", schema=None) as batch_op:
        batch_op.alter_column("severity", server_default=None)

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("locked_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("session_version", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("failed_logins", server_default=None)
        batch_op.alter_column("session_version", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("session_version")
        batch_op.drop_column("locked_until")
        batch_op.drop_column("failed_logins")
    op.execute("UPDATE mapping_errors SET rule = 'warning' WHERE severity = 'warning'")
    with op.batch_alter_table("mapping_errors", schema=None) as batch_op:
        batch_op.drop_column("severity")
