"""In-process Prometheus metrics: what this process did since it started.

``/metrics`` (review/pages/ops.py) serves these beside the figures it reads from the store at
scrape time (records per source/type/status, sync runs, reminder sends, next job runs): the
store's figures hold for every process sharing the database, these only for the process that
serves the page, which is the daemon when it runs the UI (``review.enabled``).

Producers call the small functions below rather than touching metric objects, so the labels
stay consistent. Labels carry names and codes only, never patient data.

Wiring the MLLP listener (``adapters/hl7v2/mllp.py``), one call per event:

- ``mllp_connection_opened()`` when a connection is accepted, ``mllp_connection_closed()``
  in the ``finally`` of its handler;
- ``observe_mllp_message(ack_code, seconds)`` after each ACK is written, with the ACK code
  sent (``AA``/``AE``/``AR``, ``CA``/``CE``/``CR``) and the seconds from the message's last
  byte to the ACK's.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
)

REGISTRY = CollectorRegistry()
# Process metrics: CPU seconds, resident memory, open file descriptors, start time, GC, Python.
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)
gc_collector.GCCollector(registry=REGISTRY)

MLLP_MESSAGES = Counter(
    "registry_mllp_messages",
    "HL7 v2 messages answered by the MLLP listener, by the ACK code sent",
    ["ack_code"],
    registry=REGISTRY,
)
MLLP_ACK_LATENCY = Histogram(
    "registry_mllp_ack_latency_seconds",
    "Seconds from a message's last byte to its ACK (staging is durable before the ACK)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
MLLP_OPEN_CONNECTIONS = Gauge(
    "registry_mllp_open_connections", "MLLP connections open now", registry=REGISTRY
)
SYNC_DURATION = Histogram(
    "registry_sync_duration_seconds",
    "Duration of sync runs in this process, by source and outcome",
    ["source", "outcome"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400),
    registry=REGISTRY,
)
JOB_RUNS = Counter(
    "registry_job_runs",
    "Scheduled job runs in this process, by job and outcome (succeeded, failed, missed)",
    ["job", "outcome"],
    registry=REGISTRY,
)
# Counted by registry_adapter.submission.service once per package: delivered or failed.
SUBMISSIONS = Counter(
    "registry_submissions",
    "Packages sent to the national registry, by outcome (delivered, failed)",
    ["outcome"],
    registry=REGISTRY,
)


def observe_mllp_message(ack_code: str, seconds: float) -> None:
    MLLP_MESSAGES.labels(ack_code=ack_code).inc()
    MLLP_ACK_LATENCY.observe(seconds)


def mllp_connection_opened() -> None:
    MLLP_OPEN_CONNECTIONS.inc()


def mllp_connection_closed() -> None:
    MLLP_OPEN_CONNECTIONS.dec()


def observe_sync(source: str, outcome: str, seconds: float) -> None:
    SYNC_DURATION.labels(source=source, outcome=outcome).observe(seconds)


def observe_job(job: str, outcome: str) -> None:
    JOB_RUNS.labels(job=job, outcome=outcome).inc()


def observe_submission(outcome: str) -> None:
    SUBMISSIONS.labels(outcome=outcome).inc()
