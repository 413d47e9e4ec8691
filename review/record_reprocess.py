"""Re-process the staged records a reviewer selected (a cause's record list, a record's page).

Narrower than a cause's "Re-process": exactly the ticked records go back through the same
pipeline path (Pipeline.reprocess), so a reviewer can try a fix on a few records first, or
re-map one patient's records. Audited like every reviewer action; ids only, no patient data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from registry_adapter.app import App
from registry_store import audit
from registry_store.tables import MAPPING_ERRORS, STAGING
from review.actions import _CODEMAP_LOCK, ActionError, reprocess_audited
from review.auth import CurrentUser

# One request re-maps at most this many records: a bigger batch belongs to the cause's
# "Re-process" or the CLI, not to a form a reviewer ticks by hand.
MAX_SELECTED = 500
_ID_DIGITS = 12
# Where the form may send the reviewer back to: a cause's page or a record's page, never
# another site (the field comes from the browser).
_BACK = re.compile(r"^/(causes/[0-9a-f]{16}|records/[0-9]{1,12})(\?records=(open|ignored|resolved))?$")
STILL_FAILING = ("failed", "invalid", "pending")


def parse_ids(values: Iterable[object]) -> list[int]:
    """The selected staging ids, validated: digits only, at most MAX_SELECTED, no repeats."""
    ids: list[int] = []
    for value in values:
        text = str(value).strip()
        if not text.isdigit() or len(text) > _ID_DIGITS:
            raise ActionError(f"not a staged record id: {text[:20]!r}")
        ids.append(int(text))
    unique = sorted(set(ids))
    if not unique:
        raise ActionError("select at least one record to re-process")
    if len(unique) > MAX_SELECTED:
        raise ActionError(
            f"at most {MAX_SELECTED} records can be re-processed at once ({len(unique)} selected)"
        )
    return unique


def back_to(value: object, default: str = "/causes") -> str:
    """The page to return to after the action: the form's ``back`` when it is one of ours."""
    text = str(value or "")
    return text if _BACK.match(text) else default


def _statuses(conn: Connection, ids: list[int]) -> dict[int, str]:
    rows = conn.execute(select(STAGING.c.id, STAGING.c.status).where(STAGING.c.id.in_(ids)))
    return {int(r.id): str(r.status) for r in rows}


def _remappable(conn: Connection, ids: list[int]) -> list[int]:
    """The ids Pipeline.reprocess selects: not deleted, and received as something that parsed."""
    query = select(STAGING.c.id).where(
        STAGING.c.id.in_(ids),
        STAGING.c.status != "deleted",
        STAGING.c.content_type != "application/octet-stream",
    )
    return sorted(int(i) for i in conn.execute(query).scalars())


def _open_errors(conn: Connection, ids: list[int]) -> int:
    query = select(func.count()).where(
        MAPPING_ERRORS.c.staging_id.in_(ids), MAPPING_ERRORS.c.status == "open"
    )
    return int(conn.execute(query).scalar_one())


def reprocess_records(app: App, user: CurrentUser, ids: list[int]) -> dict[str, Any]:
    """Map exactly these staged records again; the outcome per record, counted.

    Every id must name a staged record; a record that cannot be re-mapped (deleted, or
    received as bytes that never parsed) is left as it is and counted as skipped.
    """
    with app.engine.connect() as conn:
        before = _statuses(conn, ids)
        remappable = _remappable(conn, ids)
        open_before = _open_errors(conn, ids)
    missing = [i for i in ids if i not in before]
    if missing:
        shown = ", ".join(str(i) for i in missing[:10]) + (" …" if len(missing) > 10 else "")
        raise ActionError(f"no staged record with id {shown}")
    target = "records:" + ",".join(str(i) for i in ids)

    def audited(after: dict[str, Any]) -> None:
        audit.record_alone(
            app.engine,
            username=user.username,
            action="records.reprocess",
            target=target,
            before={"staging_ids": ids, "open_errors": open_before},
            after=after,
        )

    with _CODEMAP_LOCK:
        # Pick up code-map files edited outside the UI since the mappings were compiled.
        app.reload_mappings_if_changed()
        selected, _ = reprocess_audited(app, audited, "select them and re-process again", staging_ids=ids)
    with app.engine.connect() as conn:
        after = _statuses(conn, remappable)
        open_after = _open_errors(conn, ids)
    # Counted from the records themselves: the run's counts also hold records their
    # conversion staged (an HL7 v2 message's FHIR resources), which were not selected.
    mapped = sum(1 for s in after.values() if s == "mapped")
    failing = sum(1 for s in after.values() if s in STILL_FAILING)
    result = {
        "selected": len(ids),
        "reprocessed": selected,
        "mapped": mapped,
        "still_failing": failing,
        # Out of scope or excluded by the mapping: handled, not failing.
        "other": len(after) - mapped - failing,
        "skipped": len(ids) - len(remappable),
        "open_errors": open_after,
    }
    audited({"outcome": "done", **result})
    return result


def summary(result: dict[str, Any]) -> str:
    """The flash line: counts only ("Re-processed 3 records: 2 mapped, 1 still failing")."""
    n = result["reprocessed"]
    words = (
        f"Re-processed {n:,} record{'' if n == 1 else 's'}: {result['mapped']:,} mapped, "
        f"{result['still_failing']:,} still failing"
    )
    if result["other"]:
        words += f", {result['other']:,} out of scope or excluded"
    if result["skipped"]:
        words += f"; {result['skipped']:,} skipped (deleted, or never readable)"
    return words + f"; {result['open_errors']:,} open error(s) left on the selected records."
