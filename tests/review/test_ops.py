"""/metrics and /healthz: the store's figures, this process's own, and each component's state."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import update
from starlette.testclient import TestClient

from registry_adapter.app import App, build_app
from registry_store.tables import HL7_ACKS as ACKS
from registry_store.tables import REMINDER_SENDS as SENDS
from registry_store.tables import SYNC_RUNS as RUNS
from registry_types import metrics
from review.app import create_app
from scheduler import jobs
from scheduler.daemon import Daemon
from tests.scheduler.test_daemon import leave_overdue, watch

Client = Callable[[str | None], TestClient]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _seed_acks_and_sends(app: App) -> None:
    now = datetime.now(UTC)
    with app.engine.begin() as conn:
        conn.execute(
            ACKS.insert(),
            [
                {"received_at": now, "source": "adt", "control_id": "M1", "ack_code": "AA"},
                {"received_at": now, "source": "adt", "control_id": "M2", "ack_code": "AE"},
            ],
        )
        conn.execute(
            SENDS.insert(),
            [
                {"reminder_id": i, "attempt": 1, "channel": ch, "idempotency_key": f"k{i}", "status": st}
                for i, (ch, st) in enumerate([("email", "sent"), ("email", "failed"), ("webhook", "sent")])
            ],
        )


def test_metrics_export_store_and_process_figures(client_for: Client, review_app: App) -> None:
    _seed_acks_and_sends(review_app)
    leave_overdue(review_app, hours_late=1)  # the daemon's job table, as a daemon leaves it
    metrics.observe_mllp_message("AA", 0.02)  # what the MLLP listener reports per ACK
    metrics.mllp_connection_opened()
    text = client_for(None).get("/metrics").text
    metrics.mllp_connection_closed()
    # Store figures (every process sharing the database).
    assert re.search(r'registry_records\{source="sample",status="mapped",type="Procedure"\} \d+', text)
    assert 'registry_records{source="sample",status="failed",type="Procedure"}' in text
    assert 'registry_reminder_sends{channel="email",status="failed"} 1.0' in text
    assert 'registry_reminder_sends{channel="webhook",status="sent"} 1.0' in text
    assert 'registry_hl7_acks{ack_code="AE",source="adt"} 1.0' in text
    assert re.search(r'registry_job_next_run_timestamp_seconds\{job="nightly-sync"\} \d', text)
    assert re.search(r'registry_last_sync_duration_seconds\{outcome="succeeded",source="sample"\} \d', text)
    assert 'registry_staged_records{status="mapped"}' in text  # the totals stay
    # This process's figures.
    synced = r'registry_sync_duration_seconds_count\{outcome="succeeded",source="sample"\} [1-9]'
    assert re.search(synced, text)
    assert re.search(r'registry_mllp_messages_total\{ack_code="AA"\} [1-9]', text)
    assert re.search(r"registry_mllp_ack_latency_seconds_bucket\{le=\"0.025\"\} [1-9]", text)
    assert "registry_mllp_open_connections 1.0" in text
    assert "# TYPE registry_submissions_total counter" in text  # the place for submission outcomes
    assert "process_cpu_seconds_total" in text and "python_info" in text


def test_job_runs_are_counted_by_outcome(make_app: Callable[..., App]) -> None:
    app = make_app()
    before = _value("registry_job_runs_total", job=jobs.NIGHTLY_JOB, outcome="succeeded")
    leave_overdue(app, hours_late=2)
    daemon = Daemon(app)
    _seen, done = watch(daemon)
    daemon.start()
    try:
        assert done.wait(30)
    finally:
        daemon.stop()
    assert _value("registry_job_runs_total", job=jobs.NIGHTLY_JOB, outcome="succeeded") == before + 1


def _health(app: App) -> tuple[int, dict[str, Any]]:
    response = TestClient(create_app(app)).get("/healthz")
    return response.status_code, response.json()


def test_healthz_reports_each_component(review_app: App) -> None:
    status, report = _health(review_app)
    assert status == 200 and report["status"] == "ok"
    parts = report["components"]
    assert parts["database"] == {"status": "ok"}
    assert parts["scheduler"]["status"] == "off" and parts["listener"]["status"] == "off"
    assert parts["nightly"]["status"] == "ok" and parts["nightly"]["age_seconds"] >= 0

    with review_app.engine.begin() as conn:  # the last nightly finished 30 hours ago
        conn.execute(update(RUNS).values(finished_at=datetime.now(UTC) - timedelta(hours=30)))
    status, report = _health(review_app)
    assert status == 503 and report["status"] == "down"
    assert report["components"]["nightly"]["status"] == "down"


def test_healthz_sees_a_stopped_scheduler(review_app: App) -> None:
    leave_overdue(review_app, hours_late=1)  # jobs due an hour ago, and no daemon runs them
    status, report = _health(review_app)
    assert status == 503
    scheduler = report["components"]["scheduler"]
    assert scheduler["status"] == "down" and scheduler["overdue_seconds"][jobs.NIGHTLY_JOB] >= 3600


def test_healthz_sees_whether_the_listener_listens(make_app: Callable[..., App]) -> None:
    from registry_adapter.listener import make_service

    port = _free_port()
    app = make_app(sources=[{"name": "adt", "type": "mllp", "host": "127.0.0.1", "port": port}])
    status, report = _health(app)
    assert status == 503 and report["components"]["listener"] == {"status": "down", "not_listening": ["adt"]}
    assert report["components"]["nightly"]["status"] == "off"  # nothing is pulled
    service = make_service(app)
    assert service is not None
    service.start()
    try:
        status, report = _health(app)
    finally:
        service.stop()
    assert status == 200 and report["components"]["listener"] == {"status": "ok"}


def test_healthz_is_503_when_the_database_is_down(make_app: Callable[..., App]) -> None:
    settings = make_app().settings
    down = build_app(settings, f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/registry")
    status, report = _health(down)
    assert status == 503 and report["components"]["database"]["status"] == "down"
    assert "127.0.0.1" not in str(report)  # no connection string in the answer


def test_metrics_registry_includes_this_process() -> None:
    reg = CollectorRegistry()
    reg.register(metrics.REGISTRY)
    assert reg.get_sample_value("process_start_time_seconds") is not None
