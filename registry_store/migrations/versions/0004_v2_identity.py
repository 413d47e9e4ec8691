"""HL7 v2 identity: merged patients, staged records by origin

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 12:45:00

``patients.merged_into`` marks a patient merged by ADT^A40/A47. The staging index on
``(source, origin)`` finds what a v2 message converted into when it is converted again.
Staged v2 messages converted under the earlier identity rules are re-converted with
``registry-adapter reprocess --type HL7v2Message`` (see README, HL7 v2 identity), which
deletes the records whose ids changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("merged_into", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True))
    with op.batch_alter_table("staging", schema=None) as batch_op:
        batch_op.create_index("ix_staging_source_origin", ["source", "origin"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("staging", schema=None) as batch_op:
        batch_op.drop_index("ix_staging_source_origin")
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_column("merged_into")
