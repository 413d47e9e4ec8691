"""Validation verdicts by the exact bytes of a staged record.

A remap (``reprocess --all`` after a code-map fix) of raw input that has not changed must not
pay for structural validation again: the verdict (its issues; ``[]`` when clean) is kept under
the SHA-256 of the staged bytes and the validator that gave it. Another validator version
decides afresh; bytes that changed have another digest.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict
from typing import Any

import orjson
from sqlalchemy.engine import Connection

from registry_store.db import lookup, upsert
from registry_store.errors import Issue
from registry_store.tables import VALIDATION_VERDICTS as VERDICTS
from registry_store.timeutil import utcnow


def known_verdicts(
    conn: Connection, validator: str, digests: Collection[str]
) -> dict[str, list[Issue]]:
    """The verdicts already given by ``validator`` on these digests."""
    found: dict[str, list[Issue]] = {}
    for row in lookup(conn, VERDICTS, ("digest", "issues"), {"validator": validator}, "digest", digests):
        # Most verdicts are clean ("[]"): no JSON to parse for those. SQLite hands the column
        # over as text, psycopg already parsed.
        issues = row.issues
        if isinstance(issues, str | bytes):
            issues = orjson.loads(issues) if issues != "[]" else []
        found[row.digest] = [Issue(**issue) for issue in issues] if issues else []
    return found


def record_verdicts(
    conn: Connection, validator: str, verdicts: Sequence[tuple[str, Sequence[Issue]]]
) -> None:
    """Keep new verdicts (one multi-row insert; one already there stays, it is the same)."""
    if not verdicts:
        return
    now = utcnow()
    rows: dict[str, dict[str, Any]] = {
        digest: {
            "digest": digest, "validator": validator, "issues": [asdict(i) for i in issues], "checked_at": now
        }
        for digest, issues in verdicts
    }
    upsert(conn, VERDICTS, list(rows.values()), keys=["digest", "validator"], update=[])
