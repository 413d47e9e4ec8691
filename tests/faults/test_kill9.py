"""kill -9 in the middle of an import, a sync and the MLLP listener, then run again: the
store ends up exactly as after an uninterrupted run (same counts, same fingerprint of every
staged record and registry row), on SQLite and PostgreSQL. Real subprocesses, real signals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine, text

from adapters.hl7v2.framing import frame
from tests.conftest import SAMPLE_FEED, base_config
from tests.hl7v2.conftest import make_message, msa, read_frame

EXE = str(Path(sys.executable).with_name("registry-adapter"))
REGISTRY_TABLES = ("patients", "encounters", "procedures", "conditions", "prom_responses", "cases")
HL7_MESSAGES = 60


def _config(tmp: Path, db_url: str, name: str, **overrides: Any) -> Path:
    cfg = base_config(tmp, database={"url": db_url}, batch_size=25, **overrides)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert _run(path, "db", "upgrade").returncode == 0  # commands refuse an unmigrated database
    return path


def _run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, "--config", str(config), *args], capture_output=True, text=True, timeout=180)


def _count(db_url: str, sql: str) -> int:
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())
    except Exception:  # the table may not exist yet while the killed process starts
        return 0
    finally:
        engine.dispose()


def _fingerprint(db_url: str, only_hl7: bool = False) -> dict[str, Any]:
    """Counts and a hash of every row's content, blind to ids and times the run assigns."""
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    found: dict[str, Any] = {}
    with engine.connect() as conn:
        where = "WHERE resource_type = 'HL7v2Message'" if only_hl7 else ""
        staged = sorted(tuple(map(str, r)) for r in conn.execute(text(
            f"SELECT source, resource_type, resource_id, content_hash, status FROM staging {where}")))
        found["staging"] = (len(staged), hashlib.sha256(repr(staged).encode()).hexdigest())
        tables = () if only_hl7 else (*REGISTRY_TABLES, "mapping_errors")
        for table in tables:
            rows = [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM {table}"))]
            kept = sorted(json.dumps({k: str(v) for k, v in r.items()
                                      if k not in ("staging_id", "id", "first_seen", "last_seen")
                                      and not k.endswith("_at")},
                                     sort_keys=True) for r in rows)
            found[table] = (len(kept), hashlib.sha256("\n".join(kept).encode()).hexdigest())
    engine.dispose()
    return found


def _feed(tmp: Path) -> Path:
    """The sample feed plus a few thousand more records, so a run spans many batches."""
    feed = tmp / "feed"
    shutil.copytree(SAMPLE_FEED, feed)
    with (feed / "more-Procedure.ndjson").open("w") as fh:
        for line in (SAMPLE_FEED / "Procedure.ndjson").read_text().splitlines():
            try:
                proc = json.loads(line)
            except json.JSONDecodeError:
                continue
            for copy in range(8):
                fh.write(json.dumps({**proc, "id": f"{proc['id']}-c{copy}"}) + "\n")
    return feed


def _kill_mid_run(config: Path, db_url: str, *args: str) -> None:
    """Start ``args``, kill -9 it once some batches are committed and before it finishes."""
    proc = subprocess.Popen([EXE, "--config", str(config), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _count(db_url, "SELECT count(*) FROM staging") < 200:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    # Killed mid-run: its run row never got an outcome.
    assert _count(db_url, "SELECT count(*) FROM sync_runs WHERE outcome = 'running'") == 1
    _lease_lapses(db_url)


def _lease_lapses(db_url: str) -> None:
    """The dead run's sync lease lapses after ``scheduler.lock_ttl_seconds`` (registry_store/leases.py);
    the test moves its expiry into the past rather than wait for it."""
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE job_locks SET expires_at = :past"),
                     {"past": datetime(2000, 1, 1, tzinfo=UTC)})
    engine.dispose()


def _compare(tmp_path: Path, db_url: str, other_url: str, command: list[str]) -> None:
    feed = _feed(tmp_path)
    command = [str(feed) if c == "FEED" else c for c in command]
    sources = [{"name": "sample", "type": "files", "path": str(feed)}]
    whole = _config(tmp_path, other_url, "whole", sources=sources)
    assert _run(whole, "db", "upgrade").returncode == 0
    assert _run(whole, *command).returncode == 0
    killed = _config(tmp_path, db_url, "killed", sources=sources)
    assert _run(killed, "db", "upgrade").returncode == 0
    _kill_mid_run(killed, db_url, *command)
    again = _run(killed, *command)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _fingerprint(db_url) == _fingerprint(other_url)


def _second_db(db_url: str, tmp_path: Path, pg_server: str | None) -> str:
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'whole.db'}"
    import secrets

    import psycopg

    assert pg_server is not None
    name = f"registry_test_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{pg_server.rsplit('/', 1)[0]}/{name}"


def _drop(url: str, pg_server: str | None) -> None:
    if url.startswith("postgresql") and pg_server:
        import psycopg

        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def _pg(request: Any, db_url: str) -> str | None:
    return str(request.getfixturevalue("pg_server")) if db_url.startswith("postgresql") else None


def test_sync_killed_mid_batch_resumes_to_the_same_store(db_url: str, tmp_path: Path, request: Any) -> None:
    pg = _pg(request, db_url)
    other = _second_db(db_url, tmp_path, pg)
    try:
        _compare(tmp_path, db_url, other, ["sync"])
    finally:
        _drop(other, pg)


def test_import_killed_mid_batch_then_again_gives_the_same_store(db_url: str, tmp_path: Path,
                                                                  request: Any) -> None:
    pg = _pg(request, db_url)
    other = _second_db(db_url, tmp_path, pg)
    try:
        _compare(tmp_path, db_url, other, ["import", "FEED"])
    finally:
        _drop(other, pg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_listener(config: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([EXE, "--config", str(config), "listen"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "listener did not start"
            time.sleep(0.05)


def _send(port: int, messages: list[bytes]) -> list[str]:
    """Stop-and-wait, as senders do; returns the control ids acknowledged AA."""
    acked = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for message in messages:
            s.sendall(frame(message))
            ack = read_frame(s)
            if not ack:
                break
            fields = msa(ack)
            if fields[1] == "AA":
                acked.append(fields[2])
    return acked


def test_listener_killed_mid_stream_loses_no_acknowledged_message(db_url: str, tmp_path: Path,
                                                                  request: Any) -> None:
    pg = _pg(request, db_url)
    other = _second_db(db_url, tmp_path, pg)
    messages = [make_message(f"K{n:04d}") for n in range(HL7_MESSAGES)]
    try:
        fingerprints = []
        for url, kill in ((other, False), (db_url, True)):
            port = _free_port()
            sources = [{"name": "mllp", "type": "mllp", "host": "127.0.0.1", "port": port,
                        "convert_every_seconds": 3600}]
            config = _config(tmp_path, url, "kill" if kill else "whole", sources=sources)
            assert _run(config, "db", "upgrade").returncode == 0
            proc = _start_listener(config, port)
            if kill:
                half = HL7_MESSAGES // 2
                acked = _send(port, messages[:half])
                # The next message is on the wire when the listener dies.
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    s.sendall(frame(messages[half]))
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                staged = _count(url, "SELECT count(*) FROM staging")
                assert staged >= len(acked) == half  # every AA was durable
                proc = _start_listener(config, port)
                # The sender resends everything it has no AA for (at least once).
                acked += _send(port, messages[half:])
            else:
                acked = _send(port, messages)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            assert len(acked) == HL7_MESSAGES
            fingerprints.append(_fingerprint(url, only_hl7=True))
        assert fingerprints[0] == fingerprints[1]
        assert fingerprints[0]["staging"][0] == HL7_MESSAGES  # staged once per content
    finally:
        _drop(other, pg)
