"""Delivering a package: into a folder, or onto the registry's SFTP server.

Both write under a temporary name, check what arrived against the package's SHA-256, and only
then rename it to its final name, so the registry never picks up half a file. ``deliver``
returns only after the rename succeeded; the caller writes the ledger after that, never before.
SFTP uses key authentication and accepts the server only if its host key matches an entry of
the configured known_hosts file (paramiko's RejectPolicy: no trust on first use).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import paramiko
import structlog

from registry_adapter.submission.package import Package
from registry_adapter.submission.settings import SftpSettings

log = structlog.get_logger(__name__)


class DeliveryError(Exception):
    """The package did not (verifiably) arrive; nothing may be recorded as sent."""


class Destination(Protocol):
    def describe(self) -> str: ...

    def deliver(self, package: Package) -> None: ...


class FolderDestination:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def describe(self) -> str:
        return f"folder:{self.folder}"

    def deliver(self, package: Package) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            final = self.folder / package.name
            temp = self.folder / f".{package.name}.part"
            with temp.open("wb") as fh:
                fh.write(package.data)
                fh.flush()
                os.fsync(fh.fileno())
            if hashlib.sha256(temp.read_bytes()).hexdigest() != package.sha256:
                temp.unlink(missing_ok=True)
                raise DeliveryError(f"{temp.name}: written file does not match the package digest")
            os.replace(temp, final)
        except OSError as exc:
            raise DeliveryError(f"cannot write the package into {self.folder}: {exc.strerror}") from None


class SftpDestination:
    def __init__(self, settings: SftpSettings, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.sleep = sleep

    def describe(self) -> str:
        s = self.settings
        return f"sftp://{s.username}@{s.host}:{s.port}/{s.remote_dir.lstrip('/')}"

    def deliver(self, package: Package) -> None:
        """Upload with retries; a host key mismatch or a refused key is not retried."""
        s = self.settings
        last: Exception | None = None
        for attempt in range(1, s.attempts + 1):
            try:
                self._upload_once(package)
                log.info("submission.sftp_delivered", attempt=attempt, package=package.name)
                return
            except (paramiko.BadHostKeyException, paramiko.AuthenticationException, _UnknownHost) as exc:
                raise DeliveryError(f"{self.describe()}: {_reason(exc)}") from None
            except (OSError, EOFError, paramiko.SSHException, DeliveryError) as exc:
                last = exc
                log.warning(
                    "submission.sftp_attempt_failed", attempt=attempt, of=s.attempts, error=_reason(exc)
                )
                if attempt < s.attempts:
                    self.sleep(s.retry_delay_seconds * attempt)
        raise DeliveryError(f"{self.describe()}: gave up after {s.attempts} attempts: {_reason(last)}")

    def _connect(self) -> paramiko.SSHClient:
        s = self.settings
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(s.known_hosts_file))
        except OSError as exc:
            raise DeliveryError(
                f"cannot read known_hosts file {s.known_hosts_file}: {exc.strerror}"
            ) from None
        client.set_missing_host_key_policy(_Reject())
        client.connect(
            s.host,
            port=s.port,
            username=s.username,
            key_filename=str(s.private_key_file),
            passphrase=s.passphrase(),
            look_for_keys=False,
            allow_agent=False,
            timeout=s.timeout_seconds,
            banner_timeout=s.timeout_seconds,
            auth_timeout=s.timeout_seconds,
        )
        return client

    def _upload_once(self, package: Package) -> None:
        s = self.settings
        client = self._connect()
        try:
            sftp = client.open_sftp()
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(s.timeout_seconds)
            final = posixpath.join(s.remote_dir, package.name)
            temp = posixpath.join(s.remote_dir, f".{package.name}.part")
            with sftp.open(temp, "wb") as fh:
                fh.set_pipelined(True)
                for start in range(0, len(package.data), 32768):
                    fh.write(package.data[start : start + 32768])
            # Read back what the server stored before it gets its final name.
            digest = hashlib.sha256()
            with sftp.open(temp, "rb") as fh:
                fh.prefetch()
                while chunk := fh.read(65536):
                    digest.update(chunk)
            if digest.hexdigest() != package.sha256:
                sftp.remove(temp)
                raise DeliveryError(f"{temp}: the uploaded file does not match the package digest")
            sftp.posix_rename(temp, final)
            sftp.close()
        finally:
            client.close()


class _UnknownHost(paramiko.SSHException):
    pass


class _Reject(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHost(f"host key of {hostname} is not in the known_hosts file (refused)")


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, paramiko.BadHostKeyException):
        return "the server's host key does not match the known_hosts entry (refused)"
    if isinstance(exc, paramiko.AuthenticationException):
        return "the server refused the key (authentication failed)"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
