"""Logs are JSON through structlog: library records and warnings too, run_id on every line of
a sync run, no query strings, and failures naming the server they failed on."""

from __future__ import annotations

import json
import logging
import socket
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import structlog

from adapters.base import Item, Source, SourceContext
from registry_adapter import logs
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_adapter.sources import build_source


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """Logging configured as a daemon has it; undone afterwards (it is process-wide).

    Configured on first read of the fixture's stream in the test itself: pytest swaps
    sys.stderr between setup and call, and the handlers keep the stream they were given."""
    yield capsys
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    logging.captureWarnings(False)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is JSON, or this raises


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_library_records_and_warnings_are_json_with_context(json_logs: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "INFO")
    structlog.contextvars.bind_contextvars(run_id=41)
    logging.getLogger("urllib3.connectionpool").warning(
        "Retrying after connection broken: /fhir/Patient?identifier=MRN-1234567"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library is deprecated", DeprecationWarning, stacklevel=1)
    library, warned = _lines(json_logs)
    assert library["logger"] == "urllib3.connectionpool" and library["level"] == "warning"
    assert library["run_id"] == 41 and "timestamp" in library
    assert library["event"] == "Retrying after connection broken: /fhir/Patient?[redacted]"
    assert warned["logger"] == "py.warnings" and "deprecated" in warned["event"]


def test_a_failed_request_names_its_server_not_its_query() -> None:
    port = _closed_port()
    with pytest.raises(requests.ConnectionError) as caught:
        requests.get(f"http://127.0.0.1:{port}/fhir/Patient?identifier=MRN-1234567", timeout=2)
    fields = logs.failure_fields(caught.value)
    assert fields == {"error": "ConnectionError", "url": f"http://127.0.0.1:{port}/fhir/Patient"}
    try:
        try:
            requests.get(f"http://127.0.0.1:{port}/x", timeout=2)
        except requests.ConnectionError as exc:
            raise RuntimeError("sync stopped") from exc
    except RuntimeError as wrapped:
        assert logs.failure_fields(wrapped)["url"] == f"http://127.0.0.1:{port}/x"


class _WarningSource:
    """The sample feed, with a library warning in the middle of the read (as urllib3 logs
    a retry while a FHIR source pages)."""

    def __init__(self, inner: Source):
        self.inner = inner
        self.name = inner.name

    def read(self, ctx: SourceContext) -> Iterator[Item]:
        for i, item in enumerate(self.inner.read(ctx)):
            if i == 3:
                logging.getLogger("urllib3.connectionpool").warning("Retrying (Retry(total=2))")
            yield item


def test_every_line_of_a_sync_run_carries_its_run_id(
    sqlite_app: App, json_logs: pytest.CaptureFixture[str]
) -> None:
    logs.configure("json", "INFO")
    [cfg] = sqlite_app.settings.sources
    source = _WarningSource(build_source(cfg, sqlite_app))
    result = Pipeline(sqlite_app).ingest(source, SourceContext(full=True))
    lines = _lines(json_logs)
    events = [line["event"] for line in lines]
    start, finish = events.index("sync.start"), events.index("sync.finish")
    assert events[start + 1] == "Retrying (Retry(total=2))"
    assert all(line.get("run_id") == result.run_id for line in lines[start : finish + 1])
    assert all(line.get("source") == "sample" for line in lines[start : finish + 1])
    assert structlog.contextvars.get_contextvars() == {}  # unbound after the run


def test_failed_sync_logs_the_url(make_app: Any, json_logs: pytest.CaptureFixture[str]) -> None:
    port = _closed_port()
    app = make_app(
        sources=[{"name": "ehr", "type": "fhir_rest", "base_url": f"http://127.0.0.1:{port}/fhir"}]
    )
    [cfg] = app.settings.sources
    logs.configure("json", "INFO")
    with pytest.raises(Exception):  # noqa: B017 - whatever the adapter raises, the log names the URL
        Pipeline(app).ingest(build_source(cfg, app), SourceContext(full=True))
    [failed] = [line for line in _lines(json_logs) if line["event"] in ("sync.failed", "sync.partial")]
    assert failed["source"] == "ehr" and failed.get("run_id")
    assert f"127.0.0.1:{port}" in (failed.get("url") or failed.get("host") or "")


def test_a_fhir_error_status_names_the_server_of_the_source() -> None:
    from adapters.http import FhirHttpError

    exc = FhirHttpError(503, "/fhir/Procedure", [])
    fields = logs.failure_fields(exc, "https://user:pw@ehr.example.org:8443/fhir?_format=json")
    assert fields == {"error": "FhirHttpError", "url": "https://ehr.example.org:8443/fhir/Procedure"}
    assert logs.failure_fields(RuntimeError("x"), "https://ehr.example.org/fhir") == {
        "error": "RuntimeError",
        "url": "https://ehr.example.org/fhir",
    }
