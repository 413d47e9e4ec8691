"""job leases name their holder: host, process id and last heartbeat

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 12:50:00

With the holder's host and pid a lease left by a killed process on the same host is taken
over at once instead of after its time-to-live; the heartbeat shows when it last renewed.
Leases held while upgrading have no holder details and simply lapse as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_locks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch_op.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_locks", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("pid")
        batch_op.drop_column("host")
