"""HL7 v2 staging rows: dedup hash over the message without MSH-7

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 14:40:00

Raw v2 messages were hashed byte for byte; now a resend that differs only in MSH-7 (the
sender's timestamp) is the same message. Rows staged before keep working only if their hash
is recomputed the new way; otherwise an identical resend would be staged a second time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from adapters.hl7v2.header import message_digest

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STAGING = sa.table(
    "staging",
    sa.column("id", sa.Integer),
    sa.column("content_type", sa.String),
    sa.column("content_hash", sa.String),
    sa.column("raw", sa.LargeBinary),
)


def _rehash(digest: Callable[[bytes], str]) -> None:
    """Set every staged v2 message's content_hash to ``digest`` of its raw bytes."""
    conn = op.get_bind()
    last = 0
    while True:  # in batches by id: a large store must not be read into memory at once
        rows = conn.execute(
            sa.select(_STAGING.c.id, _STAGING.c.raw)
            .where(_STAGING.c.content_type == "application/hl7-v2", _STAGING.c.id > last)
            .order_by(_STAGING.c.id)
            .limit(1000)
        ).all()
        if not rows:
            break
        conn.execute(
            sa.update(_STAGING).where(_STAGING.c.id == sa.bindparam("row_id")),
            [{"row_id": r.id, "content_hash": digest(bytes(r.raw))} for r in rows],
        )
        last = rows[-1].id


def upgrade() -> None:
    _rehash(message_digest)


def downgrade() -> None:
    # The old byte-for-byte hash: exactly what dedup compared before.
    _rehash(lambda raw: hashlib.sha256(raw).hexdigest())
