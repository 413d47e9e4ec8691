"""hl7_acks: whether the ACK reached the sender

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows already there were answered on a connection nobody recorded as lost: delivered.
    with op.batch_alter_table("hl7_acks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivered", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("hl7_acks", schema=None) as batch_op:
        batch_op.drop_column("delivered")
