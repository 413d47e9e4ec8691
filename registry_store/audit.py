"""The audit log: who changed what through the review tools, with before and after."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection, Engine

from registry_store.tables import AUDIT_LOG
from registry_store.timeutil import utcnow


def record(
    conn: Connection,
    *,
    username: str,
    action: str,
    target: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Write one entry in the caller's transaction, so the change and its record commit together."""
    conn.execute(
        AUDIT_LOG.insert().values(
            at=utcnow(),
            username=username,
            action=action,
            target=target[:300],
            before=before or {},
            after=after or {},
        )
    )


def record_alone(engine: Engine, **entry: Any) -> None:
    """Write one entry in a transaction of its own: for what must be on record even if the
    work that follows fails (or that changed nothing in the database, like an export)."""
    with engine.begin() as conn:
        record(conn, **entry)
