"""``/healthz`` and ``/metrics`` (Prometheus text format) for monitoring; counts only, no PHI.

``/metrics`` is the store's figures, read at scrape time (true for every process sharing the
database), plus this process's own (registry_types.metrics: MLLP, sync durations, job
runs, submissions, process metrics).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import anyio.to_thread
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from registry_adapter.app import App
from registry_types import metrics
from review import health
from review.queries import as_utc, store_counts
from review.web import registry
from scheduler.settings import SchedulerSettings

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StoreCollector(Collector):
    """Reads the store at scrape time, so the figures are the database's, not this process's."""

    def __init__(self, app: App):
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.app.engine.connect() as conn:
            counts = store_counts(conn, self.app.settings.section(SchedulerSettings).jobstore_table)
        records = GaugeMetricFamily(
            "registry_records",
            "Records received, by source, resource (or message) type and status "
            "(pending, mapped, failed, out_of_scope, invalid, deleted)",
            labels=["source", "type", "status"],
        )
        for (source, rtype, status), n in sorted(counts["records"].items()):
            records.add_metric([source, rtype, status], n)
        yield records
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
        sends = GaugeMetricFamily(
            "registry_reminder_sends", "Reminder sends by channel and status (sent, failed, pending)",
            labels=["channel", "status"],
        )  # fmt: skip
        for (channel, status), n in sorted(counts["sends"].items()):
            sends.add_metric([channel, status], n)
        yield sends
        acks = GaugeMetricFamily(
            "registry_hl7_acks", "HL7 v2 messages acknowledged, by source and ACK code",
            labels=["source", "ack_code"],
        )  # fmt: skip
        for (source, code), n in sorted(counts["acks"].items()):
            acks.add_metric([source, code], n)
        yield acks
        next_run = GaugeMetricFamily(
            "registry_job_next_run_timestamp_seconds", "When each scheduled job runs next (Unix time)",
            labels=["job"],
        )  # fmt: skip
        for job, at in sorted(counts["next_runs"].items()):
            if at is not None:
                next_run.add_metric([job], at)
        yield next_run
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
        duration = GaugeMetricFamily(
            "registry_last_sync_duration_seconds", "Duration of the last finished sync run of the source",
            labels=["source", "outcome"],
        )  # fmt: skip
        now = datetime.now(UTC)
        for run in counts["runs"]:
            started, finished = as_utc(run["started_at"]), as_utc(run["finished_at"])
            if started is not None and finished is not None:
                duration.add_metric([run["source"], run["outcome"]], (finished - started).total_seconds())
            ok.add_metric([run["source"]], 1.0 if run["outcome"] == "succeeded" else 0.0)
            if started is not None:
                age.add_metric([run["source"]], (now - started).total_seconds())
            last_success = as_utc(run["last_success"])
            if last_success is not None:
                success_age.add_metric([run["source"]], (now - last_success).total_seconds())
        yield ok
        yield age
        yield success_age
        yield duration


def metrics_registry(app: App) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector(app))
    reg.register(metrics.REGISTRY)  # a registry is a collector of its metrics
    return reg


async def healthz(request: Request) -> Response:
    healthy, report = await health.check(registry(request))
    return JSONResponse(report, status_code=200 if healthy else 503)


async def metrics_page(request: Request) -> Response:
    reg: CollectorRegistry = request.app.state.metrics
    # Store queries in a worker thread: a slow scrape must not hold the event loop.
    body = await anyio.to_thread.run_sync(generate_latest, reg)
    return Response(body, media_type=CONTENT_TYPE)


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics_page, methods=["GET"]),
]
