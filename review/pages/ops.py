"""``/healthz`` and ``/metrics`` (Prometheus text format) for monitoring; counts only, no PHI."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from registry_adapter.app import App
from review.queries import as_utc, store_counts
from review.web import registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StoreCollector(Collector):
    """Reads the store at scrape time, so the figures are the database's, not this process's."""

    def __init__(self, app: App):
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.app.engine.connect() as conn:
            counts = store_counts(conn)
        staged = GaugeMetricFamily("registry_staged_records", "Staged records by status", labels=["status"])
        for status, n in sorted(counts["staged"].items()):
            staged.add_metric([status], n)
        yield staged
        errors = GaugeMetricFamily("registry_mapping_errors", "Mapping errors by status", labels=["status"])
        for status, n in sorted(counts["errors"].items()):
            errors.add_metric([status], n)
        yield errors
        yield GaugeMetricFamily("registry_cases", "Active registry cases", value=counts["cases"])
        reminders = GaugeMetricFamily("registry_reminders", "PROM reminders by status", labels=["status"])
        for status, n in sorted(counts["reminders"].items()):
            reminders.add_metric([status], n)
        yield reminders
        ok = GaugeMetricFamily(
            "registry_last_sync_success", "1 if the last sync run of the source succeeded", labels=["source"]
        )
        age = GaugeMetricFamily(
            "registry_last_sync_age_seconds", "Seconds since the last sync run of the source started",
            labels=["source"],
        )  # fmt: skip
        success_age = GaugeMetricFamily(
            "registry_last_successful_sync_age_seconds",
            "Seconds since the last successful sync run of the source finished",
            labels=["source"],
        )
        now = datetime.now(UTC)
        for run in counts["runs"]:
            ok.add_metric([run["source"]], 1.0 if run["outcome"] == "succeeded" else 0.0)
            started = as_utc(run["started_at"])
            if started is not None:
                age.add_metric([run["source"]], (now - started).total_seconds())
            last_success = as_utc(run["last_success"])
            if last_success is not None:
                success_age.add_metric([run["source"]], (now - last_success).total_seconds())
        yield ok
        yield age
        yield success_age


def metrics_registry(app: App) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector(app))
    return reg


async def healthz(request: Request) -> Response:
    try:
        with registry(request).engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return JSONResponse({"status": "error", "database": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    reg: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(reg), media_type=CONTENT_TYPE)


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
