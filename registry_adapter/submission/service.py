"""A submission run: recompute outcomes, work out the delta against the ledger, hold back
incomplete cases as review errors, build the package, deliver it, then record it.

The delta: a case goes when it was never sent, or when anything about it (outcomes included)
changed since it was last sent; a case sent before that is no longer active (deleted at the
source, entered in error, withdrawn by staff) goes as a withdrawal. Running the same period
again after a successful run finds nothing new and sends nothing: idempotent.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select
from sqlalchemy.engine import Connection

from mappings import codemaps as codemaps_module
from mappings.cases import case_ids_of
from mappings.codemaps import CodeMap
from mappings.outcomes import OutcomeDefinitions, compute_outcomes, load_definitions, patients_changed_since
from registry_adapter.app import App
from registry_adapter.submission.dictionary import FieldSpec, as_csv, load_dictionary, value_problem
from registry_adapter.submission.package import CaseRecord, Package, Withdrawal, build_package, keyed_id
from registry_adapter.submission.settings import SubmissionSettings
from registry_store.cases import most_cases_changed_since
from registry_store.db import keyset_chunks
from registry_store.errors import Issue
from registry_store.submissions import (
    LedgerEntry,
    drop_inactive_outcomes,
    ledger_state,
    record_submission,
    replace_readiness_errors,
    resolve_feedback_errors,
    save_case_outcomes,
)
from registry_store.tables import CASE_OUTCOMES as OUTCOMES
from registry_store.tables import CASES, PATIENTS
from registry_store.tables import PROCEDURES as PROCS
from registry_store.tables import PROM_RESPONSES as PROMS
from registry_store.timeutil import utcnow
from registry_types import metrics

# Delivery (paramiko, for SFTP) is imported when a package is delivered: the after-store
# hook and measures, which import this module after every run, deliver nothing.
if TYPE_CHECKING:
    from registry_adapter.submission.delivery import Destination

log = structlog.get_logger(__name__)

SUBMISSION_LOCK = "submission"
_PERIOD = re.compile(r"(\d{4})Q([1-4])")
_RADIX = {"cpt": "cpt", "icd10pcs": "icd10pcs", "snomed": "snomed"}
_SEX = {"female": "female", "male": "male", "other": "other", "unknown": "unknown"}


class SubmissionError(Exception):
    """A submission cannot run as asked (bad period, another run holds the lock)."""


class SubmissionBusy(SubmissionError):
    """Another process is submitting (it holds the submission lock)."""


@dataclass(frozen=True)
class Selection:
    """Which cases a run considers: surgery on or before ``end`` (and on or after ``start``)."""

    label: str
    end: date
    start: date | None = None


def quarter_bounds(period: str) -> tuple[date, date]:
    match = _PERIOD.fullmatch(period.strip().upper())
    if match is None:
        raise SubmissionError(f"period {period!r} is not a quarter like 2025Q3")
    year, q = int(match.group(1)), int(match.group(2))
    start = date(year, 3 * q - 2, 1)
    end = date(year + (q == 4), (3 * q) % 12 + 1, 1) - timedelta(days=1)
    return start, end


def last_complete_quarter(today: date) -> str:
    q = (today.month - 1) // 3 + 1
    year, q = (today.year, q - 1) if q > 1 else (today.year - 1, 4)
    return f"{year}Q{q}"


def selection_for(period: str | None, since: date | None, today: date) -> Selection:
    """A quarter is cumulative: every case operated on up to its end that is new or changed
    (late data about an earlier quarter's case goes in the next package). ``--since`` takes the
    cases operated on from that date up to today."""
    if period and since:
        raise SubmissionError("give --period or --since, not both")
    if since is not None:
        return Selection(f"since-{since.isoformat()}", today, since)
    label = (period or last_complete_quarter(today)).strip().upper()
    return Selection(label, quarter_bounds(label)[1])


@dataclass
class Plan:
    selection: Selection
    records: list[CaseRecord] = field(default_factory=list)
    withdrawals: list[Withdrawal] = field(default_factory=list)
    unchanged: int = 0
    # case id → reasons ("missing discharge_date")
    held_back: dict[str, list[str]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        actions = Counter(r.action for r in self.records)
        return {
            "new": actions["new"],
            "changed": actions["changed"],
            "unchanged": self.unchanged,
            "withdrawn": len(self.withdrawals),
            "held_back": len(self.held_back),
        }

    def held_back_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r for reasons in self.held_back.values() for r in reasons).items()))


def refresh_outcomes(
    conn: Connection,
    app: App,
    *,
    store: bool = True,
    patients: Mapping[str, Collection[str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Recompute the outcomes of every active case (all sources), or of the active cases of
    ``patients`` (source → patient ids); ``store``: keep them in ``case_outcomes`` (the review
    UI computes without writing: its pages only read)."""
    defs = load_definitions(app.settings.mappings.directory)
    out: dict[str, dict[str, Any]] = {}
    sources = conn.execute(select(CASES.c.source).distinct()).scalars().all()
    for source in sources:
        wanted = None if patients is None else patients.get(source)
        if patients is not None and not wanted:
            continue
        computed = compute_outcomes(conn, source, app.site, defs, app.codemaps, wanted)
        if store:
            scope = None if wanted is None else case_ids_of(conn, source, wanted)
            save_case_outcomes(conn, source, computed, scope)
        out.update(computed)
    return out


def _definition_files(app: App, defs: OutcomeDefinitions) -> list[Path]:
    """The files outcomes are defined by: outcomes.yaml and every code map file."""
    folders = [codemaps_module.BUNDLED, app.settings.mappings.codemaps]
    return [defs.path] + [f for d in folders if d is not None and d.is_dir() for f in d.iterdir()]


def current_outcomes(conn: Connection, app: App, *, store: bool = True) -> dict[str, dict[str, Any]]:
    """The outcomes of every active case as they are now: those stored in ``case_outcomes``
    (the after-store hooks and the nightly job keep them), recomputed only where they can be
    out of date: cases without stored outcomes, patients whose cases or staged facts changed
    since the oldest stored computation, or everything when the definitions changed (another
    ``definitions_version``, or outcomes.yaml or a code map file edited since). ``store``:
    save what was recomputed (a review UI page only reads)."""
    defs = load_definitions(app.settings.mappings.directory)
    stored: dict[str, dict[str, Any]] = {}
    oldest: datetime | None = None
    owners: dict[str, tuple[str, str]] = {}
    for case_id, source, patient, outcomes, at in conn.execute(
        select(CASES.c.id, CASES.c.source, CASES.c.patient_id, OUTCOMES.c.outcomes, OUTCOMES.c.computed_at)
        .select_from(CASES.outerjoin(OUTCOMES, OUTCOMES.c.case_id == CASES.c.id))
        .where(CASES.c.status == "active")
    ):
        owners[case_id] = (source, patient)
        if outcomes is not None and outcomes.get("definitions_version") == defs.version:
            stored[case_id] = outcomes
            when = at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite hands back naive UTC
            oldest = when if oldest is None or when < oldest else oldest
    if oldest is None or any(
        datetime.fromtimestamp(f.stat().st_mtime, UTC) >= oldest for f in _definition_files(app, defs)
    ):
        return refresh_outcomes(conn, app, store=store)
    stale: dict[str, set[str]] = defaultdict(set)
    for source, patients in patients_changed_since(conn, oldest).items():
        stale[source] |= patients
    for case_id, (source, patient) in owners.items():
        if case_id not in stored:
            stale[source].add(patient)
    if not stale:
        return stored
    fresh = refresh_outcomes(conn, app, store=store, patients=stale)
    redone = {cid for cid, (source, patient) in owners.items() if patient in stale.get(source, ())}
    return {cid: o for cid, o in stored.items() if cid not in redone} | fresh


def store_outcomes(
    conn: Connection,
    app: App,
    patients: Mapping[str, Collection[str]] | None = None,
    *,
    per_chunk: int = 5_000,
) -> int:
    """``refresh_outcomes`` (stored) without keeping the outcomes: ``per_chunk`` patients at a
    time, so the memory it needs does not grow with the store (it runs after every import and
    re-process, when a backfill has touched every patient); returns how many it stored."""
    defs = load_definitions(app.settings.mappings.directory)
    stored = 0
    for source in conn.execute(select(CASES.c.source).distinct()).scalars().all():
        wanted = None if patients is None else patients.get(source)
        if patients is not None and not wanted:
            continue
        if wanted is None:
            first = _patient_chunks(conn, source, per_chunk + 1)
            if len(next(first, [])) <= per_chunk:  # fits in one chunk: one pass, as ever
                stored += _store_chunk(conn, app, defs, source, None, None)
                continue
        chunks = (
            _patient_chunks(conn, source, per_chunk)
            if wanted is None
            else (sorted(wanted)[i : i + per_chunk] for i in range(0, len(wanted), per_chunk))
        )
        for chunk in chunks:
            scope = case_ids_of(conn, source, chunk)
            stored += _store_chunk(conn, app, defs, source, chunk, scope)
        if wanted is None:
            drop_inactive_outcomes(conn, source)
    return stored


def _store_chunk(
    conn: Connection,
    app: App,
    defs: OutcomeDefinitions,
    source: str,
    patients: Collection[str] | None,
    scope: Collection[str] | None,
) -> int:
    computed = compute_outcomes(conn, source, app.site, defs, app.codemaps, patients)
    save_case_outcomes(conn, source, computed, scope)
    return len(computed)


def _patient_chunks(conn: Connection, source: str, per_chunk: int) -> Iterator[list[str]]:
    """The ids of ``source``'s patients with cases, ``per_chunk`` at a time (keyset)."""
    query = select(CASES.c.patient_id).where(CASES.c.source == source).distinct()
    return keyset_chunks(conn, query, CASES.c.patient_id, per_chunk)


def after_store(app: App, reason: str, since: datetime | None = None) -> None:
    """After-store plug-in: recompute case outcomes once a sync, an import or a re-process
    stored data, so late data shows on case pages at once; with ``since`` (when the run
    started) only those of the patients whose data changed since. Never fails the run that
    stored the data (submission recomputes anyway); only the error's type is logged."""
    try:
        with app.engine.begin() as conn:
            everything = since is None or most_cases_changed_since(conn, since)
            touched = None if everything or since is None else patients_changed_since(conn, since)
            cases = store_outcomes(conn, app, patients=touched)
    except Exception as exc:
        log.error("outcomes.refresh_failed", reason=reason, error=type(exc).__name__)
        return
    log.info("outcomes.refreshed", reason=reason, cases=cases)


def _settings(app: App) -> SubmissionSettings:
    return app.settings.section(SubmissionSettings)


def _withdrawal_reason(reason: str | None) -> str:
    reason = reason or ""
    if reason == "deleted at source":
        return "deleted_at_source"
    if reason.startswith("procedure entered-in-error"):
        return "entered_in_error"
    if reason.startswith("withdrawn by "):
        return "withdrawn_by_site"
    return "no_longer_qualifies"


def _case_rows(
    case: Any,
    patient: Any,
    outcome: Mapping[str, Any],
    proms: list[Any],
    key: bytes,
    birth_date: str,
    dmap: CodeMap,
    case_keys: Mapping[str, str],
) -> dict[str, list[dict[str, str]]]:
    ck = case_keys[case.id]
    born = patient.birth_date if patient is not None else None
    reop_of = outcome.get("reoperation_of")
    cases_row = {
        "case_key": ck,
        "patient_pseudonym": patient.pseudonym if patient is not None else None,
        "birth_date": born if born and birth_date == "full" else None,
        "birth_year": born.year if born else None,
        "sex": _SEX.get((patient.sex or "").lower(), "unknown")
        if patient is not None and patient.sex
        else None,
        "module": case.module,
        "procedure_category": case.category,
        "surgery_date": case.surgery_date,
        "admission_date": case.admission_date,
        "discharge_date": case.discharge_date,
        "length_of_stay_days": outcome.get("length_of_stay_days"),
        "discharge_disposition": outcome.get("discharge_disposition"),
        "revision": bool(case.revision),
        "instrumented": bool(case.instrumented),
        "reoperation_of": case_keys.get(reop_of) if reop_of else None,
        "bmi": outcome.get("bmi"),
        "smoking_status": outcome.get("smoking_status"),
        "death_date": outcome.get("death_date"),
        "record_action": "new",
    }
    procedures = []
    for token in case.codes:
        system, _, code = token.rpartition("|")
        procedures.append({"case_key": ck, "code_system": _RADIX.get(system, "other"), "code": code})
    diagnoses = []
    for code in case.diagnosis_codes:
        entry = dmap.lookup("icd10cm", code)
        if entry is not None:
            diagnoses.append({"case_key": ck, "icd10cm": code, "category": entry.values["category"]})
    comorbidities = [
        {"case_key": ck, "comorbidity": c["comorbidity"], "icd10cm": c["code"]}
        for c in outcome.get("comorbidities", [])
    ]
    outcomes: list[dict[str, Any]] = []
    happened = {c["complication"]: c for c in outcome.get("complications", [])}
    for name in _OUTCOMES_COMPLICATIONS:
        hit = happened.get(name)
        outcomes.append(
            {
                "case_key": ck,
                "outcome": name,
                "occurred": hit is not None,
                "days": hit["days"] if hit else None,
            }
        )
    for name, days_key in (
        ("readmission_30d", "readmission_days"),
        ("readmission_90d", "readmission_days"),
        ("reoperation_30d", "reoperation_days"),
        ("reoperation_90d", "reoperation_days"),
        ("reoperation_365d", "reoperation_days"),
    ):
        occurred = bool(outcome.get(name))
        outcomes.append(
            {
                "case_key": ck,
                "outcome": name,
                "occurred": occurred,
                "days": outcome.get(days_key) if occurred else None,
            }
        )
    outcomes.append(
        {
            "case_key": ck,
            "outcome": "planned_readmission",
            "occurred": bool(outcome.get("planned_readmission")),
            "days": None,
        }
    )
    responses, scores, items = [], [], []
    for r in sorted(proms, key=lambda p: (p.completion_date, p.id)):
        rk = keyed_id(key, "response", f"{r.source}\x1f{r.id}")
        responses.append(
            {
                "case_key": ck,
                "response_key": rk,
                "instrument": r.instrument,
                "timepoint": r.timepoint,
                "completion_date": r.completion_date,
            }
        )
        for name, value in sorted((r.scores or {}).items()):
            if _numeric(value):
                scores.append({"response_key": rk, "score": name, "value": value})
        # Numeric answers only: a free-text answer may say anything about the patient.
        for item, value in sorted((r.answers or {}).items()):
            if _numeric(value):
                items.append({"response_key": rk, "item": item, "answer": value})
    text = {
        "cases.csv": [cases_row],
        "procedures.csv": procedures,
        "diagnoses.csv": diagnoses,
        "comorbidities.csv": comorbidities,
        "outcomes.csv": outcomes,
        "prom_responses.csv": responses,
        "prom_scores.csv": scores,
        "prom_items.csv": items,
    }
    return {f: [{k: as_csv(v) for k, v in row.items()} for row in rows] for f, rows in text.items()}


_OUTCOMES_COMPLICATIONS = (
    "surgical_site_infection",
    "venous_thromboembolism",
    "dural_tear",
    "hematoma",
    "neurological_deficit",
    "urinary_tract_infection",
    "pneumonia",
    "myocardial_infarction",
    "wound_dehiscence",
    "sepsis",
    "death",
)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _readiness(
    record: CaseRecord, specs: Mapping[str, Mapping[str, FieldSpec]], codemaps: Mapping[str, CodeMap]
) -> list[str]:
    """Why a case cannot be sent: a required field missing or a value the dictionary refuses
    (``specs``: file → field name → spec)."""
    reasons = []
    for file, rows in record.rows.items():
        for row in rows:
            for name, value in row.items():
                why = value_problem(specs[file][name], value, codemaps)
                if why == "required, empty":
                    reasons.append(f"missing {name}")
                elif why:
                    reasons.append(f"invalid {name}")
    return sorted(set(reasons))


def plan_submission(conn: Connection, app: App, selection: Selection) -> Plan:
    """What a run would send, and what it holds back; writes outcomes and readiness errors."""
    settings = _settings(app)
    dictionary = load_dictionary()
    specs = {file: {s.name: s for s in fields} for file, fields in dictionary.files.items()}
    key = app.site.pseudonym_key
    outcomes = refresh_outcomes(conn, app)
    ledger: dict[str, LedgerEntry] = ledger_state(conn)
    all_cases = conn.execute(select(CASES)).all()
    case_keys = {c.id: keyed_id(key, "case", c.id) for c in all_cases}
    cases = [
        c
        for c in all_cases
        if c.status == "active"
        and c.surgery_date <= selection.end
        and (selection.start is None or c.surgery_date >= selection.start)
    ]
    patients = {(p.source, p.id): p for p in conn.execute(select(PATIENTS)).all()}
    proms: dict[str, list[Any]] = defaultdict(list)
    for r in conn.execute(select(PROMS).where(PROMS.c.case_id.is_not(None))):
        proms[r.case_id].append(r)
    anchors = {
        (r.source, r.id): r.staging_id
        for r in conn.execute(select(PROCS.c.source, PROCS.c.id, PROCS.c.staging_id))
    }
    dmap = app.codemaps["spine-diagnoses"]
    plan = Plan(selection)
    flagged: dict[str, dict[int, tuple[str, str, list[Issue]]]] = defaultdict(dict)
    considered: dict[str, list[int]] = defaultdict(list)
    for case in sorted(cases, key=lambda row: row.id):
        record = CaseRecord(case.id, case_keys[case.id])
        record.rows = _case_rows(
            case,
            patients.get((case.source, case.patient_id)),
            outcomes.get(case.id, {}),
            proms.get(case.id, []),
            key,
            settings.birth_date,
            dmap,
            case_keys,
        )
        staging_id = anchors.get((case.source, case.procedure_id))
        record.anchor_staging_id = staging_id
        if staging_id is not None:
            considered[case.source].append(staging_id)
        reasons = _readiness(record, specs, app.codemaps)
        if reasons:
            plan.held_back[case.id] = reasons
            if staging_id is not None:
                issues = [
                    Issue(
                        "submission.not_ready",
                        f"case {case.id} is held back from registry submission: {reason}",
                        field=reason.split(" ", 1)[1],
                        value=reason,
                        rule="data_dictionary",
                    )
                    for reason in reasons
                ]
                flagged[case.source][staging_id] = ("Procedure", case.procedure_id, issues)
            continue
        last = ledger.get(case.id)
        if last is not None and last.action != "withdrawn" and last.content_hash == record.content_hash():
            plan.unchanged += 1
            continue
        record.action = "changed" if last is not None and last.action != "withdrawn" else "new"
        record.rows["cases.csv"][0]["record_action"] = record.action
        plan.records.append(record)
    by_id = {c.id: c for c in all_cases}
    for case_id, last in sorted(ledger.items()):
        sent = by_id.get(case_id)
        if last.action == "withdrawn" or (sent is not None and sent.status == "active"):
            continue
        reason = _withdrawal_reason(sent.status_reason if sent else None)
        plan.withdrawals.append(Withdrawal(case_id, last.case_key, reason))
    for source in set(considered) | set(flagged):
        replace_readiness_errors(conn, source, flagged[source], considered[source])
    return plan


def destination_for(app: App, output: Path | None) -> Destination:
    from registry_adapter.submission.delivery import FolderDestination, SftpDestination

    settings = _settings(app)
    if output is not None:
        return FolderDestination(output)
    if settings.destination == "sftp":
        assert settings.sftp is not None  # the settings validator requires it
        return SftpDestination(settings.sftp)
    return FolderDestination(settings.folder)


@dataclass
class Result:
    period: str
    dry_run: bool
    counts: dict[str, int]
    held_back_by_reason: dict[str, int]
    package: str | None = None
    sha256: str | None = None
    destination: str | None = None
    submission_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_submission(
    app: App,
    *,
    period: str | None = None,
    since: date | None = None,
    dry_run: bool = False,
    output: Path | None = None,
    today: date | None = None,
    destination: Destination | None = None,
) -> Result:
    """One submission run, under the submission lock (two runs never interleave)."""
    from registry_store.leases import job_lock

    today = today or datetime.now(app.site.tz).date()
    selection = selection_for(period, since, today)
    with job_lock(app.engine, SUBMISSION_LOCK, app.settings.lease_ttl_seconds()) as lock:
        if lock is None:
            raise SubmissionBusy("another submission is running (it holds the submission lock)")
        with app.engine.begin() as conn:
            plan = plan_submission(conn, app, selection)
        result = Result(selection.label, dry_run, plan.counts(), plan.held_back_by_reason())
        if dry_run or not (plan.records or plan.withdrawals):
            return result
        package = build_package(
            load_dictionary(),
            site_id=app.settings.site.id,
            period=selection.label,
            records=plan.records,
            withdrawals=plan.withdrawals,
            generated_at=utcnow().replace(microsecond=0),
        )
        target = destination or destination_for(app, output)
        try:
            target.deliver(package)  # raises DeliveryError: nothing recorded
        except Exception:
            metrics.observe_submission("failed")
            raise
        metrics.observe_submission("delivered")
        where = target.describe()
        result.submission_id = _record(app, selection, package, plan, where)
        result.package, result.sha256, result.destination = package.name, package.sha256, where
        log.info("submission.sent", period=selection.label, package=package.name, **plan.counts())
        return result


def _record(app: App, selection: Selection, package: Package, plan: Plan, where: str) -> int:
    items = [
        {"case_id": r.case_id, "case_key": r.case_key, "action": r.action, "content_hash": r.content_hash()}
        for r in plan.records
    ] + [
        {"case_id": w.case_id, "case_key": w.case_key, "action": "withdrawn", "content_hash": ""}
        for w in plan.withdrawals
    ]
    with app.engine.begin() as conn:
        # The registry's earlier findings on a case are answered by sending it corrected.
        resolve_feedback_errors(
            conn, [r.anchor_staging_id for r in plan.records if r.action == "changed" and r.anchor_staging_id]
        )
        return record_submission(
            conn,
            period=selection.label,
            site_id=app.settings.site.id,
            destination=where,
            package_name=package.name,
            package_sha256=package.sha256,
            dictionary_version=package.manifest["data_dictionary_version"],
            counts=plan.counts(),
            items=items,
        )
