"""``registry-adapter proms list``: the stored PROM responses, as staff and scripts read them."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.engine import Connection

from registry_adapter.cli import Ctx, pass_ctx
from registry_store.tables import PROM_RESPONSES


def list_responses(conn: Connection, *, case_id: str | None = None) -> list[dict[str, Any]]:
    """Stored responses, oldest first; ``status`` says whether the instrument could be scored.

    A response that cannot be scored is still stored (the patient answered, so its time point
    is complete): it is listed as ``not_scorable`` with its outputs all null.
    """
    query = select(
        PROM_RESPONSES.c.id,
        PROM_RESPONSES.c.patient_id,
        PROM_RESPONSES.c.case_id,
        PROM_RESPONSES.c.instrument,
        PROM_RESPONSES.c.timepoint,
        PROM_RESPONSES.c.authored,
        PROM_RESPONSES.c.scores,
    ).order_by(PROM_RESPONSES.c.authored, PROM_RESPONSES.c.id)
    if case_id is not None:
        query = query.where(PROM_RESPONSES.c.case_id == case_id)
    rows = []
    for r in conn.execute(query):
        scores = dict(r.scores or {})
        rows.append(
            {
                "id": r.id,
                "patient_id": r.patient_id,
                "case_id": r.case_id,
                "instrument": r.instrument,
                "timepoint": r.timepoint,
                "authored": _iso(r.authored),
                "status": "scored" if any(v is not None for v in scores.values()) else "not_scorable",
                "scores": scores,
            }
        )
    return rows


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date | datetime) else value


@click.group()
def proms() -> None:
    """Stored PROM questionnaire responses."""


@proms.command("list")
@click.option("--case", "case_id", metavar="ID", help="Only the responses assigned to this case id.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per response.")
@pass_ctx
def list_cmd(obj: Ctx, case_id: str | None, as_json: bool) -> None:
    """Responses with patient, case, instrument, time point, status (scored / not_scorable), scores."""
    with obj.app.engine.connect() as conn:
        rows = list_responses(conn, case_id=case_id)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("id", "patient", "case", "instrument", "timepoint", "authored", "status", "scores"):
        table.add_column(col)
    for r in rows:
        scores = ", ".join(f"{k} {'—' if v is None else f'{v:g}'}" for k, v in r["scores"].items())
        table.add_row(
            r["id"],
            r["patient_id"],
            r["case_id"] or "",
            r["instrument"],
            r["timepoint"] or "",
            str(r["authored"] or ""),
            r["status"],
            scores,
        )
    # Made here, not at import, so the terminal's current width ($COLUMNS) is used.
    Console(soft_wrap=True).print(table)


COMMANDS = [proms]
