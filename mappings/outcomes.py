"""Outcomes and risk factors per case: comorbidities, complications, readmissions,
reoperations, length of stay, discharge disposition, death, BMI and smoking status.

What counts (windows, code lists, answer codes) is data: ``mappings/outcomes.yaml`` and the
``comorbidities`` and ``complications`` code maps. The facts come from the staged FHIR records
themselves rather than the registry tables, because most of them (non-spine Conditions,
Observations, the class and disposition of a stay) are out of the mapping views' scope.

Outcomes are recomputed for the patients whose data changed after every run that stores data
(and for every case at submission time), so a readmission recorded next month changes last
quarter's case in the next package.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from sqlalchemy import select
from sqlalchemy.engine import Connection

from mappings.codemaps import CodeMap, display_icd10cm
from mappings.convert import ConversionError, SiteContext, local_date, reference_id
from registry_store.staging import STAGING
from registry_store.tables import CASES, PATIENTS

BUNDLED = Path(__file__).with_name("outcomes.yaml")
LOINC = "http://loinc.org"
# Staged records that are not (or no longer) facts about the patient.
_NOT_FACTS = ("deleted", "excluded", "invalid")
# Every code map row must cite the code set release it was checked against.
REQUIRED_SOURCE = "ICD-10-CM FY2026"


class OutcomeDefinitionError(Exception):
    """``outcomes.yaml`` is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class OutcomeDefinitions:
    version: str
    comorbidity_map: str
    complication_map: str
    death_window_days: int
    readmission_windows: tuple[int, ...]
    inpatient_classes: frozenset[str]
    planned_priorities: frozenset[str]
    planned_map: str
    reoperation_windows: tuple[int, ...]
    link_within_days: int
    bmi_loinc: str
    bmi_max_age_days: int
    smoking_loinc: str
    smoking_max_age_days: int
    smoking_values: Mapping[str, str]
    disposition_values: Mapping[str, str]
    path: Path = BUNDLED


def _get(data: Any, path: str, where: Path) -> Any:
    node = data
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise OutcomeDefinitionError(f"{where}: missing key {path}")
        node = node[key]
    return node


def _days(data: Any, path: str, where: Path) -> int:
    value = _get(data, path, where)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise OutcomeDefinitionError(f"{where}: {path} must be a positive whole number of days")
    return value


def _day_list(data: Any, path: str, where: Path) -> tuple[int, ...]:
    value = _get(data, path, where)
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and v > 0 for v in value):
        raise OutcomeDefinitionError(f"{where}: {path} must be a list of positive whole numbers of days")
    return tuple(sorted(value))


def _codes(data: Any, path: str, where: Path) -> frozenset[str]:
    value = _get(data, path, where)
    if not isinstance(value, list):
        raise OutcomeDefinitionError(f"{where}: {path} must be a list of codes")
    return frozenset(str(v) for v in value)


def _value_map(data: Any, path: str, where: Path) -> dict[str, str]:
    value = _get(data, path, where)
    if not isinstance(value, dict):
        raise OutcomeDefinitionError(f"{where}: {path} must map source codes to registry values")
    return {str(k): str(v) for k, v in value.items()}


def load_definitions(directory: Path | None = None) -> OutcomeDefinitions:
    """The site's ``outcomes.yaml`` (in the mappings directory) if it has one, else the bundled."""
    path = directory / "outcomes.yaml" if directory and (directory / "outcomes.yaml").exists() else BUNDLED
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise OutcomeDefinitionError(f"{path}: cannot read outcome definitions: {exc}") from None
    return OutcomeDefinitions(
        version=str(_get(data, "version", path)),
        comorbidity_map=str(_get(data, "comorbidities.codemap", path)),
        complication_map=str(_get(data, "complications.codemap", path)),
        death_window_days=_days(data, "complications.death_window_days", path),
        readmission_windows=_day_list(data, "readmission.windows_days", path),
        inpatient_classes=_codes(data, "readmission.inpatient_classes", path),
        planned_priorities=_codes(data, "readmission.planned_priorities", path),
        planned_map=str(_get(data, "readmission.planned_codemap", path)),
        reoperation_windows=_day_list(data, "reoperation.windows_days", path),
        link_within_days=_days(data, "reoperation.link_within_days", path),
        bmi_loinc=str(_get(data, "observations.bmi.loinc", path)),
        bmi_max_age_days=_days(data, "observations.bmi.max_age_days", path),
        smoking_loinc=str(_get(data, "observations.smoking_status.loinc", path)),
        smoking_max_age_days=_days(data, "observations.smoking_status.max_age_days", path),
        smoking_values=_value_map(data, "observations.smoking_status.values", path),
        disposition_values=_value_map(data, "discharge_disposition.values", path),
        path=path,
    )


def check_definitions(defs: OutcomeDefinitions, codemaps: Mapping[str, CodeMap]) -> list[str]:
    """Problems ``mappings check`` reports: missing code maps, rows without a cited source,
    complication rows without a window."""
    problems: list[str] = []
    for name, needs in (
        (defs.comorbidity_map, "comorbidity"),
        (defs.complication_map, "complication"),
        (defs.planned_map, "reason"),
    ):
        cmap = codemaps.get(name)
        if cmap is None:
            problems.append(f"{defs.path}: code map {name!r} is not defined")
            continue
        if needs not in cmap.value_columns:
            problems.append(f"{cmap.table}: the {name} code map needs a {needs!r} column")
        for entry in cmap.entries():
            where = f"{cmap.table}:{entry.line}"
            if REQUIRED_SOURCE not in str(entry.values.get("source") or ""):
                problems.append(f"{where}: source must cite {REQUIRED_SOURCE}")
            if needs == "complication" and not entry.values.get("window_days"):
                problems.append(f"{where}: window_days must be a positive number of days")
    return problems


@dataclass
class _Stay:
    start: date | None
    end: date | None
    klass: str | None
    priority: str | None
    disposition: str | None
    reasons: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class PatientFacts:
    """What the staged records say about one patient, as outcome computation needs it."""

    # (condition id, [(system, code)], date or None, encounter id or None)
    conditions: list[tuple[str, list[tuple[str, str]], date | None, str | None]] = field(default_factory=list)
    stays: dict[str, _Stay] = field(default_factory=dict)
    # (loinc code, date, resource)
    observations: list[tuple[str, date, dict[str, Any]]] = field(default_factory=list)


def _date(value: Any, site: SiteContext) -> date | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return local_date(value, site)
    except ConversionError:
        return None  # partial or malformed: not usable for a window


def _ref(value: Any) -> str | None:
    ref = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(ref, str) or not ref:
        return None
    try:
        return reference_id(ref, None)  # type: ignore[arg-type]
    except ConversionError:
        return None


def _codings(concept: Any) -> list[tuple[str, str]]:
    if not isinstance(concept, dict):
        return []
    return [
        (str(c.get("system") or ""), str(c["code"]))
        for c in concept.get("coding") or []
        if isinstance(c, dict) and c.get("code")
    ]


def _first_code(concept: Any) -> str | None:
    codes = _codings(concept)
    return codes[0][1] if codes else None


_FACT_TYPES = ("Condition", "Encounter", "Observation")
# Every reference value of a raw record, as written (no escapes: see ``_may_concern``).
_REFERENCE = re.compile(rb'"reference"\s*:\s*"([^"\\]*)"')


def _may_concern(raw: bytes, ids: Collection[str]) -> bool:
    """Whether a raw record can be about one of the patients ``ids``, without parsing it: its
    subject reference (whose last segment is the patient id) is one of its reference values.
    A record with an escape in it is parsed to be sure."""
    if b"\\" in raw:
        return True
    return any(
        ref.rstrip(b"/").rsplit(b"/", 1)[-1].decode("utf-8", "replace") in ids
        or b"/_history/" in ref
        or ref != ref.strip()
        for ref in _REFERENCE.findall(raw)
    )


def _staged(
    conn: Connection, source: str, subjects: Collection[str] | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    rows = conn.execute(
        select(STAGING.c.resource_type, STAGING.c.raw).where(
            STAGING.c.source == source,
            STAGING.c.resource_type.in_(_FACT_TYPES),
            STAGING.c.status.not_in(_NOT_FACTS),
            STAGING.c.content_type == "application/fhir+json",
        )
        # Streamed (a server-side cursor on PostgreSQL): the raw bytes of every fact record
        # of a backfill would otherwise sit in the client at once.
        .execution_options(yield_per=2000)
    )
    for rtype, raw in rows:
        if subjects is not None and not _may_concern(raw, subjects):
            continue
        try:
            resource = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(resource, dict):
            yield rtype, resource


def _merged(conn: Connection, source: str) -> dict[str, str]:
    """Patient id → the id of the patient it was merged into."""
    return dict(
        conn.execute(
            select(PATIENTS.c.id, PATIENTS.c.merged_into).where(
                PATIENTS.c.source == source, PATIENTS.c.merged_into.is_not(None)
            )
        ).all()
    )


def gather_facts(
    conn: Connection, source: str, site: SiteContext, patients: Collection[str] | None = None
) -> dict[str, PatientFacts]:
    """Conditions, stays and observations of every patient of ``source`` (or of these
    ``patients``), from staging.

    Records of a merged patient count for the patient it was merged into.
    """
    merged = _merged(conn, source)
    subjects: set[str] | None = None
    if patients is not None:
        subjects = set(patients) | {old for old, new in merged.items() if new in patients}
    facts: dict[str, PatientFacts] = defaultdict(PatientFacts)
    for rtype, res in _staged(conn, source, subjects):
        patient = _ref(res.get("subject"))
        if patient is None or (subjects is not None and patient not in subjects):
            continue
        patient = merged.get(patient, patient)
        if rtype == "Condition":
            when = _date(res.get("onsetDateTime"), site) or _date(res.get("recordedDate"), site)
            facts[patient].conditions.append(
                (str(res.get("id")), _codings(res.get("code")), when, _ref(res.get("encounter")))
            )
        elif rtype == "Encounter":
            period = res.get("period") or {}
            klass = res.get("class")
            hosp = res.get("hospitalization") or {}
            facts[patient].stays[str(res.get("id"))] = _Stay(
                start=_date(period.get("start"), site),
                end=_date(period.get("end"), site),
                klass=str(klass.get("code")) if isinstance(klass, dict) and klass.get("code") else None,
                priority=_first_code(res.get("priority")),
                disposition=_first_code(hosp.get("dischargeDisposition")) if isinstance(hosp, dict) else None,
                reasons=[c for concept in res.get("reasonCode") or [] for c in _codings(concept)],
            )
        elif res.get("status") not in ("entered-in-error", "cancelled"):
            when = _date(res.get("effectiveDateTime"), site) or _date(
                (res.get("effectivePeriod") or {}).get("start"), site
            )
            if when is None:
                continue
            for system, code in _codings(res.get("code")):
                if system == LOINC:
                    facts[patient].observations.append((code, when, res))
    return facts


def patients_changed_since(conn: Connection, since: datetime) -> dict[str, set[str]]:
    """Source → the patients whose outcomes may have changed since ``since`` (a UTC time): the
    patients of cases updated since (case assembly stamps every case it rebuilds, and it
    rebuilds the patients whose registry rows changed) and the subjects of the staged records
    outcomes read that changed since (out-of-scope Observations make no registry rows)."""
    out: dict[str, set[str]] = defaultdict(set)
    for source, patient in conn.execute(
        select(CASES.c.source, CASES.c.patient_id).where(CASES.c.updated_at >= since).distinct()
    ):
        out[source].add(patient)
    # A source whose every patient with a case is touched already (a first import, a remap of
    # everything) gains nothing from its staged records' subjects: they are not parsed.
    with_cases: dict[str, set[str]] = defaultdict(set)
    for source, patient in conn.execute(select(CASES.c.source, CASES.c.patient_id).distinct()):
        with_cases[source].add(patient)
    covered = sorted(source for source, patients in with_cases.items() if patients <= out.get(source, set()))
    merged: dict[str, dict[str, str]] = {}
    for source, raw in conn.execute(
        select(STAGING.c.source, STAGING.c.raw)
        .where(
            STAGING.c.updated_at >= since,
            STAGING.c.resource_type.in_(_FACT_TYPES),
            STAGING.c.content_type == "application/fhir+json",
            STAGING.c.source.not_in(covered),
        )
        .execution_options(yield_per=2000)  # streamed, as in _staged
    ):
        try:
            resource = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        patient = _ref(resource.get("subject")) if isinstance(resource, dict) else None
        if patient is not None:
            if source not in merged:
                merged[source] = _merged(conn, source)
            out[source].add(merged[source].get(patient, patient))
    return dict(out)


def _classify(cmap: CodeMap, codings: Iterable[tuple[str, str]]) -> tuple[str, dict[str, Any]] | None:
    for system, code in codings:
        short = cmap.system_name(system) if system else None
        if short is None:
            continue
        entry = cmap.lookup(short, code)
        if entry is not None:
            return display_icd10cm(code), entry.values
    return None


def _latest(
    observations: Sequence[tuple[str, date, dict[str, Any]]], loinc: str, surgery: date, max_age: int
) -> dict[str, Any] | None:
    best: tuple[date, dict[str, Any]] | None = None
    for code, when, res in observations:
        if code == loinc and 0 <= (surgery - when).days <= max_age and (best is None or when >= best[0]):
            best = (when, res)
    return best[1] if best else None


def case_outcomes(
    case: Any,
    patient_cases: Sequence[Any],
    facts: PatientFacts,
    deceased_date: date | None,
    defs: OutcomeDefinitions,
    codemaps: Mapping[str, CodeMap],
) -> dict[str, Any]:
    """The outcome fields of one case (a ``cases`` row) as a JSON-able dict."""
    surgery: date = case.surgery_date
    discharge: date = (
        case.discharge_date if case.discharge_date and case.discharge_date >= surgery else surgery
    )
    comorbid = codemaps[defs.comorbidity_map]
    complic = codemaps[defs.complication_map]
    planned_map = codemaps[defs.planned_map]

    comorbidities: dict[str, str] = {}
    complications: dict[str, dict[str, Any]] = {}
    for _cid, codings, when, enc in facts.conditions:
        hit = _classify(comorbid, codings)
        on_stay = enc is not None and enc == case.encounter_id
        if hit is not None and (when is None or when <= surgery or on_stay):
            comorbidities.setdefault(str(hit[1]["comorbidity"]), hit[0])
        hit = _classify(complic, codings)
        if hit is None:
            continue
        window = int(hit[1]["window_days"])
        days = (when - surgery).days if when is not None else None
        counts = (days is not None and 0 < days <= window) or (on_stay and (days is None or days >= 0))
        name = str(hit[1]["complication"])
        if counts and (name not in complications or (days or 0) < (complications[name]["days"] or 0)):
            complications[name] = {"complication": name, "code": hit[0], "days": days}
    if deceased_date is not None and 0 <= (deceased_date - surgery).days <= defs.death_window_days:
        complications["death"] = {
            "complication": "death",
            "code": None,
            "days": (deceased_date - surgery).days,
        }

    # Readmission: an inpatient stay that starts on or after the index discharge.
    readmit_days: int | None = None
    planned = False
    for enc_id, stay in facts.stays.items():
        if enc_id == case.encounter_id or stay.start is None or stay.start < discharge:
            continue
        if stay.klass not in defs.inpatient_classes:
            continue
        days = (stay.start - discharge).days
        if stay.priority in defs.planned_priorities or _classify(planned_map, stay.reasons) is not None:
            planned = planned or days <= max(defs.readmission_windows)
            continue
        readmit_days = days if readmit_days is None else min(readmit_days, days)

    # Reoperation: a later spine surgery (another case) of the same patient.
    later = sorted(
        (c for c in patient_cases if c.id != case.id and c.surgery_date > surgery),
        key=lambda c: c.surgery_date,
    )
    earlier = sorted(
        (c for c in patient_cases if c.id != case.id and c.surgery_date < surgery),
        key=lambda c: c.surgery_date,
    )
    reop_days = (later[0].surgery_date - surgery).days if later else None
    link = (
        earlier[-1]
        if earlier and (surgery - earlier[-1].surgery_date).days <= defs.link_within_days
        else None
    )

    index_stay = facts.stays.get(case.encounter_id or "")
    disposition = None
    if index_stay is not None and index_stay.disposition:
        disposition = defs.disposition_values.get(index_stay.disposition, "other")
    bmi_obs = _latest(facts.observations, defs.bmi_loinc, surgery, defs.bmi_max_age_days)
    bmi = None
    if bmi_obs is not None:
        value = (bmi_obs.get("valueQuantity") or {}).get("value")
        bmi = (
            round(float(value), 1) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
    smoking_obs = _latest(facts.observations, defs.smoking_loinc, surgery, defs.smoking_max_age_days)
    smoking = None
    if smoking_obs is not None:
        code = _first_code(smoking_obs.get("valueCodeableConcept"))
        smoking = defs.smoking_values.get(code or "", "unknown")

    out: dict[str, Any] = {
        "definitions_version": defs.version,
        "comorbidities": [{"comorbidity": k, "code": v} for k, v in sorted(comorbidities.items())],
        "complications": [complications[k] for k in sorted(complications)],
        "readmission_days": readmit_days,
        "planned_readmission": planned,
        "reoperation_days": reop_days,
        "reoperation_case": later[0].id
        if later and reop_days is not None and reop_days <= max(defs.reoperation_windows)
        else None,
        "reoperation_of": link.id if link is not None else None,
        "length_of_stay_days": (case.discharge_date - case.admission_date).days
        if case.discharge_date and case.admission_date and case.discharge_date >= case.admission_date
        else None,
        "discharge_disposition": disposition,
        "death_date": deceased_date.isoformat() if deceased_date else None,
        "bmi": bmi,
        "smoking_status": smoking,
    }
    for window in defs.readmission_windows:
        out[f"readmission_{window}d"] = readmit_days is not None and readmit_days <= window
    for window in defs.reoperation_windows:
        out[f"reoperation_{window}d"] = reop_days is not None and reop_days <= window
    return out


# What ``case_outcomes`` reads of a case (not its codes and diagnoses: JSON decoding costs).
_CASE_COLUMNS = (
    CASES.c.id,
    CASES.c.patient_id,
    CASES.c.encounter_id,
    CASES.c.surgery_date,
    CASES.c.admission_date,
    CASES.c.discharge_date,
)


def compute_outcomes(
    conn: Connection,
    source: str,
    site: SiteContext,
    defs: OutcomeDefinitions,
    codemaps: Mapping[str, CodeMap],
    patients: Collection[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Outcomes of every active case of ``source`` (or of these ``patients``' active cases),
    by case id. A case's outcomes depend only on its own patient (their records, cases and
    date of death), so those of a few patients are computed without the others'."""
    if patients is not None:
        with_cases = conn.execute(select(CASES.c.patient_id).where(CASES.c.source == source).distinct())
        if set(with_cases.scalars()) <= set(patients):
            patients = None  # every patient of the source (a first import): read it all at once
    facts = gather_facts(conn, source, site, patients)
    case_query = select(*_CASE_COLUMNS).where(CASES.c.source == source, CASES.c.status == "active")
    death_query = select(PATIENTS.c.id, PATIENTS.c.deceased_date).where(
        PATIENTS.c.source == source, PATIENTS.c.deceased_date.is_not(None)
    )
    if patients is None:
        cases = list(conn.execute(case_query).all())
        deceased: dict[str, date] = dict(conn.execute(death_query).all())
    else:
        cases, deceased = [], {}
        wanted = sorted(set(patients))
        for start in range(0, len(wanted), 400):
            chunk = wanted[start : start + 400]
            cases += conn.execute(case_query.where(CASES.c.patient_id.in_(chunk))).all()
            deceased.update(conn.execute(death_query.where(PATIENTS.c.id.in_(chunk))).all())
    by_patient: dict[str, list[Any]] = defaultdict(list)
    for case in cases:
        by_patient[case.patient_id].append(case)
    return {
        case.id: case_outcomes(
            case,
            by_patient[case.patient_id],
            facts.get(case.patient_id) or PatientFacts(),
            deceased.get(case.patient_id),
            defs,
            codemaps,
        )
        for case in cases
    }
