"""Reminder planning outside the scheduled jobs: after a sync, an import or a re-process,
and when the review UI or the daemon starts.

Without it the reminder pages stay empty until the first nightly job (or until someone runs
``reminders plan``), which after an installation or ``make demo`` looks like a broken
adapter. Planning is idempotent, so running it once more than needed changes nothing.
"""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import select

from registry_adapter.app import App
from registry_store.cases import most_cases_changed_since
from registry_store.tables import CASES
from scheduler.clock import SystemClock, local_today
from scheduler.planner import PlanCounts, PlanningError, cases_to_replan, plan_reminders

log = structlog.get_logger(__name__)


def replan(app: App, reason: str, since: datetime | None = None) -> PlanCounts | None:
    """Plan every case's time points now, or with ``since`` (when the run that stored data
    started) the cases a run can have changed (``planner.cases_to_replan``: updated since, or
    with a time point still open); None (logged) when planning cannot run.

    A configuration that does not fit the time points must not fail the sync or keep the UI
    from starting: the data is stored either way, and ``reminders plan`` names the problem.
    The dispatcher's own plan before it sends, and ``reminders plan``, plan every case.
    """
    today = local_today(SystemClock(), app.settings.site.tz)
    try:
        with app.engine.begin() as conn:
            cases = None
            if since is not None and not most_cases_changed_since(conn, since):
                changed = conn.execute(select(CASES.c.id).where(CASES.c.updated_at >= since)).scalars()
                cases = cases_to_replan(conn, app.settings, set(changed))
            counts = plan_reminders(conn, app.settings, today, cases)
    except PlanningError as exc:
        log.warning("reminders.plan_skipped", reason=reason, error=str(exc)[:500])
        return None
    log.info("reminders.replanned", reason=reason, created=counts.created, updated=counts.updated)
    return counts
