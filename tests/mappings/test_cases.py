"""Case assembly through the real pipeline: case ids stay stable as a surgery's codes arrive."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from adapters.base import Checkpoint, Item, Record, SourceContext
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_store.tables import CASES
from registry_store.tables import MAPPING_ERRORS as ERRORS

CPT = "http://www.ama-assn.org/go/cpt"


class _Night:
    """One nightly delivery of a feed named ``s``."""

    name = "s"

    def __init__(self, *resources: dict[str, Any]):
        self.resources = resources

    def read(self, ctx: SourceContext) -> Iterator[Item]:
        for res in self.resources:
            yield Record(res, "test")
        yield Checkpoint({})


def _proc(pid: str, code: str, day: str = "2025-03-14") -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": pid,
        "status": "completed",
        "subject": {"reference": "Patient/pat-1"},
        "encounter": {"reference": "Encounter/e1"},
        "code": {"coding": [{"system": CPT, "code": code}]},
        "performedDateTime": f"{day}T08:30:00-05:00",
    }


def _cases(app: App) -> dict[str, tuple[str, str, str, list[str]]]:
    with app.engine.connect() as conn:
        return {
            r.id: (r.status, r.procedure_id, r.category, r.procedure_ids) for r in conn.execute(select(CASES))
        }


def test_a_higher_ranked_code_arriving_later_keeps_the_case_id(app: App) -> None:
    Pipeline(app).ingest(_Night(_proc("p-lam", "63047")))
    assert _cases(app) == {"s:p-lam": ("active", "p-lam", "lumbar_laminectomy", ["p-lam"])}
    # Night 2: the fusion of the same surgery (same patient, stay and day) as its own Procedure.
    Pipeline(app).ingest(_Night(_proc("p-fus", "22633")))
    # Same case, now anchored on the fusion; no second case (no second set of reminders).
    assert _cases(app) == {"s:p-lam": ("active", "p-fus", "plif_tlif", ["p-fus", "p-lam"])}


def test_a_procedure_moved_to_another_day_does_not_take_the_surgerys_case_id(app: App) -> None:
    Pipeline(app).ingest(_Night(_proc("p-lam", "63047"), _proc("p-fus", "22633")))
    assert _cases(app) == {"s:p-fus": ("active", "p-fus", "plif_tlif", ["p-fus", "p-lam"])}
    # The fusion's date is corrected: the day-14 surgery keeps its case (now the laminectomy);
    # the fusion is a surgery of its own, and must not collide with that case's id.
    Pipeline(app).ingest(_Night(_proc("p-fus", "22633", day="2025-03-21")))
    cases = _cases(app)
    assert cases["s:p-fus"] == ("active", "p-lam", "lumbar_laminectomy", ["p-lam"])
    (other,) = set(cases) - {"s:p-fus"}
    assert cases[other] == ("active", "p-fus", "plif_tlif", ["p-fus"])


def _condition(cid: str, encounter: str, *, text: str, icd10: str | None = None) -> dict[str, Any]:
    code: dict[str, Any] = {"text": text}
    if icd10:
        code["coding"] = [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": icd10}]
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/pat-1"},
        "encounter": {"reference": f"Encounter/{encounter}"},
        "code": code,
    }


def _open_case_errors(app: App) -> list[tuple[str, str, str]]:
    from registry_store.errors import CASE_SCOPE

    with app.engine.connect() as conn:
        rows = conn.execute(
            select(ERRORS.c.resource_type, ERRORS.c.resource_id, ERRORS.c.code).where(
                ERRORS.c.mapping == CASE_SCOPE, ERRORS.c.status == "open", ERRORS.c.severity == "error"
            )
        )
        return sorted((r.resource_type, r.resource_id, r.code) for r in rows)


def test_a_diagnosis_in_words_only_on_a_surgical_stay_is_a_review_error(app: App) -> None:
    snomed_only = _condition("c-snomed", "e1", text="Back pain")
    snomed_only["code"]["coding"] = [{"system": "http://snomed.info/sct", "code": "161891005"}]
    Pipeline(app).ingest(
        _Night(
            _proc("p-lam", "63047"),
            _condition("c-words", "e1", text="lumbar spinal stenosis"),
            _condition("c-elsewhere", "e9", text="sprained ankle"),  # not a surgical stay
            snomed_only,  # coded, just not a spine code: out of scope as before
        )
    )
    assert _open_case_errors(app) == [("Condition", "c-words", "case.uncoded_diagnosis")]
    with app.engine.connect() as conn:
        [case] = conn.execute(select(CASES.c.diagnoses, CASES.c.diagnosis_codes)).all()
    assert case.diagnoses == [] and case.diagnosis_codes == []
    # The hospital codes it and sends it again: the error is resolved, the case classified.
    Pipeline(app).ingest(_Night(_condition("c-words", "e1", text="lumbar spinal stenosis", icd10="M48.062")))
    assert _open_case_errors(app) == []
    with app.engine.connect() as conn:
        [case] = conn.execute(select(CASES.c.diagnoses, CASES.c.diagnosis_codes)).all()
    assert case.diagnosis_codes == ["M48.062"] and len(case.diagnoses) == 1
