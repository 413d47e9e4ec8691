"""FhirRestSource against the real test FHIR server (Medplum router, tests/fhir_server)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from adapters.auth import AuthConfig
from adapters.base import Checkpoint, Record, SourceContext
from adapters.fhir_rest import FhirRestConfig, FhirRestSource, PatientScope, SyncIncomplete
from adapters.http import HttpConfig
from tests.adapters.harness import Committed, run_once, run_until_done
from tests.adapters.spine_data import CPT, keys, knee_patient, spine_cohort
from tests.fhir_server.fixture import FhirTestServer

# The second page of a Procedure search with _count=3 (the server's opaque next link).
PAGE2 = r"^/Procedure\?_getpages=.*_getpagesoffset=3\b"
FAST = HttpConfig(timeout=(5, 10), retries=4, backoff_factor=0.01, backoff_max=0.1,
                  backoff_jitter=0.01)


def source(fhir: FhirTestServer, **kw: Any) -> FhirRestSource:
    cfg: dict[str, Any] = {"base_url": fhir.base_url, "page_size": 3, "http": FAST,
                           "overlap_seconds": 60}
    cfg.update(kw)
    return FhirRestSource("rest-test", FhirRestConfig(**cfg))


def test_full_sync_collects_everything_across_pages(fhir: FhirTestServer) -> None:
    data = spine_cohort(5, with_meta=True)
    fhir.seed(data, preserve_meta=True)

    done = run_until_done(source(fhir))

    assert Counter(done.resource_keys()) == Counter(keys(data))  # all, each exactly once
    assert not done.errors and done.runs == 1
    offsets = [r for r in fhir.requests() if r["url"].startswith("/Procedure?")]
    assert len(offsets) == 3  # 8 procedures / _count=3: next links were followed
    assert done.state["types"]["Procedure"]["watermark"] == max(
        r["meta"]["lastUpdated"] for r in data if r["resourceType"] == "Procedure")
    assert all("MRN" not in p and "Testperson" not in p for p in done.progress)


def test_incremental_yields_only_changes_and_deletions(fhir: FhirTestServer) -> None:
    data = spine_cohort(3, with_meta=True)
    fhir.seed(data, preserve_meta=True)
    src = source(fhir, detect_deletes=True, fetch_references=False)
    first = run_until_done(src)
    assert set(first.resource_keys()) == keys(data)

    new_proc = fhir.create({"resourceType": "Procedure", "status": "completed",
                            "code": {"coding": [{"system": CPT, "code": "63047"}]},
                            "subject": {"reference": "Patient/sp-2"}})
    cond = next(r for r in data if r["id"] == "cond-1")
    fhir.update({**cond, "clinicalStatus": {"coding": [{"code": "resolved"}]}, "meta": {}})
    fhir.delete("Procedure", "proc-3-1")

    second = run_until_done(src, Committed(state=first.state))

    # Changes, plus the overlap window's re-reads, which are byte-identical to what the
    # first run committed (staging's content hash drops them).
    before = first.versions()
    changed = {k for k, v in second.versions().items() if v - before.get(k, set())}
    assert changed == {"Condition/cond-1", f"Procedure/{new_proc['id']}"}
    assert len(second.resource_keys()) < len(data) // 2
    assert [(d.resource_type, d.resource_id) for d in second.deleted] == [
        ("Procedure", "proc-3-1")]
    # Watermarks moved forward, so a third run with no change yields nothing new past overlap.
    assert second.state["types"]["Condition"]["watermark"] > first.state["types"]["Condition"][
        "watermark"]


def test_referenced_patients_and_encounters_fetched_once(fhir: FhirTestServer) -> None:
    data = spine_cohort(3, with_meta=True)
    fhir.seed(data, preserve_meta=True)

    done = run_until_done(source(fhir, resource_types=("Procedure",)))

    counts = Counter(done.resource_keys())
    assert {k for k in counts if k.startswith(("Patient/", "Encounter/"))} == {
        "Patient/sp-1", "Patient/sp-2", "Patient/sp-3", "Encounter/enc-1", "Encounter/enc-2",
        "Encounter/enc-3"}
    assert max(counts.values()) == 1


def test_search_params_per_type(fhir: FhirTestServer) -> None:
    fhir.seed(spine_cohort(2, with_meta=True) + knee_patient(with_meta=True), preserve_meta=True)
    spine = ",".join(f"{CPT}|{c}" for c in ("22633", "63047", "22551"))
    done = run_until_done(source(fhir, resource_types=("Procedure",), fetch_references=False,
                                 search_params={"Procedure": f"code={spine}"}))
    assert sorted(done.resource_keys()) == ["Procedure/proc-1-0", "Procedure/proc-1-1",
                                   "Procedure/proc-2-0"]


@pytest.mark.parametrize("kind,times,retry_after", [("429", 2, 1), ("503", 3, None)])
def test_throttling_and_unavailable_are_retried(fhir: FhirTestServer, kind: str, times: int,
                                                retry_after: int | None) -> None:
    data = spine_cohort(3, with_meta=True)
    fhir.seed(data, preserve_meta=True)
    fhir.fault(PAGE2, kind, times=times, retry_after=retry_after)

    done = run_until_done(source(fhir))

    assert Counter(done.resource_keys()) == Counter(keys(data)) and done.runs == 1
    statuses = [r["status"] for r in fhir.requests() if "_getpagesoffset=3" in r["url"]
                and r["url"].startswith("/Procedure")]
    assert statuses == [int(kind)] * times + [200]


def test_connection_cut_mid_page_is_retried(fhir: FhirTestServer) -> None:
    data = spine_cohort(3, with_meta=True)
    fhir.seed(data, preserve_meta=True)
    fhir.fault(r"^/Condition\?", "cut", times=1, partial_bytes=200)

    done = run_until_done(source(fhir))

    assert Counter(done.resource_keys()) == Counter(keys(data)) and done.runs == 1


def test_persistent_cut_crashes_and_resume_loses_nothing(fhir: FhirTestServer) -> None:
    data = spine_cohort(4, with_meta=True)
    fhir.seed(data, preserve_meta=True)
    # More cuts than retries on the second Procedure page: the first run dies there.
    fhir.fault(PAGE2, "cut", times=FAST.retries + 1)

    done = run_until_done(source(fhir))

    assert len(done.crashes) == 1 and done.runs == 2
    assert set(done.resource_keys()) == keys(data)
    # Anything committed twice (the resumed run's overlap) is byte-identical: staging's
    # content hash makes it a no-op.
    assert all(len(v) == 1 for v in done.versions().values())


def test_malformed_page_stops_only_its_type_and_rerun_resumes(fhir: FhirTestServer) -> None:
    data = spine_cohort(4, with_meta=True)
    fhir.seed(data, preserve_meta=True)
    fhir.fault(PAGE2, "malformed", times=1)
    src = source(fhir)
    done = Committed()

    assert not run_once(src, done)  # the run ends as failed, after reading everything else

    [crash] = done.crashes
    assert isinstance(crash, SyncIncomplete) and crash.stopped == {"Procedure": "/Procedure page 2"}
    [error] = done.errors
    assert error.code == "malformed-page" and error.origin == "/Procedure page 2"
    # The types after Procedure were still synced, and committed before the error was raised.
    later = {k for k in keys(data) if k.startswith(("Condition/", "QuestionnaireResponse/"))}
    assert later and later <= set(done.resource_keys())
    procedures = sorted(r["meta"]["lastUpdated"] for r in data if r["resourceType"] == "Procedure")
    assert done.state["types"]["Procedure"]["watermark"] == procedures[2]  # last good page
    assert done.state["types"]["Condition"]["watermark"] == max(
        r["meta"]["lastUpdated"] for r in data if r["resourceType"] == "Condition")
    missing = {f"Procedure/{r['id']}" for r in data if r["resourceType"] == "Procedure"
               and r["meta"]["lastUpdated"] > procedures[2]}
    assert missing and not missing & set(done.resource_keys())

    assert run_once(src, done)  # the fault is gone: the next run completes the type
    assert set(done.resource_keys()) == keys(data)
    assert all(len(v) == 1 for v in done.versions().values())


def test_malformed_history_page_keeps_the_type_watermark(fhir: FhirTestServer) -> None:
    data = spine_cohort(2, with_meta=True)
    fhir.seed(data, preserve_meta=True)
    src = source(fhir, resource_types=("Procedure",), fetch_references=False, detect_deletes=True)
    first = run_until_done(src)
    fhir.delete("Procedure", "proc-1-0")
    fhir.fault(r"^/Procedure/_history", "malformed", times=1)

    second = Committed(state=first.state)
    assert not run_once(src, second)
    assert not second.deleted
    # Deletions since the old watermark were not read: the type goes back there.
    assert second.state["types"]["Procedure"] == first.state["types"]["Procedure"]
    assert run_once(src, second)
    assert [(d.resource_type, d.resource_id) for d in second.deleted] == [("Procedure", "proc-1-0")]


def test_token_expiry_mid_sync_refreshes(fhir: FhirTestServer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    data = spine_cohort(3, with_meta=True)
    fhir.seed(data, preserve_meta=True)
    fhir.register_client("registry", client_secret="s3cret")
    fhir.set_auth(required=True, token_lifetime=3600)
    monkeypatch.setenv("TEST_CLIENT_SECRET", "s3cret")
    fhir.fault(PAGE2, "expire_token", times=1)
    auth = AuthConfig(method="client_credentials", client_id="registry",
                      client_secret_env="TEST_CLIENT_SECRET", token_url=fhir.token_url)

    done = run_until_done(source(fhir, auth=auth))

    assert Counter(done.resource_keys()) == Counter(keys(data)) and done.runs == 1
    log = fhir.requests()
    assert [r["status"] for r in log if r["url"] == "/auth/token"] == [200, 200]
    assert 401 in [r["status"] for r in log]


def test_patient_scoped_from_procedure_search(fhir: FhirTestServer) -> None:
    data = spine_cohort(3, with_meta=True)
    fhir.seed(data + knee_patient(with_meta=True), preserve_meta=True)
    spine = ",".join(f"{CPT}|{c}" for c in ("22633", "63047", "22551"))
    scope = PatientScope(cohort_type="Procedure", cohort_params=f"code={spine}")
    src = source(fhir, patient_scoped=scope, fetch_references=False)

    first = run_until_done(src)

    assert set(first.resource_keys()) == keys(data)  # the knee patient is not in the cohort
    assert first.state["patients"]["cohort"] == ["sp-1", "sp-2", "sp-3"]
    assert "run" not in first.state["patients"]

    fhir.update({**next(r for r in data if r["id"] == "qr-2"), "meta": {},
                 "status": "amended"})
    second = run_until_done(src, Committed(state=first.state))
    assert second.resource_keys() == ["QuestionnaireResponse/qr-2"]


def test_patient_scoped_from_group_resumes_after_crash(fhir: FhirTestServer) -> None:
    data = spine_cohort(3, with_meta=True)
    group = {"resourceType": "Group", "id": "spine", "type": "person", "actual": True,
             "member": [{"entity": {"reference": f"Patient/sp-{n}"}} for n in (1, 3)]}
    fhir.seed([*data, group], preserve_meta=True)
    src = source(fhir, patient_scoped=PatientScope(group_id="spine"), fetch_references=False)
    done = Committed()

    assert not run_once(src, done, stop_after_checkpoints=2)  # killed after patient sp-1
    assert done.state["patients"]["run"]["after"] == "sp-1"
    run_until_done(src, done)

    expected = {k for k in keys(data) if k.endswith(("-1", "-1-0", "-1-1", "-3", "-3-0",
                                                     "-3-1"))}
    assert Counter(done.resource_keys()) == Counter(expected)


def test_ctx_full_ignores_watermarks_and_resource_types_filter(fhir: FhirTestServer) -> None:
    data = spine_cohort(2, with_meta=True)
    fhir.seed(data, preserve_meta=True)
    src = source(fhir, fetch_references=False)
    first = run_until_done(src)
    again = run_until_done(src, Committed(state=first.state),
                           ctx=SourceContext(full=True, resource_types=("Condition",)))
    assert sorted(again.resource_keys()) == ["Condition/cond-1", "Condition/cond-2"]


@pytest.mark.parametrize("paging", ["snapshot", "offset"])
def test_update_while_paging_loses_nothing(fhir: FhirTestServer, paging: str) -> None:
    """A resource changed mid-sync (here: entered-in-error) arrives as an ordinary update."""
    fhir.set_config(paging=paging)
    data = spine_cohort(5, with_meta=True)
    fhir.seed(data, preserve_meta=True)
    src = source(fhir, resource_types=("Procedure",), fetch_references=False)
    first = Committed()
    changed: dict[str, Any] = {}
    items = []
    for item in src.read(SourceContext()):
        items.append(item)
        if isinstance(item, Checkpoint) and not changed:
            page1 = [i.resource for i in items if isinstance(i, Record)]
            changed = fhir.update({**page1[0], "status": "entered-in-error", "meta": {}})
        if isinstance(item, Checkpoint):
            first.state = item.state
    first.records = [i for i in items if isinstance(i, Record)]
    second = run_until_done(src, Committed(state=first.state))

    seen = {(r.resource["id"], r.resource["meta"]["versionId"])
            for r in first.records + second.records}
    procedures = {r["id"] for r in data if r["resourceType"] == "Procedure"}
    assert {i for i, _ in seen} == procedures
    assert (changed["id"], changed["meta"]["versionId"]) in seen


def test_unsorted_mode_moves_watermark_only_at_type_end(fhir: FhirTestServer) -> None:
    data = spine_cohort(5, with_meta=True)
    fhir.seed(data, preserve_meta=True)
    src = source(fhir, resource_types=("Procedure",), fetch_references=False,
                 sort_by_last_updated=False)
    marks = [i.state["types"]["Procedure"].get("watermark")
             for i in src.read(SourceContext()) if isinstance(i, Checkpoint)]
    assert "_sort" not in fhir.requests()[0]["url"]
    # 3 pages, the type's end, and the complete read's inventory (same state).
    assert marks[:-2] == [None] * (len(marks) - 2) and len(marks) == 5 and marks[-1] == marks[-2]
    assert marks[-1] == max(r["meta"]["lastUpdated"] for r in data
                            if r["resourceType"] == "Procedure")


def _list(list_id: str, members: list[str], deleted: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"resourceType": "List", "id": list_id, "status": "current", "mode": "working",
            "entry": [{"item": {"reference": f"Patient/{m}"}, **({"deleted": True} if m in deleted
                                                                  else {})} for m in members]}


def test_patient_scoped_from_a_list(fhir: FhirTestServer) -> None:
    data = spine_cohort(3, with_meta=True)
    # sp-2 was taken off the list (entry.deleted): not in the cohort.
    fhir.seed([*data, *knee_patient(with_meta=True),
               _list("spine-list", ["sp-3", "sp-1", "sp-2"], deleted=("sp-2",))],
              preserve_meta=True)
    src = source(fhir, patient_scoped=PatientScope(list_id="spine-list"), fetch_references=False)

    done = run_until_done(src)

    assert done.state["patients"]["cohort"] == ["sp-1", "sp-3"]
    expected = {k for k in keys(data) if k.endswith(("-1", "-1-0", "-1-1", "-3", "-3-0", "-3-1"))}
    assert Counter(done.resource_keys()) == Counter(expected)
    assert fhir.requests()[0]["url"] == "/List/spine-list"


def test_list_and_group_cohorts_are_exclusive() -> None:
    with pytest.raises(ValueError, match="group_id or list_id"):
        PatientScope(group_id="g", list_id="l")


def test_malformed_page_stops_only_that_patient(fhir: FhirTestServer) -> None:
    data = spine_cohort(3, with_meta=True)
    fhir.seed([*data, _list("spine-list", ["sp-1", "sp-2", "sp-3"])], preserve_meta=True)
    fhir.fault(r"^/Condition\?.*patient=Patient%2Fsp-2", "malformed", times=1)
    src = source(fhir, patient_scoped=PatientScope(list_id="spine-list"), fetch_references=False)
    done = Committed()

    assert not run_once(src, done)

    assert isinstance(done.crashes[0], SyncIncomplete)
    assert set(done.crashes[0].stopped) == {"Patient/sp-2"}
    assert {k for k in keys(data) if k.endswith(("-3", "-3-0", "-3-1"))} <= set(done.resource_keys())
    assert done.state["patients"]["run"]["cohort"] == ["sp-2"]  # only sp-2 is left to read
    assert done.state["patients"]["cohort"] == ["sp-1", "sp-3"]

    assert run_once(src, done)
    assert set(done.resource_keys()) == keys(data)
    assert all(len(v) == 1 for v in done.versions().values())
    assert "run" not in done.state["patients"] and done.state["patients"]["cohort"] == [
        "sp-1", "sp-2", "sp-3"]


def test_a_stopped_patient_noted_before_a_crash_still_ends_the_run_incomplete(
        fhir: FhirTestServer) -> None:
    data = spine_cohort(3, with_meta=True)
    fhir.seed([*data, _list("spine-list", ["sp-1", "sp-2", "sp-3"])], preserve_meta=True)
    fhir.fault(r"^/Condition\?.*patient=Patient%2Fsp-2", "malformed", times=1)
    src = source(fhir, patient_scoped=PatientScope(list_id="spine-list"), fetch_references=False)
    done = Committed()

    # Killed right after patient sp-2's checkpoint (cohort, sp-1, sp-2).
    assert not run_once(src, done, stop_after_checkpoints=3)
    assert done.state["patients"]["run"]["failed"] == ["sp-2"]

    assert not run_once(src, done)  # finishes sp-3, then says sp-2 is still owed
    assert isinstance(done.crashes[-1], SyncIncomplete)
    assert set(done.crashes[-1].stopped) == {"Patient/sp-2"}
    assert run_once(src, done)
    assert set(done.resource_keys()) == keys(data)
