"""Read-side queries shared by the CLI and the review UI (cases, errors, causes, runs)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import desc, func, select
from sqlalchemy.engine import Connection

from registry_store.tables import CASES, MAPPING_ERRORS, SYNC_RUNS


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def list_cases(
    conn: Connection, *, limit: int | None = None, offset: int = 0, include_removed: bool = False
) -> list[dict[str, Any]]:
    query = select(CASES).order_by(CASES.c.surgery_date, CASES.c.id).offset(offset)
    if not include_removed:
        query = query.where(CASES.c.status == "active")
    if limit is not None:
        query = query.limit(limit)
    out = []
    for row in conn.execute(query):
        item = {k: _iso(v) for k, v in row._mapping.items()}
        item["case_id"] = item.pop("id")
        out.append(item)
    return out


def list_errors(
    conn: Connection,
    *,
    cause_id: str | None = None,
    status: str = "open",
    limit: int | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:
    query = (
        select(MAPPING_ERRORS)
        .where(MAPPING_ERRORS.c.status == status)
        .order_by(MAPPING_ERRORS.c.cause_id, MAPPING_ERRORS.c.id)
        .offset(offset)
    )
    if cause_id:
        query = query.where(MAPPING_ERRORS.c.cause_id == cause_id)
    if limit is not None:
        query = query.limit(limit)
    return [{k: _iso(v) for k, v in row._mapping.items()} for row in conn.execute(query)]


def list_causes(conn: Connection, *, status: str = "open", limit: int | None = None) -> list[dict[str, Any]]:
    """Errors grouped by cause (code, mapping, offending value), biggest first."""
    query = (
        select(
            MAPPING_ERRORS.c.cause_id,
            MAPPING_ERRORS.c.code,
            MAPPING_ERRORS.c.mapping,
            MAPPING_ERRORS.c.value,
            func.min(MAPPING_ERRORS.c.message).label("example_message"),
            func.min(MAPPING_ERRORS.c.resource_type).label("resource_type"),
            func.min(MAPPING_ERRORS.c.field).label("field"),
            func.count().label("count"),
            func.min(MAPPING_ERRORS.c.first_seen).label("first_seen"),
            func.max(MAPPING_ERRORS.c.last_seen).label("last_seen"),
        )
        .where(MAPPING_ERRORS.c.status == status)
        .group_by(
            MAPPING_ERRORS.c.cause_id, MAPPING_ERRORS.c.code, MAPPING_ERRORS.c.mapping, MAPPING_ERRORS.c.value
        )
        .order_by(desc("count"), MAPPING_ERRORS.c.code)
    )
    if limit is not None:
        query = query.limit(limit)
    return [{k: _iso(v) for k, v in row._mapping.items()} for row in conn.execute(query)]


def list_runs(conn: Connection, *, limit: int = 20) -> list[dict[str, Any]]:
    query = select(SYNC_RUNS).order_by(desc(SYNC_RUNS.c.id)).limit(limit)
    return [{k: _iso(v) for k, v in row._mapping.items()} for row in conn.execute(query)]
