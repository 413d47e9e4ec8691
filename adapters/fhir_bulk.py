"""FHIR Bulk Data ``$export`` source (Bulk Data Access IG, async request pattern).

Kick-off (``GET [base]/$export``, ``/Patient/$export`` or ``/Group/<id>/$export`` with
``_type``/``_since``/``_typeFilter`` and ``Prefer: respond-async``) → poll the status URL from
``Content-Location``, waiting as ``Retry-After`` says and reporting ``X-Progress`` → on 200,
the manifest → each output file is streamed to disk, then read back line by line (constant
memory) and yielded. ``error`` files (OperationOutcome NDJSON) become ``RecordError``s.

Resumability: the state carries the status URL as soon as the export is accepted, then the
manifest and, per file, bytes downloaded and bytes already yielded. A rerun after a crash
continues the same export: it skips finished files, resumes a partial download with an HTTP
``Range`` request and skips lines already committed. The final state holds only
``{"since": <manifest transactionTime>}``, the next run's ``_since``.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import orjson
import requests
import structlog
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError

from adapters.auth import AuthConfig, make_auth
from adapters.base import Checkpoint, Item, Record, RecordError, SourceContext
from adapters.http import (
    BODY_READ_ERRORS,
    RETRY_STATUSES,
    FhirHttpError,
    HttpConfig,
    get_with_body_retry,
    make_retry,
    make_session,
    operation_outcome_issues,
    raise_for_fhir,
    url_path,
)

log = structlog.get_logger(__name__)

CHUNK = 64 * 1024
# A connection lost mid-file, as urllib3 raises it from read1() or requests wraps it.
DOWNLOAD_ERRORS = (*BODY_READ_ERRORS, ProtocolError, ReadTimeoutError)


@dataclass(frozen=True, slots=True)
class FhirBulkConfig:
    """One Bulk Data source. ``type_filters`` are ``Type?query`` strings (``_typeFilter``).

    ``work_dir`` holds downloads in progress (default: a per-source folder in the system
    temp dir); ``checkpoint_every`` lines a checkpoint records the read position.
    """

    base_url: str
    level: Literal["system", "patient", "group"] = "system"
    group_id: str | None = None
    resource_types: tuple[str, ...] = ()
    type_filters: tuple[str, ...] = ()
    work_dir: str | None = None
    poll_interval_seconds: float = 10.0
    max_wait_seconds: float = 24 * 3600.0
    checkpoint_every: int = 1000
    auth: AuthConfig = field(default_factory=AuthConfig)
    http: HttpConfig = field(default_factory=HttpConfig)


class BulkExportError(Exception):
    """The export could not be started or the server gave up on it."""


def _retry_after(resp: requests.Response, default: float) -> float:
    value = resp.headers.get("Retry-After")
    if not value:
        return default
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return default


class FhirBulkSource:
    """A :class:`adapters.base.Source` running one ``$export`` per sync."""

    def __init__(self, name: str, config: FhirBulkConfig,
                 session: requests.Session | None = None) -> None:
        self.name = name
        self.cfg = config
        self.base = config.base_url.rstrip("/")
        self.session = session or make_session(config.http)
        self.auth = make_auth(config.auth, self.base, config.http)
        safe = hashlib.sha256(name.encode()).hexdigest()[:12]
        self.work_dir = Path(config.work_dir or Path(tempfile.gettempdir()) / f"bulk-{safe}")
        self.sleep: Callable[[float], None] = time.sleep  # tests replace it to not wait

    # ------------------------------------------------------------------ entry point
    def read(self, ctx: SourceContext) -> Iterator[Item]:
        state: dict[str, Any] = orjson.loads(orjson.dumps(dict(ctx.state))) if ctx.state else {}
        job: dict[str, Any] | None = state.get("export")
        if job is not None and ctx.full and job.get("since_used"):
            # A full export was asked for while an incremental one is pending: drop that one.
            self._cancel(job["status_url"])
            job = None
        if job is None:
            since = None if ctx.full else (ctx.since or state.get("since"))
            job = self.kick_off(since, ctx.resource_types)
            state["export"] = job
            yield Checkpoint(state=_copy(state), progress="export accepted")
        if job.get("manifest") is None:
            outcome = yield from self.poll(state, job)
            if outcome is None:
                return
            job["manifest"] = outcome
            job["files"] = {}
            yield Checkpoint(state=_copy(state), progress="export complete, downloading")
        manifest = job["manifest"]
        needs_token = bool(manifest.get("requiresAccessToken"))
        outputs = [(o, "output") for o in manifest.get("output") or []] + \
                  [(o, "error") for o in manifest.get("error") or []]
        for n, (entry, kind) in enumerate(outputs):
            yield from self.process_file(state, job, n, entry, kind, needs_token)
        status_url = job["status_url"]
        final = {"since": manifest.get("transactionTime") or state.get("since")}
        yield Checkpoint(state=final, progress=f"export done: {len(outputs)} files")
        # The pipeline has committed the final state by now; tell the server it can clean up.
        self._cancel(status_url)

    def _cancel(self, status_url: str) -> None:
        """DELETE on the status URL: cancels a running export or frees a finished one."""
        try:
            self.session.delete(status_url, auth=self.auth, timeout=self.cfg.http.timeout)
        except requests.RequestException:
            log.info("fhir_bulk.cancel_failed", path=url_path(status_url))

    # ------------------------------------------------------------------ kick-off and polling
    def kick_off(self, since: str | None, only_types: tuple[str, ...]) -> dict[str, Any]:
        path = {"system": "$export", "patient": "Patient/$export",
                "group": f"Group/{self.cfg.group_id}/$export"}[self.cfg.level]
        if self.cfg.level == "group" and not self.cfg.group_id:
            raise BulkExportError("level group needs group_id")
        params: dict[str, str | list[str]] = {"_outputFormat": "application/fhir+ndjson"}
        types = tuple(t for t in self.cfg.resource_types if not only_types or t in only_types) \
            if self.cfg.resource_types else only_types
        if types:
            params["_type"] = ",".join(types)
        if since:
            params["_since"] = since
        if self.cfg.type_filters:
            # One parameter per filter (allowed by the IG) so commas inside a query stay
            # unambiguous.
            params["_typeFilter"] = list(self.cfg.type_filters)
        url = f"{self.base}/{path}?{urlencode(params, doseq=True, safe=',:')}"
        resp = self.session.get(url, auth=self.auth, timeout=self.cfg.http.timeout,
                                headers={"Accept": "application/fhir+json",
                                         "Prefer": "respond-async"})
        raise_for_fhir(resp)
        location = resp.headers.get("Content-Location")
        if resp.status_code != 202 or not location:
            raise BulkExportError(f"$export kick-off at {url_path(url)} answered "
                                  f"{resp.status_code} without Content-Location")
        log.info("fhir_bulk.kicked_off", source=self.name, level=self.cfg.level,
                 incremental=since is not None)
        return {"status_url": location, "since_used": since, "manifest": None, "files": {}}

    def poll(self, state: dict[str, Any], job: dict[str, Any]
             ) -> Generator[Item, None, dict[str, Any] | None]:
        """Poll until the manifest; a generator returning it (``None`` when the export failed)."""
        url = job["status_url"]
        deadline = time.monotonic() + self.cfg.max_wait_seconds
        while True:
            resp = get_with_body_retry(self.session, url, self.cfg.http, auth=self.auth,
                                       headers={"Accept": "application/json"})
            if resp.status_code == 200:
                manifest = resp.json()
                if not isinstance(manifest, dict) or "output" not in manifest:
                    raise BulkExportError(f"status {url_path(url)} returned no manifest")
                return manifest
            if resp.status_code == 202:
                progress = resp.headers.get("X-Progress") or "in progress"
                yield Checkpoint(state=_copy(state), progress=f"export: {progress[:100]}")
                if time.monotonic() > deadline:
                    raise BulkExportError(f"export at {url_path(url)} not done after "
                                          f"{self.cfg.max_wait_seconds:.0f}s")
                self.sleep(min(_retry_after(resp, self.cfg.poll_interval_seconds),
                               float(self.cfg.http.retry_after_max)))
                continue
            if resp.status_code in RETRY_STATUSES:
                # Still unavailable after the retries: fail this run, keep the export to resume.
                raise_for_fhir(resp)
            # Any other 4xx/5xx: the export failed (or expired). Record why, start afresh next run.
            try:
                body = resp.json()
            except ValueError:
                body = None
            issues = operation_outcome_issues(body)
            err = FhirHttpError(resp.status_code, url_path(url), issues)
            log.error("fhir_bulk.export_failed", status=resp.status_code, path=url_path(url))
            yield RecordError(origin=f"{url_path(url)}", code="export-failed", message=str(err),
                              raw=resp.content or None)
            state.pop("export", None)
            yield Checkpoint(state=_copy(state), progress="export failed")
            return None

    # ------------------------------------------------------------------ files
    def process_file(self, state: dict[str, Any], job: dict[str, Any], n: int,
                     entry: Mapping[str, Any], kind: str, needs_token: bool) -> Iterator[Item]:
        url = str(entry["url"])
        fstate: dict[str, Any] = job["files"].setdefault(url, {"done": False, "downloaded": 0,
                                                              "consumed": 0, "line": 0})
        if fstate["done"]:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        local = self.work_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.ndjson"
        auth = self.auth if needs_token else None
        yield from self.download(url, local, fstate, state, auth)
        rtype = str(entry.get("type") or "")
        label = f"{rtype or kind}-file{n + 1}"
        with local.open("rb") as fh:
            fh.seek(fstate["consumed"])
            line_no = fstate["line"]
            for raw in fh:
                line_no += 1
                fstate["consumed"] += len(raw)
                fstate["line"] = line_no
                line = raw.strip()
                if line:
                    yield self.item(line, f"{label}:line {line_no}", kind, rtype)
                if line_no % self.cfg.checkpoint_every == 0:
                    yield Checkpoint(state=_copy(state), progress=f"{label}: {line_no} lines")
        fstate["done"] = True
        yield Checkpoint(state=_copy(state), progress=f"{label}: done, {line_no} lines")
        local.unlink(missing_ok=True)

    def item(self, line: bytes, origin: str, kind: str, rtype: str) -> Item:
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return RecordError(origin=origin, code="malformed-json",
                               message=f"{origin}: not JSON ({exc.msg} at char {exc.pos})",
                               raw=line, resource_type=rtype or None)
        if not isinstance(resource, dict):
            return RecordError(origin=origin, code="not-a-resource",
                               message=f"{origin}: not a JSON object", raw=line)
        if kind == "error":
            issues = operation_outcome_issues(resource)
            text = "; ".join(f"{i.get('code', '?')}: {i.get('diagnostics', '')}" for i in issues)
            return RecordError(origin=origin, code="export-error",
                               message=f"server export error: {text or 'no issue'}",
                               raw=line, resource_type="OperationOutcome")
        return Record(resource=resource, origin=origin, raw=line)

    def download(self, url: str, local: Path, fstate: dict[str, Any], state: dict[str, Any],
                 auth: Any) -> Iterator[Item]:
        """Stream ``url`` into ``local``, resuming with ``Range`` after a cut or a crash."""
        have = local.stat().st_size if local.exists() else 0
        if fstate.get("complete") and have == fstate["downloaded"]:
            return
        retry = make_retry(self.cfg.http)
        while True:
            # identity: byte offsets for Range must count the bytes as stored, not decoded.
            headers = {"Accept": "application/fhir+ndjson", "Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                with self.session.get(url, auth=auth, stream=True, headers=headers,
                                      timeout=self.cfg.http.timeout) as resp:
                    if resp.status_code == 416 and have:
                        break  # everything was already on disk
                    raise_for_fhir(resp)
                    mode = "ab" if have and resp.status_code == 206 else "wb"
                    if mode == "wb":
                        have = 0  # the server ignored Range: start the file again
                    with local.open(mode) as out:
                        # read1, not iter_content: iter_content buffers a whole chunk and
                        # drops it when the connection dies, losing bytes Range could keep.
                        while chunk := resp.raw.read1(CHUNK):
                            out.write(chunk)
                            have += len(chunk)
                break
            except DOWNLOAD_ERRORS as exc:
                fstate["downloaded"] = have
                yield Checkpoint(state=_copy(state), progress=f"download interrupted at {have} B")
                try:
                    retry = retry.increment(method="GET", url=url_path(url), error=exc)
                except MaxRetryError:
                    raise exc from None
                log.warning("fhir_bulk.download_resume", path=url_path(url), offset=have)
                retry.sleep()
        fstate["downloaded"] = have
        fstate["complete"] = True
        yield Checkpoint(state=_copy(state), progress=f"downloaded {url_path(url)}: {have} B")


def _copy(state: Mapping[str, Any]) -> dict[str, Any]:
    return dict(orjson.loads(orjson.dumps(state)))
