"""``GET /r/{token}``: the link in a reminder message, opened by the patient.

The token (scheduler.channels.base.make_link_token) names a reminder and an attempt, signed
and timestamped. A valid one is recorded as a click and redirected to the site's
questionnaire for the reminder's instrument and time point (review.questionnaire_urls). A
forged, expired or unknown one gets a plain page: this route needs no sign-in, so nothing it
shows may depend on whose link it is.
"""

from __future__ import annotations

import structlog
from sqlalchemy import select
from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from registry_adapter.app import App
from registry_store import reminders
from registry_store.tables import CASES, REMINDERS
from review.settings import ReviewSettings
from review.web import registry
from scheduler.channels.base import verify_link_token
from scheduler.settings import RemindersSettings

log = structlog.get_logger(__name__)

_INVALID = "This link is not valid or has expired. Please contact your clinic for a new one."
_NO_FORM = "This questionnaire is not available online. Please contact your clinic."


def questionnaire_url(app: App, timepoint: str, module: str | None) -> str | None:
    """The configured URL for a time point of a case in ``module``, most specific key first."""
    urls = app.settings.section(ReviewSettings).questionnaire_urls
    per_module = app.settings.section(RemindersSettings).instruments
    instruments = per_module.get(module or "default") or per_module.get("default", ())
    candidates = [
        *((f"{i}:{timepoint}", i) for i in instruments),
        (timepoint, ""),
        *((i, i) for i in instruments),
        ("default", ""),
    ]
    for key, instrument in candidates:
        if key in urls:
            return urls[key].replace("{timepoint}", timepoint).replace("{instrument}", instrument)
    return None


def _reminder(conn: Connection, reminder_id: int) -> tuple[str, str | None] | None:
    row = conn.execute(
        select(REMINDERS.c.timepoint, CASES.c.module)
        .select_from(REMINDERS.outerjoin(CASES, CASES.c.id == REMINDERS.c.case_id))
        .where(REMINDERS.c.id == reminder_id)
    ).first()
    return (row.timepoint, row.module) if row is not None else None


def _plain(request: Request, message: str, status: int) -> Response:
    # A page of its own, not the UI's: no navigation, no site id, nothing about the reminder.
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, "link.html", {"message": message}, status_code=status)


async def open_link(request: Request) -> Response:
    app = registry(request)
    link = app.settings.section(RemindersSettings).link
    token = str(request.path_params["token"])[:500]
    verified = verify_link_token(link.token_secret, token, link.max_age_days) if link.token_secret else None
    if verified is None:
        log.info("reminder_link.invalid")
        return _plain(request, _INVALID, 404)
    reminder_id, attempt = verified
    with app.engine.begin() as conn:
        found = _reminder(conn, reminder_id)
        if found is None:
            log.info("reminder_link.unknown", reminder_id=reminder_id)
            return _plain(request, _INVALID, 404)
        timepoint, module = found
        reminders.record_click(conn, reminder_id, attempt)
    url = questionnaire_url(app, timepoint, module)
    if url is None:
        log.warning("reminder_link.no_questionnaire_url", reminder_id=reminder_id, timepoint=timepoint)
        return _plain(request, _NO_FORM, 404)
    log.info("reminder_link.opened", reminder_id=reminder_id, attempt=attempt)
    return RedirectResponse(url, status_code=303)


ROUTES = [Route("/r/{token}", open_link, methods=["GET"])]
