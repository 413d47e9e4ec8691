"""FhirBulkSource against the test server's Bulk Data $export (tests/fhir_server)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from adapters.base import Checkpoint, Deleted, Record, RecordError, SourceContext
from adapters.fhir_bulk import FhirBulkConfig, FhirBulkSource
from adapters.http import HttpConfig
from tests.adapters.bulk_proxy import BulkProxy
from tests.adapters.harness import Committed, run_once, run_until_done
from tests.adapters.spine_data import CPT, keys, spine_cohort
from tests.fhir_server.fixture import FhirTestServer

FAST = HttpConfig(timeout=(5, 10), retries=3, backoff_factor=0.01, backoff_max=0.1,
                  backoff_jitter=0.01)


def bulk(fhir: FhirTestServer, tmp_path: Path, **kw: Any) -> FhirBulkSource:
    cfg: dict[str, Any] = {"base_url": fhir.base_url, "http": FAST, "work_dir": str(tmp_path),
                           "checkpoint_every": 5}
    cfg.update(kw)
    src = FhirBulkSource("bulk-test", FhirBulkConfig(**cfg))
    src.sleep = lambda s: None  # Retry-After is asserted separately; do not wait in tests
    return src


SINCE = "2026-01-01T00:00:00.000Z"


@pytest.fixture
def proxy(fhir: FhirTestServer) -> Iterator[BulkProxy]:
    """The test server behind tests/adapters/bulk_proxy.py (deleted files, unframed cuts)."""
    with BulkProxy(fhir.base_url) as running:
        yield running


def kickoffs(fhir: FhirTestServer) -> list[str]:
    return [r["url"] for r in fhir.requests() if "$export" in r["url"]]


def test_full_export(fhir: FhirTestServer, tmp_path: Path) -> None:
    data = spine_cohort(4)
    fhir.seed(data)
    fhir.set_bulk(polls_before_ready=2, retry_after=7, max_resources_per_file=3)
    src = bulk(fhir, tmp_path)
    waits: list[float] = []
    src.sleep = waits.append

    done = run_until_done(src)

    assert Counter(done.resource_keys()) == Counter(keys(data))
    assert waits == [7.0, 7.0]  # Retry-After honoured on each 202
    assert any("% complete" in p for p in done.progress)  # X-Progress reported
    assert set(done.state) == {"since"} and done.state["since"].endswith("Z")
    assert all(r.raw is not None and r.origin.count(":line ") == 1 for r in done.records)
    log = fhir.requests()
    assert sum("$export" in r["url"] for r in log) == 1
    assert any(r["method"] == "DELETE" and "/bulk-status/" in r["url"] for r in log)
    assert list(tmp_path.iterdir()) == []  # downloads removed once yielded


def test_since_export_only_changes(fhir: FhirTestServer, tmp_path: Path) -> None:
    fhir.seed(spine_cohort(2))
    fhir.set_bulk(polls_before_ready=0)
    src = bulk(fhir, tmp_path, resource_types=("Procedure", "Condition"))
    first = run_until_done(src)
    assert len(first.records) == 5

    created = fhir.create({"resourceType": "Procedure", "status": "completed",
                           "code": {"coding": [{"system": CPT, "code": "22551"}]},
                           "subject": {"reference": "Patient/sp-1"}})
    second = run_until_done(src, Committed(state=first.state))

    assert second.resource_keys() == [f"Procedure/{created['id']}"]
    kickoffs = [r["url"] for r in fhir.requests() if "$export" in r["url"]]
    assert "_since=" not in kickoffs[0] and f"_since={first.state['since']}" in kickoffs[1]
    assert "_type=Procedure,Condition" in kickoffs[1]


def test_interrupted_download_resumes_with_range(fhir: FhirTestServer, tmp_path: Path) -> None:
    data = spine_cohort(4)
    fhir.seed(data)
    fhir.set_bulk(polls_before_ready=0)
    fhir.fault(r"^/bulk-files/.*/Procedure-1", "cut", times=1, partial_bytes=300)

    done = run_until_done(bulk(fhir, tmp_path))

    assert Counter(done.resource_keys()) == Counter(keys(data)) and done.runs == 1
    gets = [r for r in fhir.requests() if "/Procedure-1" in r["url"]]
    # The first answer never finished (socket destroyed after 300 bytes); the retry asked
    # only for the rest.
    assert [(g["range"], g["fault"], g["status"]) for g in gets] == [
        (None, "cut", None), ("bytes=300-", None, 206)]


def test_crash_during_download_continues_same_export(fhir: FhirTestServer,
                                                     tmp_path: Path) -> None:
    data = spine_cohort(4)
    fhir.seed(data)
    fhir.set_bulk(polls_before_ready=1)
    # Every attempt is cut at a later byte, more times than the retries allow: the run dies
    # with part of the file on disk and its offset committed.
    fhir.fault(r"^/bulk-files/.*/Condition-1", "cut", times=FAST.retries + 1, partial_bytes=150)

    done = run_until_done(bulk(fhir, tmp_path))

    assert len(done.crashes) == 1 and done.runs == 2
    assert Counter(done.resource_keys()) == Counter(keys(data))
    log = fhir.requests()
    assert sum("$export" in r["url"] for r in log) == 1  # the same export was continued
    ranges = [r["range"] for r in log if "/Condition-1" in r["url"]]
    assert ranges[0] is None and ranges[-1] is not None and ranges[-1].startswith("bytes=")


def test_kill_after_kickoff_resumes_polling(fhir: FhirTestServer, tmp_path: Path) -> None:
    fhir.seed(spine_cohort(2))
    fhir.set_bulk(polls_before_ready=3)
    src = bulk(fhir, tmp_path)
    done = Committed()

    assert not run_once(src, done, stop_after_checkpoints=2)  # accepted + one poll
    status_url = done.state["export"]["status_url"]
    run_until_done(src, done)

    assert set(done.resource_keys()) == keys(spine_cohort(2))
    assert sum("$export" in r["url"] for r in fhir.requests()) == 1
    assert status_url.split("/")[-1] in str([r["url"] for r in fhir.requests()][-1])


def test_crash_while_yielding_skips_committed_lines(fhir: FhirTestServer,
                                                    tmp_path: Path) -> None:
    data = spine_cohort(4)
    fhir.seed(data)
    fhir.set_bulk(polls_before_ready=0)
    src = bulk(fhir, tmp_path, checkpoint_every=2)
    done = Committed()
    assert not run_once(src, done, stop_after_checkpoints=6)
    assert 0 < len(done.records) < len(data)

    run_until_done(src, done)

    assert Counter(done.resource_keys()) == Counter(keys(data))  # nothing twice, nothing lost


def test_export_failure_is_recorded_and_the_next_run_finishes(fhir: FhirTestServer,
                                                              tmp_path: Path) -> None:
    data = spine_cohort(1)
    fhir.seed(data)
    fhir.set_bulk(polls_before_ready=1, fail_with="export worker ran out of disk")
    src = bulk(fhir, tmp_path)
    done = Committed(state={"since": SINCE})

    assert run_once(src, done)

    [err] = done.errors
    assert err.code == "export-failed" and "out of disk" in err.message and "500" in err.message
    assert done.state == {"since": SINCE}  # next run starts afresh
    assert not done.records

    fhir.set_bulk(fail_with=None)  # the server recovers
    assert run_once(src, done)

    assert Counter(done.resource_keys()) == Counter(keys(data))  # every record, once
    assert set(done.state) == {"since"} and done.state["since"] > SINCE
    assert [f"_since={SINCE}" in k for k in kickoffs(fhir)] == [True, True]


def test_error_file_becomes_record_errors(fhir: FhirTestServer, tmp_path: Path) -> None:
    fhir.seed(spine_cohort(1))
    fhir.set_bulk(polls_before_ready=0, error_diagnostics=["Observation: search timed out"])

    done = run_until_done(bulk(fhir, tmp_path), Committed(state={"since": SINCE}))

    assert len(done.records) == 6
    [err] = done.errors
    assert err.code == "export-error" and "search timed out" in err.message
    assert err.resource_type == "OperationOutcome" and err.raw
    # Resources the server failed to export were not received: the window stays open.
    assert done.state == {"since": SINCE}


def test_warning_in_error_file_does_not_hold_the_window(fhir: FhirTestServer, tmp_path: Path) -> None:
    fhir.seed(spine_cohort(1))
    fhir.set_bulk(polls_before_ready=0,
                  error_diagnostics=[{"text": "Observation: 2 entries truncated", "severity": "warning"}])

    done = run_until_done(bulk(fhir, tmp_path), Committed(state={"since": SINCE}))

    assert len(done.records) == 6
    [err] = done.errors
    assert err.code == "export-warning" and "truncated" in err.message
    assert done.state["since"] > SINCE


def test_group_export_with_type_filter(fhir: FhirTestServer, tmp_path: Path) -> None:
    data = spine_cohort(3)
    group = {"resourceType": "Group", "id": "spine", "type": "person", "actual": True,
             "member": [{"entity": {"reference": "Patient/sp-1"}},
                        {"entity": {"reference": "Patient/sp-2"}}]}
    fhir.seed([*data, group])
    fhir.set_bulk(polls_before_ready=0)
    src = bulk(fhir, tmp_path, level="group", group_id="spine",
               resource_types=("Patient", "Procedure"),
               type_filters=(f"Procedure?code={CPT}|22551,{CPT}|63047",
                             f"Procedure?code={CPT}|99999"))

    done = run_until_done(src)

    assert sorted(done.resource_keys()) == ["Patient/sp-1", "Patient/sp-2", "Procedure/proc-1-1",
                                            "Procedure/proc-2-0"]
    [kickoff] = [r["url"] for r in fhir.requests() if "$export" in r["url"]]
    assert kickoff.count("_typeFilter=") == 2


def test_malformed_ndjson_line_keeps_since_so_nothing_is_lost(fhir: FhirTestServer,
                                                              tmp_path: Path) -> None:
    data = spine_cohort(2)
    fhir.seed(data)
    fhir.set_bulk(polls_before_ready=0)
    fhir.fault(r"^/bulk-files/.*/Procedure-1", "malformed", times=1)
    src = bulk(fhir, tmp_path)
    done = Committed(state={"since": SINCE})

    assert run_once(src, done)

    assert done.errors and {e.code for e in done.errors} == {"malformed-json"}
    assert all(e.origin.startswith("Procedure-file") and ":line " in e.origin and e.raw
               for e in done.errors)
    assert len(set(done.resource_keys())) < len(data)  # the cut part is not invented...
    assert done.state == {"since": SINCE}  # ...and _since did not move past it

    assert run_once(src, done)

    assert set(done.resource_keys()) == keys(data)  # nothing lost after the second run
    assert all(len(v) == 1 for v in done.versions().values())  # re-sent, but unchanged
    assert [f"_since={SINCE}" in k for k in kickoffs(fhir)] == [True, True]
    assert set(done.state) == {"since"} and done.state["since"] > SINCE


def test_body_ending_mid_line_is_resumed_with_range(fhir: FhirTestServer, proxy: BulkProxy,
                                                    tmp_path: Path) -> None:
    data = spine_cohort(4)
    fhir.seed(data)
    fhir.set_bulk(polls_before_ready=0)
    # 200 without Content-Length, closed after 300 bytes: nothing in the framing shows it.
    proxy.cut_without_length(r"^/bulk-files/.*/Procedure-1", partial_bytes=300)

    done = run_until_done(bulk(fhir, tmp_path, base_url=proxy.base_url))

    assert Counter(done.resource_keys()) == Counter(keys(data)) and done.runs == 1
    assert not done.errors and set(done.state) == {"since"}
    gets = [(r["range"], r["fault"], r["status"]) for r in proxy.log
            if "/Procedure-1" in r["url"]]
    assert gets == [(None, "cut_without_length", 200), ("bytes=300-", None, 206)]


def test_file_cut_at_a_line_boundary_is_caught_by_the_manifest_count(
        fhir: FhirTestServer, proxy: BulkProxy, tmp_path: Path) -> None:
    data = spine_cohort(2)
    fhir.seed(data)
    fhir.set_bulk(polls_before_ready=0)
    proxy.cut_without_length(r"^/bulk-files/.*/Procedure-1", lines=1)
    src = bulk(fhir, tmp_path, base_url=proxy.base_url)
    done = Committed(state={"since": SINCE})

    assert run_once(src, done)

    [err] = done.errors
    assert err.code == "bulk-file-short" and "1 lines where the manifest announced 3" \
        in err.message
    assert done.state == {"since": SINCE}
    assert run_once(src, done)
    assert set(done.resource_keys()) == keys(data) and done.state["since"] > SINCE


def test_expired_output_file_starts_a_new_export(fhir: FhirTestServer,
                                                 tmp_path: Path) -> None:
    data = spine_cohort(4)
    fhir.seed(data)
    fhir.set_bulk(polls_before_ready=0)
    # The first run dies with part of Procedure-1 on disk (cut more often than retried)...
    fhir.fault(r"^/bulk-files/.*/Procedure-1", "cut", times=FAST.retries + 1, partial_bytes=150)
    src = bulk(fhir, tmp_path)
    done = Committed(state={"since": SINCE})
    assert not run_once(src, done) and len(list(tmp_path.iterdir())) == 1
    # ...and the server cleans the export up before the adapter comes back for the rest.
    requests.delete(done.state["export"]["status_url"], timeout=10).raise_for_status()

    assert run_once(src, done)

    [err] = done.errors
    assert err.code == "export-expired" and "404" in err.message
    assert err.origin.endswith("/Procedure-1.ndjson")
    assert set(done.resource_keys()) == keys(data)
    assert all(len(v) == 1 for v in done.versions().values())
    assert [f"_since={SINCE}" in k for k in kickoffs(fhir)] == [True, True]
    assert set(done.state) == {"since"} and done.state["since"] > SINCE
    assert list(tmp_path.iterdir()) == []  # the dead export's partial download is gone


def test_output_expiring_twice_leaves_the_new_export_to_the_next_run(
        fhir: FhirTestServer, tmp_path: Path) -> None:
    data = spine_cohort(1)
    fhir.seed(data)
    fhir.set_bulk(polls_before_ready=0)
    fhir.fault(r"^/bulk-files/", "status", status=410, times=2)
    src = bulk(fhir, tmp_path)
    done = Committed(state={"since": SINCE})

    assert run_once(src, done)

    assert [e.code for e in done.errors] == ["export-expired", "export-expired"]
    assert done.state == {"since": SINCE} and not done.records  # no dead export kept
    assert run_once(src, done)
    assert Counter(done.resource_keys()) == Counter(keys(data))
    assert [f"_since={SINCE}" in k for k in kickoffs(fhir)] == [True, True, True]


def test_deleted_files_become_deletions(fhir: FhirTestServer, proxy: BulkProxy,
                                        tmp_path: Path) -> None:
    data = spine_cohort(2)
    fhir.seed(data)
    fhir.set_bulk(polls_before_ready=0)
    src = bulk(fhir, tmp_path, base_url=proxy.base_url)
    first = run_until_done(src)
    assert not first.deleted and set(first.resource_keys()) == keys(data)

    for rtype, rid in (("Procedure", "proc-1-0"), ("Procedure", "proc-1-1"),
                       ("Condition", "cond-2")):
        fhir.delete(rtype, rid)
    [changed] = [r for r in data if r["id"] == "qr-1"]
    fhir.update({**changed, "status": "amended"})
    second = run_until_done(src, Committed(state=first.state))

    assert sorted((d.resource_type, d.resource_id) for d in second.deleted) == [
        ("Condition", "cond-2"), ("Procedure", "proc-1-0"), ("Procedure", "proc-1-1")]
    assert all(d.origin.startswith("deleted-file") and " entry " in d.origin
               for d in second.deleted)
    assert second.resource_keys() == ["QuestionnaireResponse/qr-1"] and not second.errors
    # Only a full export lists what the server holds (Inventory); an incremental one cannot.
    assert {i.resource_type for i in first.inventories} >= {"Procedure", "Condition"}
    assert not second.inventories
    assert second.state["since"] > first.state["since"]
    fetched = [r for r in proxy.log if r["url"].startswith("/bulk-deleted/")]
    assert [r["status"] for r in fetched] == [200, 200]  # one file per type


def test_bad_deleted_entries_are_errors() -> None:
    src = FhirBulkSource("bulk-test", FhirBulkConfig(base_url="http://127.0.0.1:9"))
    line = (b'{"resourceType":"Bundle","type":"transaction","entry":['
            b'{"request":{"method":"DELETE","url":"http://h/fhir/Procedure/p-1/_history/3"}},'
            b'{"request":{"method":"PUT","url":"Procedure/p-2"}}]}')

    items = src.items(line, "deleted-file1:line 1", "deleted", "Bundle")

    assert items[0] == Deleted("Procedure", "p-1", "deleted-file1:line 1 entry 0")
    assert isinstance(items[1], RecordError) and items[1].code == "bad-deleted-entry"
    [not_bundle] = src.items(b'{"resourceType":"Procedure"}', "o", "deleted", "Bundle")
    assert isinstance(not_bundle, RecordError) and not_bundle.code == "bad-deleted-bundle"


def test_patient_level_export(fhir: FhirTestServer, tmp_path: Path) -> None:
    data = spine_cohort(2)
    org = {"resourceType": "Organization", "id": "hospital", "name": "Synthetic Hospital"}
    fhir.seed([*data, org])
    fhir.set_bulk(polls_before_ready=1)

    done = run_until_done(bulk(fhir, tmp_path, level="patient"))

    # Patient compartments only: the Organization is not part of any patient's record.
    assert Counter(done.resource_keys()) == Counter(keys(data))
    [kickoff] = kickoffs(fhir)
    assert kickoff.startswith("/Patient/$export?")


def test_progress_checkpoints_during_polling(fhir: FhirTestServer, tmp_path: Path) -> None:
    fhir.seed(spine_cohort(1))
    fhir.set_bulk(polls_before_ready=2)
    items = list(bulk(fhir, tmp_path).read(SourceContext()))
    progress = [i.progress for i in items if isinstance(i, Checkpoint)]
    assert progress[:3] == ["export accepted", "export: 33% complete", "export: 67% complete"]
    assert isinstance(items[-1], Checkpoint) and not any(
        isinstance(i, Record) for i in items[:3])


@pytest.mark.parametrize("alg", ["ES384"])
def test_requires_access_token_with_smart_auth(fhir: FhirTestServer, tmp_path: Path,
                                               alg: str) -> None:
    from tests.adapters.test_auth import smart_client

    fhir.seed(spine_cohort(1))
    fhir.set_bulk(polls_before_ready=0)
    auth = smart_client(fhir, tmp_path, alg)
    fhir.set_auth(required=True)

    done = run_until_done(bulk(fhir, tmp_path / "work", auth=auth))

    assert len(done.records) == 6
    files = [r for r in fhir.requests() if "/bulk-files/" in r["url"]]
    assert files and all(r["auth"] == "Bearer" and r["status"] == 200 for r in files)


def test_full_run_replaces_pending_incremental_export(fhir: FhirTestServer,
                                                      tmp_path: Path) -> None:
    fhir.seed(spine_cohort(1))
    fhir.set_bulk(polls_before_ready=5)
    src = bulk(fhir, tmp_path)
    done = Committed(state={"since": "2026-01-01T00:00:00.000Z"})
    assert not run_once(src, done, stop_after_checkpoints=1)
    old_status = done.state["export"]["status_url"]
    fhir.set_bulk(polls_before_ready=0)

    run_once(src, done, ctx=SourceContext(full=True))

    assert len(done.records) == 6
    log = fhir.requests()
    assert any(r["method"] == "DELETE" and old_status.endswith(r["url"]) for r in log)
    assert "_since" not in [r["url"] for r in log if "$export" in r["url"]][-1]


def test_token_expiring_mid_download(fhir: FhirTestServer, tmp_path: Path) -> None:
    from tests.adapters.test_auth import smart_client

    data = spine_cohort(4)
    fhir.seed(data)
    fhir.set_bulk(polls_before_ready=0)
    auth = smart_client(fhir, tmp_path, "RS384")
    fhir.set_auth(required=True)
    # The download is cut after 300 bytes; when it is resumed, the token has expired.
    fhir.fault(r"^/bulk-files/.*/Procedure-1", "cut", times=1, partial_bytes=300)
    fhir.fault(r"^/bulk-files/.*/Procedure-1", "expire_token", times=1)

    done = run_until_done(bulk(fhir, tmp_path / "work", auth=auth))

    assert Counter(done.resource_keys()) == Counter(keys(data)) and done.runs == 1
    log = fhir.requests()
    gets = [(r["range"], r["fault"], r["status"], r["auth"]) for r in log
            if "/Procedure-1" in r["url"]]
    assert gets == [(None, "cut", None, "Bearer"), ("bytes=300-", "expire_token", 401, "Bearer"),
                    ("bytes=300-", None, 206, "Bearer")]
    assert [r["status"] for r in log if r["url"] == "/auth/token"] == [200, 200]
