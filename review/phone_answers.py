"""Answers taken by phone or on paper, entered by a coordinator: they become a FHIR
QuestionnaireResponse staged and mapped by the real pipeline under the case's source, so they
are scored, placed on the case's time point and complete it exactly like a response the
hospital sends. The completion is then recorded on the worklist (with the response id).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

from adapters.base import Checkpoint, SourceContext
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline, SourceBusy
from registry_store import worklist
from registry_types.records import Record
from scheduler.settings import RemindersSettings


class AnswersError(ValueError):
    """The answers cannot be taken as given; the message names the reminder and the item."""


class _OneResponse:
    """A source yielding one response, filed under the case's source so its Patient reference
    resolves; the source's sync state is handed back unchanged."""

    def __init__(self, name: str, resource: dict[str, Any], origin: str):
        self.name = name
        self._resource = resource
        self._origin = origin

    def read(self, ctx: SourceContext) -> Iterator[Any]:
        yield Record(resource=self._resource, origin=self._origin)
        yield Checkpoint(dict(ctx.state), progress="answers entered in review")


def instruments_for(app: App, module: str | None) -> list[Any]:
    """The instruments whose response completes this case's time points (reminders.instruments)."""
    wanted = app.settings.section(RemindersSettings).instruments
    ids = wanted.get(module or "default") or wanted.get("default") or ()
    return [app.instruments[i] for i in ids if i in app.instruments]


def read_answers(instrument: Any, form: dict[str, str], reminder_id: int) -> dict[str, float | int | None]:
    """Form fields ``item.<id>`` → numbers within each item's range (empty: unanswered)."""
    answers: dict[str, float | int | None] = {}
    for item in instrument.definition.items:
        raw = form.get(f"item.{item.id}", "").strip()
        if raw == "":
            answers[item.id] = None
            continue
        try:
            value = float(raw)
        except ValueError:
            raise AnswersError(f"reminder {reminder_id}: {item.id} must be a number") from None
        if not item.min <= value <= item.max:
            raise AnswersError(
                f"reminder {reminder_id}: {item.id} must be from {item.min:g} to {item.max:g}"
            )
        answers[item.id] = int(value) if item.integer else value
    if all(v is None for v in answers.values()):
        raise AnswersError(f"reminder {reminder_id}: no answer was entered")
    return answers


def enter_answers(
    app: App,
    username: str,
    reminder: dict[str, Any],
    instrument_id: str,
    form: dict[str, str],
    how: str,
    on: date,
) -> str:
    """Stage, map and score the answers; record the completion. Returns the response id."""
    from mappings.proms import build_questionnaire_response

    rid = int(reminder["id"])
    choices = instruments_for(app, reminder.get("module"))
    instrument = next((i for i in choices if i.id == instrument_id), None)
    if instrument is None:
        raise AnswersError(
            f"reminder {rid}: instrument {instrument_id[:40]!r} does not complete this time point"
        )
    answers = read_answers(instrument, form, rid)
    with app.engine.connect() as conn:
        n = len(worklist.actions_of(conn, rid)) + 1
    qr_id = f"review-{rid}-{instrument.id}-{n}"[:64]
    resource = build_questionnaire_response(
        instrument, answers, qr_id=qr_id, patient_ref=f"Patient/{reminder['patient_id']}", authored=on
    )
    try:
        source = _OneResponse(reminder["source"], resource, f"review:reminder {rid}")
        Pipeline(app).ingest(source, SourceContext(), kind="import")
    except SourceBusy:
        raise AnswersError(
            f"reminder {rid}: a sync of {reminder['source']} is running; try again shortly"
        ) from None
    worklist.record_completion(app.engine, rid, username, how, on, response_id=qr_id)
    return qr_id
