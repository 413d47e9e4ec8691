"""throughput: indexes for the pending-batch and case-assembly queries; validation verdicts;
case assembly queue

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BY_PATIENT = ("encounters", "procedures", "conditions", "prom_responses", "cases")


def upgrade() -> None:
    op.create_index("ix_staging_status_id", "staging", ["status", "id"])
    for table in _BY_PATIENT:
        op.create_index(f"ix_{table}_source_patient", table, ["source", "patient_id"])
    op.create_table(
        "validation_verdicts",
        sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("validator", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("issues", sa.JSON(), nullable=False),
        sa.Column("checked_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest", "validator"),
    )
    op.create_table(
        "case_queue",
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("patient_id", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.PrimaryKeyConstraint("source", "patient_id"),
    )


def downgrade() -> None:
    op.drop_table("case_queue")
    op.drop_table("validation_verdicts")
    for table in _BY_PATIENT:
        op.drop_index(f"ix_{table}_source_patient", table_name=table)
    op.drop_index("ix_staging_status_id", table_name="staging")
