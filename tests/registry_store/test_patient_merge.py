"""Patient merges in the store, on SQLite and PostgreSQL: rows, cases and reminders move to the
surviving patient, chains of merges resolve to the last survivor, and each merge is audited."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from sqlalchemy import insert, select

from registry_adapter.app import App
from registry_store.patient_merge import file_under_survivors, merge_patient, resolve
from registry_store.tables import AUDIT_LOG as AUDIT
from registry_store.tables import CASES, PATIENTS, REMINDERS
from registry_store.tables import PROCEDURES as PROCS


def _merge_chain(app: App) -> None:
    with app.engine.begin() as conn:
        conn.execute(insert(PATIENTS), [{"source": "s", "id": p} for p in ("A", "B", "C")])
        conn.execute(insert(PROCS), [{"source": "s", "id": "p1", "patient_id": "A",
                                      "surgery_date": date(2025, 3, 2), "codes": [],
                                      "reason_condition_ids": [], "reason_codes": []}])
        conn.execute(insert(CASES), [{"id": "s:p1", "source": "s", "procedure_id": "p1", "patient_id": "A",
                                      "surgery_date": date(2025, 3, 2), "procedure_ids": ["p1"], "codes": [],
                                      "diagnoses": [], "diagnosis_codes": []}])
        conn.execute(insert(REMINDERS), [{"case_id": "s:p1", "timepoint": "3m", "due_date": date(2025, 6, 3),
                                          "window_start": date(2025, 5, 1), "window_end": date(2025, 7, 1)}])
        first = merge_patient(conn, "s", "A", "B", staging_id=7)
        second = merge_patient(conn, "s", "B", "C", staging_id=8)
    assert (first.moved["procedures"], first.cases, first.reminders) == (1, ["s:p1"], 1)
    assert (second.moved["procedures"], second.cases, second.reminders) == (1, ["s:p1"], 1)
    with app.engine.begin() as conn:
        assert conn.execute(select(PROCS.c.patient_id)).scalars().all() == ["C"]
        assert conn.execute(select(CASES.c.patient_id)).scalars().all() == ["C"]
        assert {r.id: r.merged_into for r in conn.execute(select(PATIENTS.c.id, PATIENTS.c.merged_into))} == {
            "A": "C", "B": "C", "C": None
        }
        assert resolve(conn, "s", ["A", "B", "C", "X"]) == {"A": "C", "B": "C"}
        rows: list[dict[str, Any]] = [{"patient_id": "A"}, {"patient_id": "X"}]
        assert file_under_survivors(conn, "s", rows) == {"C"}
        assert rows == [{"patient_id": "C"}, {"patient_id": "X"}]
        # A merge into oneself, or one done already (an A40 re-converted), changes nothing.
        assert merge_patient(conn, "s", "C", "C").moved == {}
        again = merge_patient(conn, "s", "B", "C")
        assert (again.moved["procedures"], again.cases, again.reminders) == (1, ["s:p1"], 1)
        audits = [tuple(r) for r in conn.execute(select(AUDIT.c.action, AUDIT.c.target).order_by(AUDIT.c.id))]
    assert audits == [("patient.merge", "patient s:A"), ("patient.merge", "patient s:B")]


def test_merges_chain_on_sqlite(make_app: Callable[..., App]) -> None:
    _merge_chain(make_app())


@pytest.mark.postgres
def test_merges_chain_on_postgres(make_app: Callable[..., App], pg_url: str) -> None:
    _merge_chain(make_app(pg_url))
