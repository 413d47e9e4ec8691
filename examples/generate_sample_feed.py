"""Generate the bundled synthetic sample feed (examples/sample-feed/).

Everyone in it is made up: names come from a short list of obviously fictitious surnames, MRNs
start with DEMO-. The feed exercises lumbar and cervical cases (one Procedure with several
codings, and one Procedure per billed code), diagnoses by reasonReference, by encounter and
inline, PROMs at baseline / 90 days / 1 year, PROM forms laid out the ways hospitals send them
(the PACIO ODI answering with the statement text and its own total, NDI with LOINC answer codes,
EQ-5D-5L with hyphenated linkIds, a vendor form with numeric linkIds that a site must teach, a
form too incomplete to score), out-of-scope records, and deliberate mapping errors so the review
tools have something to show. Output is deterministic (fixed seed and
dates), so tests can rely on it.

    python examples/generate_sample_feed.py [--out examples/sample-feed] [--patients 40] [--as-of DATE]

``--as-of DATE`` moves every date by the same number of days so the feed reads as if exported
on DATE (the bundled feed is dated as of 2025-11-01), and leaves out PROM responses that would
be answered after DATE: ``make demo`` uses it with today's date, so the demo has reminders
due now and time points still open.

It also writes examples/sample-outcomes/: later records about the same patients with
hand-labelled outcomes (comorbidities, a surgical site infection at day 20, a readmission 45
days after discharge, a revision at day 200, BMI and smoking status, a discharge disposition,
a death at day 60). They are a separate folder so the sample feed stays as tests know it;
import both under one source name (``registry-adapter import examples/sample-feed
examples/sample-outcomes --source sample``) to see the outcomes. ``LABELLED`` lists them.
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from mappings.proms import build_questionnaire_response, load_instruments

TZ = ZoneInfo("America/Chicago")
CPT = "http://www.ama-assn.org/go/cpt"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.1"

SURNAMES = ["Testperson", "Sampleton", "Demoford", "Fictivez", "Mockridge", "Placeholt"]
GIVEN = ["Alex", "Jordan", "Sam", "Robin", "Kim", "Taylor", "Casey", "Jamie"]

LUMBAR = [
    (["22633", "63047", "22842"], ["M48.062", "M43.16"], "TLIF L4-L5 with decompression"),
    (["22612", "22614", "22842"], ["M43.16"], "Posterolateral fusion L4-S1"),
    (["63047", "63048"], ["M48.062"], "Lumbar laminectomy L3-L5"),
    (["63030"], ["M51.16"], "Microdiscectomy L5-S1"),
    (["22558", "22853"], ["M51.36"], "ALIF L5-S1"),
]
CERVICAL = [
    (["22551", "22552", "22853", "22845"], ["M50.12", "M48.02"], "ACDF C5-C7"),
    (["22600", "22842", "63045"], ["M47.12"], "Posterior cervical fusion C4-C6"),
    (["63045", "63048"], ["M48.02", "M47.12"], "Cervical laminectomy C3-C5"),
    (["63050"], ["M47.12"], "Laminoplasty C3-C6"),
]


def ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def coding(system: str, code: str) -> dict[str, str]:
    return {"system": system, "code": code}


def local_dt(day: date, hour: int, minute: int = 0) -> str:
    return datetime.combine(day, time(hour, minute), TZ).isoformat()


# The day the bundled feed reads as exported: --as-of shifts every date by (as_of - this).
BUNDLED_AS_OF = date(2025, 11, 1)


class Feed:
    def __init__(self, seed: int, as_of: date | None = None):
        self.rng = random.Random(seed)
        # Only an explicit --as-of drops answers from the future, so the bundled feed (that
        # tests rely on) stays as it always was.
        self.as_of = as_of
        self.shift = (as_of - BUNDLED_AS_OF) if as_of else timedelta(0)
        self.out: dict[str, list[dict[str, Any]]] = {}
        self.instruments = load_instruments()
        self.stays: dict[int, tuple[str, date, date]] = {}  # n -> patient, surgery, discharge

    def day(self, year: int, month: int, dom: int) -> date:
        """A fixed date of the bundled feed, moved by --as-of."""
        return date(year, month, dom) + self.shift

    def add(self, resource: dict[str, Any]) -> dict[str, Any]:
        authored = resource.get("authored")
        if self.as_of is not None and authored and date.fromisoformat(authored[:10]) > self.as_of:
            return resource  # not answered yet on the feed's date (its answers were drawn all the same)
        updated = datetime.combine(self.day(2025, 11, 1), time(2), UTC).isoformat().replace("+00:00", "Z")
        resource.setdefault("meta", {"versionId": "1", "lastUpdated": updated})
        self.out.setdefault(resource["resourceType"], []).append(resource)
        return resource

    def patient(self, n: int) -> str:
        pid = f"pat-{n:04d}"
        birth = date(1940, 1, 1) + timedelta(days=self.rng.randint(0, 365 * 45))
        self.add(
            {
                "resourceType": "Patient",
                "id": pid,
                "identifier": [
                    {
                        "type": {"coding": [coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR")]},
                        "system": MRN_SYSTEM,
                        "value": f"DEMO-{100000 + n}",
                    }
                ],
                "name": [{"family": self.rng.choice(SURNAMES), "given": [self.rng.choice(GIVEN)]}],
                "gender": self.rng.choice(["female", "male"]),
                "birthDate": birth.isoformat(),
                "telecom": [{"system": "email", "value": f"patient{n}@example.invalid"}],
            }
        )
        if self.as_of is not None:
            # The demo's worklist has numbers to call: 555-0100..0199 are reserved for fiction.
            phone = {"system": "phone", "value": f"+1 312 555 01{n % 100:02d}"}
            self.out["Patient"][-1]["telecom"].append(phone)
        return pid

    def encounter(self, pid: str, eid: str, admit: date, days: int) -> None:
        self.add(
            {
                "resourceType": "Encounter",
                "id": eid,
                "status": "finished",
                "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP"),
                "subject": ref("Patient", pid),
                "period": {
                    "start": local_dt(admit, 6, 30),
                    "end": local_dt(admit + timedelta(days=days), 11),
                },
            }
        )

    def condition(self, cid: str, pid: str, eid: str | None, code: str, *, dotted: bool = True) -> None:
        res: dict[str, Any] = {
            "resourceType": "Condition",
            "id": cid,
            "clinicalStatus": {
                "coding": [coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active")]
            },
            "verificationStatus": {
                "coding": [coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed")]
            },
            "code": {"coding": [coding(ICD, code if dotted else code.replace(".", ""))]},
            "subject": ref("Patient", pid),
            "recordedDate": self.day(2025, 1, 15).isoformat(),
        }
        if eid:
            res["encounter"] = ref("Encounter", eid)
        self.add(res)

    def procedure(
        self,
        prid: str,
        pid: str,
        eid: str | None,
        codes: list[str],
        day: date | None,
        reasons: tuple[str, ...] | list[str] = (),
        status: str = "completed",
        text: str = "",
    ) -> None:
        res: dict[str, Any] = {
            "resourceType": "Procedure",
            "id": prid,
            "status": status,
            "code": {"coding": [coding(CPT, c) for c in codes]},
            "subject": ref("Patient", pid),
        }
        if text:
            res["code"]["text"] = text
        if eid:
            res["encounter"] = ref("Encounter", eid)
        if day:
            res["performedDateTime"] = local_dt(day, 8, 15)
        if reasons:
            res["reasonReference"] = [ref("Condition", r) for r in reasons]
        self.add(res)

    def prom(self, qid: str, pid: str, instrument: str, answers: dict[str, Any], when: date) -> None:
        inst = self.instruments[instrument]
        self.add(
            build_questionnaire_response(
                inst, answers, qr_id=qid, patient_ref=f"Patient/{pid}", authored=local_dt(when, 10)
            )
        )

    def random_answers(self, instrument: str, better: float) -> dict[str, Any]:
        inst = self.instruments[instrument]
        answers: dict[str, Any] = {}
        for item in inst.definition.items:
            low, high = item.min, item.max
            span = high - low
            value = low + span * max(0.0, min(1.0, self.rng.gauss(0.55 - better, 0.2)))
            answers[item.id] = round(value) if item.integer else round(value, 1)
        return answers


def build(patients: int, seed: int, as_of: date | None = None) -> Feed:
    feed = Feed(seed, as_of)
    start = feed.day(2024, 3, 4)
    for n in range(1, patients + 1):
        pid = feed.patient(n)
        lumbar = n % 3 != 0
        codes, dx, text = feed.rng.choice(LUMBAR if lumbar else CERVICAL)
        surgery = start + timedelta(days=(n * 11) % 540)
        eid = f"enc-{n:04d}"
        stay = feed.rng.randint(1, 4)
        feed.encounter(pid, eid, surgery, stay)
        cond_ids = []
        for i, code in enumerate(dx):
            cid = f"cond-{n:04d}-{i}"
            feed.condition(cid, pid, eid if i else None, code, dotted=n % 4 != 0)
            cond_ids.append(cid)
        if n % 5 == 0:
            # One Procedure per billed code, as many billing-driven feeds send it.
            for i, code in enumerate(codes):
                feed.procedure(
                    f"proc-{n:04d}-{i}", pid, eid, [code], surgery, cond_ids[:1] if i == 0 else [], text=text
                )
        else:
            feed.procedure(f"proc-{n:04d}", pid, eid, codes, surgery, cond_ids[:1], text=text)
        region_instrument = "odi" if lumbar else "ndi"
        discharge = surgery + timedelta(days=stay)
        feed.stays[n] = (pid, surgery, discharge)
        if n % 2 == 0:
            feed.prom(
                f"qr-{n:04d}-base",
                pid,
                region_instrument,
                feed.random_answers(region_instrument, 0.0),
                surgery - timedelta(days=14),
            )
        if n % 3 != 2:
            feed.prom(
                f"qr-{n:04d}-90d",
                pid,
                region_instrument,
                feed.random_answers(region_instrument, 0.25),
                discharge + timedelta(days=92),
            )
        if n % 4 == 1:
            feed.prom(
                f"qr-{n:04d}-1y",
                pid,
                region_instrument,
                feed.random_answers(region_instrument, 0.3),
                surgery + timedelta(days=370),
            )
            feed.prom(
                f"qr-{n:04d}-1y-eq",
                pid,
                "eq5d5l",
                feed.random_answers("eq5d5l", 0.3),
                surgery + timedelta(days=371),
            )
        if n % 6 == 0:
            feed.prom(
                f"qr-{n:04d}-promis",
                pid,
                "promis10",
                feed.random_answers("promis10", 0.2),
                discharge + timedelta(days=95),
            )

    if patients >= 17:
        hospital_layouts(feed)
    # Out of scope: not spine surgery, not a spine diagnosis.
    feed.procedure(
        "proc-knee-1", "pat-0001", None, ["27447"], feed.day(2024, 9, 2), text="Total knee arthroplasty"
    )
    feed.condition("cond-dm-1", "pat-0001", None, "E11.9")
    # Excluded: recorded in error.
    feed.procedure(
        "proc-error-1", "pat-0002", "enc-0002", ["22633"], feed.day(2024, 3, 26), status="entered-in-error"
    )
    # Deliberate mapping errors (one cause each, some with several records).
    for i, n in enumerate((3, 7, 11)):
        feed.procedure(
            f"proc-unlisted-{i}",
            f"pat-{n:04d}",
            None,
            ["22899"],
            feed.day(2025, 2, 10 + i),
            text="Unlisted spine procedure",
        )
    feed.condition("cond-unmapped-1", "pat-0004", None, "M48.9")
    feed.condition("cond-unmapped-2", "pat-0008", None, "M48.9")
    feed.procedure("proc-nodate-1", "pat-0009", "enc-0009", ["63047"], None, text="Date missing")
    feed.procedure("proc-addon-1", "pat-0010", None, ["22614"], feed.day(2025, 3, 3), text="Add-on only")
    feed.add(
        {
            "resourceType": "QuestionnaireResponse",
            "id": "qr-unknown-1",
            "status": "completed",
            "questionnaire": "http://example.org/Questionnaire/hospital-satisfaction-survey",
            "subject": ref("Patient", "pat-0005"),
            "authored": local_dt(feed.day(2025, 1, 20), 9),
            "item": [{"linkId": "q1", "answer": [{"valueInteger": 4}]}],
        }
    )
    return feed


PACIO_ODI = "http://example.org/Questionnaire/OswestryDisabilityIndexQuestionnaire"
PACIO_NDI = "http://example.org/fhir/Questionnaire/NeckDisabilityIndexQuestionnaire"
VENDOR_BACK_FORM = "https://ehr.lakeside.example/Questionnaire/back-form-7"
EQ5D_HYPHENATED = {
    "mo": "mobility",
    "sc": "self-care",
    "ua": "usual-activities",
    "pd": "pain-discomfort",
    "ad": "anxiety-depression",
    "eq_vas": "eq-vas",
}


def hospital_layouts(feed: Feed) -> None:
    """PROMs as hospitals send them, on time points the regular loop leaves free.

    Fixed answers (no random draws), so adding them leaves the rest of the feed unchanged.
    """
    odi, ndi = feed.instruments["odi"], feed.instruments["ndi"]

    def qr(n: int, suffix: str, instrument: str, answers: dict[str, Any], when: date) -> dict[str, Any]:
        return build_questionnaire_response(
            feed.instruments[instrument],
            answers,
            qr_id=f"qr-{n:04d}-{suffix}",
            patient_ref=f"Patient/{feed.stays[n][0]}",
            authored=local_dt(when, 10),
        )

    # PACIO ODI layout: each section answered with the statement itself, plus the form's own
    # total ("score", LOINC 97909-6) and category; sections 2, 1, 2, 1, 2, 2, 1, 2, 3, 2 = 36 %.
    _, _, discharge = feed.stays[11]
    levels = [2, 1, 2, 1, 2, 2, 1, 2, 3, 2]
    items: list[dict[str, Any]] = [
        {"linkId": f"odi-{i}", "text": item.text, "answer": [{"valueString": list(item.answer_map)[level]}]}
        for i, (item, level) in enumerate(zip(odi.definition.items, levels, strict=True), 1)
    ]
    items.append({"linkId": "score", "answer": [{"valueDecimal": 36}]})
    items.append({"linkId": "severity-category", "answer": [{"valueString": "Moderate disability"}]})
    pacio = qr(11, "90d-pacio", "odi", {}, discharge + timedelta(days=92))
    pacio.update(questionnaire=PACIO_ODI, item=items)
    feed.add(pacio)

    # NDI with LOINC answer codes (LA...) and no ordinalValue, and its own total (a percentage).
    _, surgery, _ = feed.stays[6]
    ndi_items: list[dict[str, Any]] = []
    raw = 0.0
    for i, item in enumerate(ndi.definition.items, 1):
        code, value = next(iter(item.answer_map.items()))
        raw += value
        coding = {"system": "http://loinc.org", "code": code}
        ndi_items.append({"linkId": f"ndi-{i}", "answer": [{"valueCoding": coding}]})
    ndi_items.append({"linkId": "total-score", "answer": [{"valueDecimal": raw * 2}]})
    loinc_ndi = qr(6, "1y-ndi-loinc", "ndi", {}, surgery + timedelta(days=370))
    loinc_ndi.update(questionnaire=PACIO_NDI, item=ndi_items)
    feed.add(loinc_ndi)

    # EQ-5D-5L from a hospital form: hyphenated linkIds, a questionnaire URL nobody configured.
    _, surgery, _ = feed.stays[12]
    eq = qr(
        12, "1y-eq-hyphen", "eq5d5l", {"mo": 2, "sc": 1, "ua": 3, "pd": 2, "ad": 1, "eq_vas": 75}, surgery
    )
    eq["authored"] = local_dt(surgery + timedelta(days=371), 10)
    eq["questionnaire"] = "https://ehr.lakeside.example/Questionnaire/eq-5d-5l"
    for item in eq["item"]:
        item["linkId"] = EQ5D_HYPHENATED[_item_id(feed, "eq5d5l", item["linkId"])]
    feed.add(eq)

    # A vendor ODI form numbered 1-10 with its total as 11: unknown until the site teaches it
    # (proms.instruments.odi.recognition.questionnaires in the config; see config.example.yaml).
    _, _, discharge = feed.stays[14]
    answers = {item.id: 2 for item in odi.definition.items}
    vendor = qr(14, "90d-vendor", "odi", answers, discharge + timedelta(days=92))
    vendor["questionnaire"] = VENDOR_BACK_FORM
    for i, item in enumerate(vendor["item"], 1):
        item["linkId"] = str(i)
        item.pop("text", None)
    vendor["item"].append({"linkId": "11", "answer": [{"valueDecimal": 40}]})
    feed.add(vendor)

    # Answered, but three sections left out: more than the one the ODI rules allow. Stored (the
    # time point is complete, so no reminder) with a review error saying what is missing.
    _, _, discharge = feed.stays[8]
    partial = {item.id: (None if item.id in ("odi4", "odi6", "odi8") else 1) for item in odi.definition.items}
    feed.add(qr(8, "90d-partial", "odi", partial, discharge + timedelta(days=92)))

    # The hospital's own total under "odi-score", agreeing with the computed score (20 %).
    _, _, discharge = feed.stays[17]
    total = qr(
        17, "90d-total", "odi", {item.id: 1 for item in odi.definition.items}, discharge + timedelta(days=92)
    )
    total["item"].append({"linkId": "odi-score", "answer": [{"valueDecimal": 20}]})
    feed.add(total)


def _item_id(feed: Feed, instrument: str, link_id: str) -> str:
    found = feed.instruments[instrument].item_for(link_id)
    assert found is not None, link_id
    return found[0].id


# What mappings/outcomes.py must make of examples/sample-outcomes (tests/submission check it):
# case id → outcome field → expected value.
LABELLED: dict[str, dict[str, Any]] = {
    "sample:proc-0004": {
        "comorbidities": {
            "diabetes": "E11.9",
            "obesity": "E66.01",
            "tobacco_use": "F17.210",
            "depression": "F32.9",
        },
        "complications": {"surgical_site_infection": 20},
        "readmission_days": 45,
        "readmission_30d": False,
        "readmission_90d": True,
        "reoperation_days": 200,
        "reoperation_30d": False,
        "reoperation_90d": False,
        "reoperation_365d": True,
        "reoperation_case": "sample:proc-0004-revision",
        "discharge_disposition": "home",
        "bmi": 32.4,
        "smoking_status": "current",
    },
    "sample:proc-0004-revision": {"reoperation_of": "sample:proc-0004"},
    "sample:proc-0007": {"complications": {"death": 60}},
}


def _updated(resource: dict[str, Any]) -> dict[str, Any]:
    """A later version of a resource the feed already sent (same id, new version)."""
    later = json.loads(json.dumps(resource))
    later["meta"] = {"versionId": "2", "lastUpdated": "2025-12-01T02:00:00Z"}
    return later


def build_outcomes(base: Feed) -> Feed:
    """Late records with hand-labelled outcomes about patients of ``base`` (see LABELLED).

    Fixed values only (no random draws), derived from the base feed's surgery dates.
    """
    feed = Feed(0, base.as_of)
    feed.instruments = base.instruments
    pid, surgery, discharge = base.stays[4]
    sent = {r["id"]: r for rtype in ("Patient", "Encounter") for r in base.out[rtype]}
    # The patient's phone and address arrive later: the submission must never carry them.
    patient = _updated(sent[pid])
    patient["telecom"].append({"system": "phone", "value": "+1-555-0100-4477"})
    patient["address"] = [{"line": ["742 Evergreen Terrace"], "city": "Springfield", "postalCode": "62704"}]
    feed.add(patient)
    stay = _updated(sent["enc-0004"])
    stay["hospitalization"] = {
        "dischargeDisposition": {
            "coding": [coding("http://terminology.hl7.org/CodeSystem/discharge-disposition", "home")]
        }
    }
    feed.add(stay)
    # Comorbidities: on the problem list before surgery, and coded on the surgical stay.
    for cid, code, recorded, eid in (
        ("cond-0004-dm", "E11.9", surgery - timedelta(days=30), None),
        ("cond-0004-obesity", "E66.01", surgery - timedelta(days=100), None),
        ("cond-0004-tobacco", "F17.210", surgery + timedelta(days=2), "enc-0004"),
        ("cond-0004-depression", "F32.9", surgery - timedelta(days=900), None),
    ):
        feed.condition(cid, pid, eid, code)
        feed.out["Condition"][-1]["recordedDate"] = recorded.isoformat()
    # Surgical site infection diagnosed in clinic on day 20.
    feed.add(
        {
            "resourceType": "Encounter",
            "id": "enc-0004-clinic",
            "status": "finished",
            "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB"),
            "subject": ref("Patient", pid),
            "period": {
                "start": local_dt(surgery + timedelta(days=20), 9),
                "end": local_dt(surgery + timedelta(days=20), 10),
            },
        }
    )
    feed.condition("cond-0004-ssi", pid, "enc-0004-clinic", "T81.41XA")
    feed.out["Condition"][-1]["onsetDateTime"] = local_dt(surgery + timedelta(days=20), 9)
    feed.out["Condition"][-1]["recordedDate"] = (surgery + timedelta(days=20)).isoformat()
    # Readmitted 45 days after discharge.
    feed.encounter(pid, "enc-0004-readmit", discharge + timedelta(days=45), 3)
    # Back to the OR at day 200: a revision, its own case, linked to the first.
    feed.encounter(pid, "enc-0004-reop", surgery + timedelta(days=200), 2)
    feed.procedure(
        "proc-0004-revision",
        pid,
        "enc-0004-reop",
        ["63047", "22830"],
        surgery + timedelta(days=200),
        text="Revision",
    )
    # BMI and smoking status a week before surgery.
    for oid, loinc, value in (
        ("obs-0004-bmi", "39156-5", {"valueQuantity": {"value": 32.4, "unit": "kg/m2"}}),
        ("obs-0004-smoking", "72166-2", {"valueCodeableConcept": {"coding": [coding(SCT, "449868002")]}}),
    ):
        feed.add(
            {
                "resourceType": "Observation",
                "id": oid,
                "status": "final",
                "code": {"coding": [coding("http://loinc.org", loinc)]},
                "subject": ref("Patient", pid),
                "effectiveDateTime": local_dt(surgery - timedelta(days=7), 10),
                **value,
            }
        )
    # Patient 7 died 60 days after surgery.
    pid7, surgery7, _ = base.stays[7]
    died = _updated(sent[pid7])
    died["deceasedDateTime"] = local_dt(surgery7 + timedelta(days=60), 14)
    feed.add(died)
    return feed


def write(feed: Feed, out: Path, *, bundles: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*"):
        old.unlink()
    for rtype, resources in sorted(feed.out.items()):
        # Patients and Encounters also arrive as a transaction Bundle, as some EHR exports do.
        if bundles and rtype in ("Patient", "Encounter"):
            head, tail = resources[:5], resources[5:]
            bundle = {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in head],
            }
            (out / f"{rtype}-bundle.json").write_text(json.dumps(bundle, indent=2) + "\n")
            resources = tail
        lines = [json.dumps(r, separators=(",", ":")) for r in resources]
        if bundles and rtype == "Condition":
            # A line broken in transfer: must become an error naming file and line, not a crash.
            lines.insert(3, '{"resourceType":"Condition","id":"cond-broken-1","code":{"coding":[')
        (out / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n")


def _as_of(text: str) -> date:
    """``--as-of``: YYYY-MM-DD, or ``today`` (in the sample feed's time zone)."""
    return datetime.now(TZ).date() if text == "today" else date.fromisoformat(text)


DEFAULT_OUT = Path(__file__).with_name("sample-feed")
DEFAULT_OUTCOMES = Path(__file__).with_name("sample-outcomes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--seed", type=int, default=20251101)
    parser.add_argument(
        "--as-of",
        type=_as_of,
        default=None,
        metavar="DATE",
        help="Date the feed as exported on DATE (YYYY-MM-DD), e.g. today for a demo.",
    )
    parser.add_argument(
        "--outcomes-out",
        type=Path,
        default=None,
        help="Where the labelled outcome records go (default: examples/sample-outcomes for the "
        "bundled feed, else OUT-outcomes beside --out, so a test or demo never rewrites the bundle).",
    )
    args = parser.parse_args()
    outcomes_out = args.outcomes_out
    if outcomes_out is None:
        bundled = args.out.resolve() == DEFAULT_OUT.resolve()
        outcomes_out = DEFAULT_OUTCOMES if bundled else args.out.with_name(args.out.name + "-outcomes")
    feed = build(args.patients, args.seed, args.as_of)
    write(feed, args.out)
    write(build_outcomes(feed), outcomes_out, bundles=False)
    print(f"wrote {args.out} and {outcomes_out}")


if __name__ == "__main__":
    main()
