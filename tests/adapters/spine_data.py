"""Synthetic spine-surgery patients for the FHIR adapter tests (no real person's data)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

CPT = "http://www.ama-assn.org/go/cpt"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SPINE_CPT = ("22633", "63047", "22551")

JSON = dict[str, Any]


def _stamp(base: datetime, minutes: int) -> JSON:
    when = base + timedelta(minutes=minutes)
    return {"lastUpdated": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "versionId": f"v{minutes}"}


def spine_patient(n: int, cpts: tuple[str, ...], icd: str, base: datetime | None = None,
                  with_meta: bool = False) -> list[JSON]:
    """Patient ``sp-<n>`` with an encounter, procedures, a diagnosis and a PROM response.

    ``with_meta`` gives every resource its own back-dated ``meta.lastUpdated`` (one minute
    apart) for seeding with ``preserve_meta``.
    """
    pid, eid = f"sp-{n}", f"enc-{n}"
    resources: list[JSON] = [
        {"resourceType": "Patient", "id": pid, "gender": "female" if n % 2 else "male",
         "birthDate": f"19{50 + n:02d}-0{1 + n % 9}-15",
         "identifier": [{"system": "urn:example:mrn", "value": f"MRN{1000 + n}"}],
         "name": [{"family": f"Testperson{n}", "given": ["Synthetic"]}]},
        {"resourceType": "Encounter", "id": eid, "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
         "subject": {"reference": f"Patient/{pid}"},
         "period": {"start": "2026-03-02T08:00:00Z", "end": "2026-03-05T11:00:00Z"}},
    ]
    for i, cpt in enumerate(cpts):
        resources.append({
            "resourceType": "Procedure", "id": f"proc-{n}-{i}", "status": "completed",
            "code": {"coding": [{"system": CPT, "code": cpt}]},
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{eid}"},
            "performedDateTime": "2026-03-02T09:30:00Z"})
    resources.append({
        "resourceType": "Condition", "id": f"cond-{n}",
        "code": {"coding": [{"system": ICD10CM, "code": icd}]},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/{eid}"}})
    resources.append({
        "resourceType": "QuestionnaireResponse", "id": f"qr-{n}", "status": "completed",
        "questionnaire": "http://example.org/Questionnaire/odi",
        "subject": {"reference": f"Patient/{pid}"}, "authored": "2026-02-20T10:00:00Z",
        "item": [{"linkId": "odi-total", "answer": [{"valueInteger": 20 + n}]}]})
    if with_meta:
        base = base or datetime(2024, 1, 1, tzinfo=UTC)
        for k, r in enumerate(resources):
            r["meta"] = _stamp(base, 10 * n + k)
    return resources


def spine_cohort(n_patients: int = 4, with_meta: bool = False) -> list[JSON]:
    """Lumbar (22633 + 63047, M48.062) and cervical (22551, M50.12) patients, alternating."""
    out: list[JSON] = []
    for n in range(1, n_patients + 1):
        lumbar = n % 2 == 1
        out += spine_patient(n, ("22633", "63047") if lumbar else ("22551",),
                             "M48.062" if lumbar else "M50.12", with_meta=with_meta)
    return out


def knee_patient(with_meta: bool = False) -> list[JSON]:
    """A patient outside the spine cohort (total knee arthroplasty, CPT 27447)."""
    return spine_patient(99, ("27447",), "M17.11", with_meta=with_meta)


def keys(resources: list[JSON]) -> set[str]:
    return {f"{r['resourceType']}/{r['id']}" for r in resources}
