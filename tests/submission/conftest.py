"""Fixtures of the submission tests: the sample feed with its hand-labelled outcomes imported,
and a real OpenSSH server on 127.0.0.1 (its own host key, an unprivileged config, key auth)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.base import SourceContext
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_adapter.sources import build_source
from tests.conftest import ROOT, SAMPLE_FEED

SAMPLE_OUTCOMES = ROOT / "examples" / "sample-outcomes"
SSHD = Path("/usr/sbin/sshd")


def ingest(app: App, folder: Path, name: str = "sample", kind: str = "files") -> None:
    """Import ``folder`` as source ``name`` (the outcomes folder adds to the sample source)."""
    from registry_adapter.config import parse_settings

    data = app.settings.model_dump(mode="json", exclude_none=True)
    data["sources"] = [{"name": name, "type": kind, "path": str(folder)}]
    settings = parse_settings(data)
    Pipeline(app).ingest(build_source(settings.sources[0], app), SourceContext())


def _with_samples(app: App) -> App:
    ingest(app, SAMPLE_FEED)
    ingest(app, SAMPLE_OUTCOMES)
    return app


@pytest.fixture
def sample_app(make_app: Callable[..., App], db_url: str) -> App:
    """The sample feed and its labelled outcomes, on SQLite and on PostgreSQL."""
    return _with_samples(make_app(db_url))


@pytest.fixture
def sqlite_app(make_app: Callable[..., App], tmp_path: Path) -> App:
    return _with_samples(make_app(f"sqlite:///{tmp_path / 'registry.db'}"))


@dataclass
class SshServer:
    host: str
    port: int
    username: str
    client_key: Path
    known_hosts: Path
    root: Path  # the folder uploads land in (the user's home is the file system root)
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """``sshd -D`` on a free port with its own host key and authorized key in a temp folder.

    It runs as the current user: sshd then serves only that user, with no privilege separation
    to set up. The temp folders are made owner-only, as StrictModes requires.
    """
    if os.geteuid() == 0:
        # Running as root, sshd wants its privilege separation directory (the Debian service
        # creates it at start); as any other user it runs unprivileged and needs none.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    if not SSHD.exists():
        pytest.fail("OpenSSH server missing: run `make services` (scripts/ensure-services.sh installs it)")
    base = tmp_path / "sshd"
    base.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    host_key, client_key = base / "host_key", base / "client_key"
    _keygen(host_key)
    _keygen(client_key)
    authorized = base / "authorized_keys"
    shutil.copy(client_key.with_suffix(".pub"), authorized)
    authorized.chmod(0o600)
    port = free_port()
    drop = tmp_path / "drop"
    drop.mkdir()
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {base / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "Subsystem sftp internal-sftp",
                "LogLevel ERROR",
            ]
        )
        + "\n"
    )
    known = base / "known_hosts"
    pub = host_key.with_suffix(".pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    user = (
        os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    )
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield SshServer("127.0.0.1", port, user, client_key, known, drop, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class CuttingProxy:
    """A TCP relay to the SSH server that drops the first ``cuts`` connections once the client
    has sent ``after_bytes`` (mid-upload), and relays later ones untouched: a real connection
    cut, as a flaky network makes it."""

    def __init__(self, target_port: int, after_bytes: int, cuts: int = 1) -> None:
        self.target_port = target_port
        self.after_bytes = after_bytes
        self.cuts_left = cuts
        self.cut = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            cut = self.cuts_left > 0
            self.cuts_left -= 1
            threading.Thread(target=self._pump, args=(client, upstream, cut), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, cut: bool) -> None:
        sent = 0
        try:
            while data := src.recv(4096):
                if cut and sent + len(data) > self.after_bytes:
                    self.cut += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        self._thread.join(timeout=2)
