"""Reminder planning outside the scheduled jobs: after a sync, an import or a re-process,
and when the review UI or the daemon starts.

Without it the reminder pages stay empty until the first nightly job (or until someone runs
``reminders plan``), which after an installation or ``make demo`` looks like a broken
adapter. Planning is idempotent, so running it once more than needed changes nothing.
"""

from __future__ import annotations

import structlog

from registry_adapter.app import App
from scheduler.planner import PlanCounts, PlanningError

log = structlog.get_logger(__name__)


def replan(app: App, reason: str) -> PlanCounts | None:
    """Plan every case's time points now; None (logged) when planning cannot run.

    A configuration that does not fit the time points must not fail the sync or keep the UI
    from starting: the data is stored either way, and ``reminders plan`` names the problem.
    """
    from scheduler.dispatcher import Dispatcher

    try:
        counts = Dispatcher(app).plan()
    except PlanningError as exc:
        log.warning("reminders.plan_skipped", reason=reason, error=str(exc)[:500])
        return None
    log.info("reminders.replanned", reason=reason, created=counts.created, updated=counts.updated)
    return counts
