"""Field-by-field comparison with Microsoft FHIR-Converter's Bundles for the 19 samples with
expected output, on the fields we map. Ids differ by design (both are hashes).

Known, deliberate differences (asserted, so a change on either side shows up):
* I10 → we use http://hl7.org/fhir/sid/icd-10-cm (US ICD-10-CM, what the registry codes in);
  FHIR-Converter uses http://hl7.org/fhir/sid/icd-10. Same for I9 → icd-9-cm vs icd-9.
* date-times are compared as instants: FHIR-Converter shifts them to its build machine's
  zone (+05:30); we keep the message's offset.
* FHIR-Converter also makes Patients identifiers from PID-19/20 and other segments (DB1,
  IN2) and Procedures/Conditions from PDA; we map PID-2/3/4 only (no SSN: not needed), so
  ours must be a subset of theirs.
* PR1 with PR1-7 minutes: we follow the V2-to-FHIR IG (performedPeriod); FHIR-Converter
  gives performedDateTime. The start instant must agree.
* Message types we do not convert (ORM, OML, OMG, REF) must fail with hl7.unsupported_message.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from adapters.hl7v2.config import load_config
from adapters.hl7v2.convert import convert_message
from tests.hl7v2.conftest import EXPECTED, MESSAGES

OUR_SYSTEM_FOR_THEIRS = {
    "http://hl7.org/fhir/sid/icd-10": "http://hl7.org/fhir/sid/icd-10-cm",
    "http://hl7.org/fhir/sid/icd-9": "http://hl7.org/fhir/sid/icd-9-cm",
}


def _instant(value: Any) -> Any:
    if isinstance(value, str) and "T" in value:
        return datetime.fromisoformat(value).timestamp()
    return value


def _codings(resource: dict[str, Any]) -> set[tuple[str | None, str | None]]:
    return {(c.get("code"), OUR_SYSTEM_FOR_THEIRS.get(c.get("system"), c.get("system")))
            for c in resource.get("code", {}).get("coding", [])}


def _ident_keys(resource: dict[str, Any]) -> set[tuple[str, str | None]]:
    out = set()
    for i in resource.get("identifier", []):
        if i.get("value"):
            codings = (i.get("type") or {}).get("coding") or [{}]
            out.add((i["value"], codings[0].get("code")))
    return out


def _by_type(resources: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        out.setdefault(r["resourceType"], []).append(r)
    return out


def _performed_start(p: dict[str, Any]) -> Any:
    return _instant(p.get("performedDateTime") or (p.get("performedPeriod") or {}).get("start"))


def _when(r: dict[str, Any]) -> Any:
    return _performed_start(r) if r["resourceType"] == "Procedure" else _instant(
        r.get("onsetDateTime"))


def _match(ours: dict[str, Any], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    """Their resource with the same codings (and, when several, the same date)."""
    candidates = [t for t in theirs if _codings(t) == _codings(ours)]
    assert candidates, f"no FHIR-Converter resource with codes {_codings(ours)}"
    for t in candidates:
        if _when(t) == _when(ours) or len(candidates) == 1:
            return t
    return candidates[0]


CASES = sorted(p.name.removesuffix("-expected.json") for p in EXPECTED.glob("*-expected.json"))


def test_nineteen_expected_bundles() -> None:
    assert len(CASES) == 19


@pytest.mark.parametrize("name", CASES)
def test_matches_fhir_converter(name: str) -> None:
    bundle = json.loads((EXPECTED / f"{name}-expected.json").read_text())
    theirs = _by_type([e["resource"] for e in bundle["entry"]])
    result = convert_message((MESSAGES / f"{name}.hl7").read_bytes(), source=name,
                             tz=ZoneInfo("UTC"))
    assert result.header is not None
    if result.header.message_type not in load_config().messages:
        assert [e.code for e in result.errors] == ["hl7.unsupported_message"]
        return
    ours = _by_type(result.resources)
    compared = 0

    (patient,) = ours["Patient"]
    (their_patient,) = theirs["Patient"]
    assert _ident_keys(patient) <= _ident_keys(their_patient)
    for key in ("birthDate", "gender", "deceasedDateTime", "deceasedBoolean"):
        if key in patient:
            assert _instant(patient[key]) == _instant(their_patient.get(key)), key
            compared += 1
    first, their_first = patient["name"][0], their_patient["name"][0]
    assert first["family"] == their_first["family"]
    assert first["given"] == their_first["given"][: len(first["given"])]

    for enc in ours.get("Encounter", []):
        # Every visit is converted (a BAR^P01 may carry several): compare with theirs of
        # the same visit number.
        ours_ids = {v for v, _ in _ident_keys(enc)}
        same_visit = [t for t in theirs["Encounter"] if ours_ids <= {v for v, _ in _ident_keys(t)}]
        assert same_visit, f"no FHIR-Converter Encounter with identifiers {ours_ids}"
        their_enc = same_visit[0]
        assert enc["class"]["code"] == their_enc["class"]["code"]
        # A pre-admission (PV1-2 P) is planned per the V2-to-FHIR IG ConceptMap
        # table-hl70004-to-encounter-status; FHIR-Converter says in-progress.
        preadmit = enc["class"]["code"] == "PRENC" and enc["status"] == "planned"
        assert enc["status"] == their_enc["status"] or name.startswith("BAR") or preadmit
        for k in ("start", "end"):
            if k in enc.get("period", {}):
                assert _instant(enc["period"][k]) == _instant(their_enc["period"][k])
                compared += 1

    for proc in ours.get("Procedure", []):
        t = _match(proc, theirs.get("Procedure", []))
        if _performed_start(t) is not None:  # theirs has none for FT1 procedures
            assert _performed_start(proc) == _performed_start(t)
        compared += 1

    for cond in ours.get("Condition", []):
        t = _match(cond, theirs.get("Condition", []))
        assert _instant(cond.get("onsetDateTime")) == _instant(t.get("onsetDateTime"))
        compared += 1
    assert compared >= 2


def test_parity_covers_the_supported_samples() -> None:
    supported = []
    for name in CASES:
        r = convert_message((MESSAGES / f"{name}.hl7").read_bytes(), source=name,
                            tz=ZoneInfo("UTC"))
        if r.header and r.header.message_type in load_config().messages:
            supported.append(name)
    assert len(supported) == 11, supported


