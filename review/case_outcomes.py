"""What the case page shows about submission: the case's outcomes, when it was last sent to
the registry (the PROM trajectory chart is drawn by ``review.pages.cases``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from registry_store.tables import CASE_OUTCOMES, SUBMISSION_ITEMS, SUBMISSIONS


def submission_context(conn: Connection, case_id: str) -> dict[str, Any]:
    outcome = conn.execute(
        select(CASE_OUTCOMES.c.outcomes, CASE_OUTCOMES.c.computed_at).where(
            CASE_OUTCOMES.c.case_id == case_id
        )
    ).first()
    last = conn.execute(
        select(SUBMISSIONS.c.period, SUBMISSIONS.c.delivered_at, SUBMISSION_ITEMS.c.action)
        .join(SUBMISSIONS, SUBMISSIONS.c.id == SUBMISSION_ITEMS.c.submission_id)
        .where(SUBMISSION_ITEMS.c.case_id == case_id)
        .order_by(SUBMISSION_ITEMS.c.id.desc())
        .limit(1)
    ).first()
    return {
        "outcome": dict(outcome.outcomes) if outcome is not None else None,
        "outcome_computed_at": outcome.computed_at if outcome is not None else None,
        "last_submission": dict(last._mapping) if last is not None else None,
    }
