"""Delivery to a real OpenSSH server on 127.0.0.1 (see conftest.sshd): the package arrives
intact under its final name, the ledger is written only after the rename, a connection cut
mid-upload is retried, and a server whose host key does not match is refused."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from registry_adapter.app import App
from registry_adapter.submission.delivery import DeliveryError, SftpDestination
from registry_adapter.submission.package import verify_package
from registry_adapter.submission.service import run_submission
from registry_adapter.submission.settings import SftpSettings
from registry_store.submissions import SUBMISSIONS
from registry_types.metrics import REGISTRY
from tests.submission.conftest import CuttingProxy, SshServer


def _settings(
    server: SshServer, *, port: int | None = None, attempts: int = 3, **extra: object
) -> SftpSettings:
    return SftpSettings(
        host=server.host,
        port=port or server.port,
        username=server.username,
        private_key_file=server.client_key,
        known_hosts_file=server.known_hosts,
        remote_dir=str(server.root),
        timeout_seconds=5,
        attempts=attempts,
        retry_delay_seconds=0,
        **extra,  # type: ignore[arg-type]
    )


def _ledger(app: App) -> list[str]:
    with app.engine.connect() as conn:
        return list(conn.execute(select(SUBMISSIONS.c.package_sha256)).scalars())


@pytest.fixture
def proxy(sshd: SshServer) -> Iterator[Callable[..., CuttingProxy]]:
    made: list[CuttingProxy] = []

    def factory(after_bytes: int, cuts: int = 1) -> CuttingProxy:
        p = CuttingProxy(sshd.port, after_bytes, cuts)
        made.append(p)
        # The same server (same host key) reached through the relay's port.
        entry = sshd.known_hosts.read_text().splitlines()[0].split(" ", 1)[1]
        with sshd.known_hosts.open("a") as fh:
            fh.write(f"[127.0.0.1]:{p.port} {entry}\n")
        return p

    yield factory
    for p in made:
        p.close()


def test_package_arrives_intact_and_then_is_recorded(sqlite_app: App, sshd: SshServer) -> None:
    result = run_submission(sqlite_app, period="2025Q4", destination=SftpDestination(_settings(sshd)))
    arrived = sshd.root / str(result.package)
    assert [p.name for p in sshd.root.iterdir()] == [arrived.name]  # no temporary file left
    data = arrived.read_bytes()
    manifest = verify_package(data)  # every file's SHA-256 matches the manifest
    assert manifest["files"]["cases.csv"]["rows"] == 41
    assert _ledger(sqlite_app) == [result.sha256]
    assert result.destination == f"sftp://{sshd.username}@127.0.0.1:{sshd.port}/{str(sshd.root).lstrip('/')}"


def test_connection_cut_mid_upload_records_nothing_then_retry_succeeds(
    sqlite_app: App, sshd: SshServer, proxy: Callable[..., CuttingProxy]
) -> None:
    # One attempt only: the cut fails the run, and nothing is recorded as sent.
    cutter = proxy(after_bytes=16_000, cuts=1)
    with pytest.raises(DeliveryError, match="gave up after 1 attempts"):
        run_submission(
            sqlite_app,
            period="2025Q4",
            destination=SftpDestination(_settings(sshd, port=cutter.port, attempts=1)),
        )
    assert cutter.cut == 1
    assert _ledger(sqlite_app) == []
    # The cut came mid-upload (the file was opened on the server, its data in flight): what
    # is there has its temporary name only, never the final one the registry picks up.
    (partial,) = sshd.root.iterdir()
    assert partial.name.endswith(".zip.part")
    # With retries, the next attempt (the connection is not cut again) delivers it.
    cutter = proxy(after_bytes=16_000, cuts=1)
    result = run_submission(
        sqlite_app,
        period="2025Q4",
        destination=SftpDestination(_settings(sshd, port=cutter.port, attempts=3)),
    )
    assert cutter.cut == 1
    verify_package((sshd.root / str(result.package)).read_bytes())
    assert _ledger(sqlite_app) == [result.sha256]
    assert [p.name for p in sshd.root.iterdir() if p.suffix == ".zip"] == [result.package]


def test_wrong_host_key_is_refused_and_nothing_recorded(
    sqlite_app: App, sshd: SshServer, tmp_path: Path
) -> None:
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    settings = _settings(sshd).model_copy(update={"known_hosts_file": wrong})
    with pytest.raises(DeliveryError, match="host key does not match"):
        run_submission(sqlite_app, period="2025Q4", destination=SftpDestination(settings))
    # A server missing from known_hosts is refused too (no trust on first use).
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    settings = _settings(sshd).model_copy(update={"known_hosts_file": empty})
    with pytest.raises(DeliveryError, match="not in the known_hosts file"):
        run_submission(sqlite_app, period="2025Q4", destination=SftpDestination(settings))
    assert _ledger(sqlite_app) == [] and list(sshd.root.iterdir()) == []


def _sent(outcome: str) -> float:
    return REGISTRY.get_sample_value("registry_submissions_total", {"outcome": outcome}) or 0.0


def test_submission_outcomes_are_counted_for_metrics(
    sqlite_app: App, sshd: SshServer, tmp_path: Path
) -> None:
    delivered, failed = _sent("delivered"), _sent("failed")
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    refused = _settings(sshd).model_copy(update={"known_hosts_file": empty})
    with pytest.raises(DeliveryError):
        run_submission(sqlite_app, period="2025Q4", destination=SftpDestination(refused))
    assert (_sent("delivered"), _sent("failed")) == (delivered, failed + 1)
    run_submission(sqlite_app, period="2025Q4", destination=SftpDestination(_settings(sshd)))
    assert (_sent("delivered"), _sent("failed")) == (delivered + 1, failed + 1)


def test_configured_sftp_destination_is_used(
    make_app: Callable[..., App], sshd: SshServer, tmp_path: Path
) -> None:
    from tests.conftest import SAMPLE_FEED
    from tests.submission.conftest import ingest

    app = make_app(
        f"sqlite:///{tmp_path / 's.db'}",
        submission={"destination": "sftp", "sftp": _settings(sshd).model_dump(mode="json")},
    )
    ingest(app, SAMPLE_FEED)
    result = run_submission(app, period="2025Q4")
    assert result.destination is not None and result.destination.startswith("sftp://")
    assert (sshd.root / str(result.package)).exists()


def test_encrypted_client_key_with_its_passphrase(sqlite_app: App, sshd: SshServer, tmp_path: Path) -> None:
    key = tmp_path / "encrypted_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "correct horse", "-f", str(key)], check=True)
    authorized = sshd.client_key.parent / "authorized_keys"
    authorized.write_text(authorized.read_text() + key.with_suffix(".pub").read_text())
    passfile = tmp_path / "passphrase"
    passfile.write_text("correct horse\n")
    settings = _settings(sshd).model_copy(
        update={"private_key_file": key, "private_key_passphrase_file": passfile}
    )
    result = run_submission(sqlite_app, period="2025Q4", destination=SftpDestination(settings))
    verify_package((sshd.root / str(result.package)).read_bytes())


def test_cli_reports_a_failed_delivery_and_records_nothing(sshd: SshServer, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from registry_adapter.cli import cli
    from tests.conftest import SAMPLE_FEED, write_config_file
    from tests.submission.conftest import free_port

    closed = _settings(sshd, port=free_port(), attempts=2).model_dump(mode="json")
    config = write_config_file(tmp_path, submission={"destination": "sftp", "sftp": closed})
    runner = CliRunner()
    assert runner.invoke(cli, ["--config", str(config), "import", str(SAMPLE_FEED)]).exit_code == 0
    failed = runner.invoke(cli, ["--config", str(config), "submit", "--period", "2025Q4"])
    assert failed.exit_code == 1 and "gave up after 2 attempts" in failed.output
    listed = runner.invoke(cli, ["--config", str(config), "submissions", "list", "--json"])
    assert listed.exit_code == 0 and listed.output.strip() == "[]"
