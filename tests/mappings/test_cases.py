"""Case assembly through the real pipeline: case ids stay stable as a surgery's codes arrive."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from adapters.base import Checkpoint, Item, Record, SourceContext
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_store.models import Case

CASES = Case.__table__  # type: ignore[attr-defined]
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
