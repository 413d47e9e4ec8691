"""``registry-adapter doctor`` against the real servers: the FHIR test server (with OAuth and
Bulk Data), PostgreSQL, an aiosmtpd SMTP server and real sockets."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from registry_adapter.app import build_app
from registry_adapter.cli import cli
from registry_adapter.config import parse_settings
from registry_adapter.doctor import all_checks
from tests.conftest import base_config
from tests.fhir_server.fixture import FhirTestServer
from tests.scheduler.conftest import SmtpSink, free_port


def _config(tmp_path: Path, fhir: FhirTestServer, smtp_port: int, mllp_port: int, **overrides: Any) -> Path:
    auth = {"method": "client_credentials", "client_id": "registry", "client_secret_env": "DOC_SECRET"}
    cfg = base_config(
        tmp_path,
        sources=[
            {
                "name": "ehr",
                "type": "fhir_rest",
                "base_url": fhir.base_url,
                "resource_types": ["Patient", "Procedure"],
                "auth": auth,
            },
            {
                "name": "bulk",
                "type": "fhir_bulk",
                "base_url": fhir.base_url,
                "resource_types": ["Patient"],
                "auth": auth,
            },
            {"name": "adt", "type": "mllp", "host": "127.0.0.1", "port": mllp_port},
        ],
        reminders={
            "enabled": True,
            "channels": ["email"],
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none"},
            "link": {"token_secret": "t" * 40},
        },
        **overrides,
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _doctor(config: Path, *extra: str) -> tuple[Result, dict[str, dict[str, str]]]:
    result = CliRunner().invoke(cli, ["--config", str(config), *extra, "doctor", "--json"])
    assert result.stdout.startswith("["), result.output
    rows = json.loads(result.stdout)
    return result, {r["check"]: r for r in rows}


@pytest.mark.postgres
def test_ready_installation_passes_every_check(
    tmp_path: Path, fhir: FhirTestServer, smtp_server: SmtpSink, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fhir.register_client("registry", client_secret="s3cret")
    fhir.set_auth(required=True)
    monkeypatch.setenv("DOC_SECRET", "s3cret")
    config = _config(tmp_path, fhir, smtp_server.port, free_port())
    build_app(parse_settings(yaml.safe_load(config.read_text())), pg_url).upgrade_db()

    result, checks = _doctor(config, "--db", pg_url)

    failed = {k: v for k, v in checks.items() if v["status"] == "fail"}
    assert result.exit_code == 0 and not failed, failed
    for name in (
        "configuration",
        "database",
        "time zone",
        "ehr: CapabilityStatement",
        "ehr: clock skew",
        "ehr: SMART configuration",
        "ehr: token request",
        "ehr: search Patient",
        "ehr: search Procedure",
        "bulk: Bulk kick-off",
        "adt: MLLP port 127.0.0.1:",
        "SMTP 127.0.0.1:",
    ):
        assert any(k.startswith(name) and v["status"] == "pass" for k, v in checks.items()), name
    assert checks["SFTP"]["status"] == "skip"
    assert smtp_server.messages == []  # nothing sent
    assert "disk space" not in checks or checks["disk space"]["status"] != "fail"


def test_each_failure_counts_and_names_its_fix(
    tmp_path: Path, fhir: FhirTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fhir.register_client("registry", client_secret="s3cret")
    fhir.set_auth(required=True)
    monkeypatch.setenv("DOC_SECRET", "wrong")
    with socket.socket() as taken, socket.socket() as closed_smtp:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: the listener could not start
        closed_smtp.bind(("127.0.0.1", 0))
        mllp_port, smtp_port = taken.getsockname()[1], closed_smtp.getsockname()[1]
        config = _config(tmp_path, fhir, smtp_port, mllp_port)
        # The database is not migrated.
        result, checks = _doctor(config)

    failed = {k for k, v in checks.items() if v["status"] == "fail"}
    assert failed == {
        "database",
        "ehr: token request",
        "bulk: token request",
        f"adt: MLLP port 127.0.0.1:{mllp_port}",
        f"SMTP 127.0.0.1:{smtp_port}",
    }
    assert result.exit_code == len(failed)
    assert all(checks[k]["fix"] for k in failed)
    assert "db upgrade" in checks["database"]["fix"]
    assert "s3cret" not in result.stdout and "wrong" not in result.stdout


def test_invalid_configuration_fails_once_and_skips_the_rest(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"site": {"id": "x"}}))
    result, checks = _doctor(config)
    assert result.exit_code == 1
    assert checks["configuration"]["status"] == "fail"
    assert "site.timezone" in checks["configuration"]["detail"]
    assert {v["status"] for k, v in checks.items() if k not in ("configuration", "installation")} == {"skip"}


def test_clock_skew_fails_beyond_the_limit(
    tmp_path: Path, fhir: FhirTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry_adapter import doctor

    # The server's clock cannot be moved: the allowed skew is shrunk below any real one.
    monkeypatch.setattr(doctor, "MAX_CLOCK_SKEW_SECONDS", -1.0)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            base_config(tmp_path, sources=[{"name": "ehr", "type": "fhir_rest", "base_url": fhir.base_url}])
        )
    )
    _, checks = _doctor(config)
    assert checks["ehr: clock skew"]["status"] == "fail"
    assert "synchronise" in checks["ehr: clock skew"]["fix"]


def test_an_sftp_check_has_its_place_in_the_list() -> None:
    names = [c.__name__ for c in all_checks()]
    assert names[-1] == "check_sftp"
    # The scheduler's channel checks join through their entry point, before it.
    assert names[-3:-1] == ["check_smtp", "check_webhook"]


def test_text_output_gives_one_line_per_check_and_a_fix(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path)))
    result = CliRunner().invoke(cli, ["--config", str(config), "doctor"])
    assert result.exit_code == 1  # the database is not migrated
    assert "✗ database: schema at revision none" in result.stdout
    assert "fix: run `registry-adapter db upgrade`" in result.stdout
    assert "1 check(s) failed" in result.stdout


def _local_config(tmp_path: Path, **overrides: Any) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path, **overrides)))
    return config


def test_listening_mllp_port_and_webhook_host_pass_without_a_byte_sent(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_server(("127.0.0.1", 0)) as hook:
        mllp_port, hook_port = listener.getsockname()[1], hook.getsockname()[1]
        config = _local_config(
            tmp_path,
            sources=[{"name": "adt", "type": "mllp", "host": "127.0.0.1", "port": mllp_port}],
            reminders={
                "enabled": True,
                "channels": ["webhook"],
                "webhook": {"url": f"http://127.0.0.1:{hook_port}/sms", "signing_secret": "w" * 32},
                "link": {"token_secret": "t" * 40},
            },
        )
        _, checks = _doctor(config)
        hook.settimeout(5)
        conn, _ = hook.accept()
        with conn:
            conn.settimeout(5)
            assert conn.recv(1024) == b""  # connected and closed: no HTTP request, no message
    assert checks[f"adt: MLLP port 127.0.0.1:{mllp_port}"]["status"] == "pass"
    assert "listening" in checks[f"adt: MLLP port 127.0.0.1:{mllp_port}"]["detail"]
    assert checks[f"webhook 127.0.0.1:{hook_port}"]["status"] == "pass"


def test_unreachable_webhook_and_low_disk_space_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from registry_adapter import doctor

    # Free space cannot be used up for a test: the required minimum is raised above any disk.
    monkeypatch.setattr(doctor, "MIN_FREE_BYTES", 2**62)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        config = _local_config(
            tmp_path,
            reminders={
                "enabled": True,
                "channels": ["webhook"],
                "webhook": {"url": f"http://127.0.0.1:{port}/sms", "signing_secret": "w" * 32},
                "link": {"token_secret": "t" * 40},
            },
        )
        _, checks = _doctor(config)
    assert checks[f"webhook 127.0.0.1:{port}"]["status"] == "fail"
    assert checks["disk space"]["status"] == "fail" and "free space" in checks["disk space"]["fix"]


def test_missing_credential_and_unreachable_server_are_named(
    tmp_path: Path, fhir: FhirTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOC_TOKEN", raising=False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}/fhir"
        config = _local_config(
            tmp_path,
            sources=[
                {
                    "name": "ehr",
                    "type": "fhir_rest",
                    "base_url": fhir.base_url,
                    "resource_types": ["Patient"],
                    "auth": {"method": "bearer", "token_env": "DOC_TOKEN"},
                },
                {"name": "old", "type": "fhir_rest", "base_url": down, "resource_types": ["Patient"]},
            ],
        )
        _, checks = _doctor(config)
    assert checks["ehr: token request"]["status"] == "fail"
    assert "DOC_TOKEN" in checks["ehr: token request"]["detail"]
    assert "environment variable" in checks["ehr: token request"]["fix"]
    assert not any(k.startswith("ehr: search") for k in checks)  # one cause, one line
    assert checks["old: CapabilityStatement"]["status"] == "fail"
    assert "no answer" in checks["old: CapabilityStatement"]["detail"]
