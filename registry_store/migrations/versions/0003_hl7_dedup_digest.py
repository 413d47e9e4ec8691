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

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None



# Frozen copy of ``adapters.hl7v2.header.message_digest`` as it was at this revision: a
# migration must compute what it computed then, whatever the live code becomes, and must not
# import the application (tests/architecture/test_layers.py checks that none does).
def _msh_span(raw: bytes) -> tuple[int, int] | None:
    """Where the MSH segment is in ``raw`` (start, end); None if the message has none."""
    start = 0
    n = len(raw)
    if raw.startswith(b"\xef\xbb\xbf"):
        start = 3
    while start < n and raw[start] in b" \t\r\n\x0b":  # \x0b: an MLLP start block
        start += 1
    if raw[start : start + 3] != b"MSH":
        return None
    end = n
    for terminator in (b"\r", b"\n"):
        pos = raw.find(terminator, start)
        if pos != -1 and pos < end:
            end = pos
    return start, end


def message_digest(raw: bytes) -> str:
    """sha256 of a message with MSH-7 (date/time of message) blanked."""
    span = _msh_span(raw)
    if span is None or span[1] - span[0] < 4:
        return hashlib.sha256(raw).hexdigest()
    start, end = span
    fs = raw[start + 3 : start + 4]
    # MSH-1 is the separator itself, so MSH-7 is the 6th piece after splitting on it.
    fields = raw[start:end].split(fs)
    if len(fields) > 6:
        fields[6] = b""
    digest = hashlib.sha256(raw[:start])
    digest.update(fs.join(fields))
    digest.update(raw[end:])
    return digest.hexdigest()


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
