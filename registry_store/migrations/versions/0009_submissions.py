"""submissions ledger, submission items, case outcomes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "submissions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("period", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("site_id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("delivered_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("destination", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("package_name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("package_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("dictionary_version", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_submissions_period"), "submissions", ["period"], unique=False)
    op.create_table(
        "submission_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("submission_id", sa.Integer(), nullable=False),
        sa.Column("case_id", sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
        sa.Column("case_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("content_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_submission_items_case", "submission_items", ["case_id", "submission_id"], unique=False)
    op.create_index(op.f("ix_submission_items_case_key"), "submission_items", ["case_key"], unique=False)
    op.create_index(op.f("ix_submission_items_submission_id"), "submission_items", ["submission_id"], unique=False)
    op.create_table(
        "case_outcomes",
        sa.Column("case_id", sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("outcomes", sa.JSON(), nullable=False),
        sa.Column("computed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("case_id"),
    )
    op.create_index(op.f("ix_case_outcomes_source"), "case_outcomes", ["source"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_case_outcomes_source"), table_name="case_outcomes")
    op.drop_table("case_outcomes")
    op.drop_index(op.f("ix_submission_items_submission_id"), table_name="submission_items")
    op.drop_index(op.f("ix_submission_items_case_key"), table_name="submission_items")
    op.drop_index("ix_submission_items_case", table_name="submission_items")
    op.drop_table("submission_items")
    op.drop_index(op.f("ix_submissions_period"), table_name="submissions")
    op.drop_table("submissions")
