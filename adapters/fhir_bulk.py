"""FHIR Bulk Data ``$export`` source (Bulk Data Access IG, async request pattern).

Kick-off (``GET [base]/$export``, ``/Patient/$export`` or ``/Group/<id>/$export`` with
``_type``/``_since``/``_typeFilter`` and ``Prefer: respond-async``) → poll the status URL from
``Content-Location``, waiting as ``Retry-After`` says and reporting ``X-Progress`` → on 200,
the manifest → each output file is streamed to disk, then read back line by line (constant
memory) and yielded. ``deleted`` files (Bulk Data 2.0: Bundles whose entries are
``DELETE Type/id``) become ``Deleted``; ``error`` files (OperationOutcome NDJSON) become
``RecordError``s.

Resumability: the state carries the status URL as soon as the export is accepted, then the
manifest and, per file, bytes downloaded and bytes already yielded. A rerun after a crash
continues the same export: it skips finished files, resumes a partial download with an HTTP
``Range`` request and skips lines already committed. A body that ends mid-line is treated as
a cut download and its rest asked for with ``Range``. The final state holds only
``{"since": <manifest transactionTime>}``, the next run's ``_since``.

Nothing lost: when a line of an output or deleted file could not be read, or a file holds
fewer lines than the manifest's ``count``, the errors are recorded and ``_since`` is *not*
advanced, so the next export asks for the same window again (staging ignores what it already
has). When an output file has expired (404/410), the export is dropped from the state and a
new one started with the same ``_since``.

Deletions at the source: besides ``deleted`` files (only incremental exports have them), a
complete *full* system-level export read in one run ends with an ``Inventory`` per exported
type (the ids it holds), and the pipeline marks staged records missing from it deleted
(also one a ``_typeFilter`` no longer selects). Not for patient/group exports (a patient
leaving the group is not a deletion), exports with unreadable lines or short files, or one
resumed after a crash (the ids read before it are not kept).
"""

from __future__ import annotations

import hashlib
import re
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
from adapters.base import Checkpoint, Deleted, Inventory, Item, Record, RecordError, SourceContext
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
from adapters.incremental import copy_state, earlier_bound, run_start
from registry_types.json_limits import describe_json_error

log = structlog.get_logger(__name__)

CHUNK = 64 * 1024
# A connection lost mid-file, as urllib3 raises it from read1() or requests wraps it.
DOWNLOAD_ERRORS = (*BODY_READ_ERRORS, ProtocolError, ReadTimeoutError)
# What a server answers for an output file it no longer keeps (the manifest's ``Expires``).
EXPIRED_STATUSES = frozenset({404, 410})
# New exports started in one run after output files expired; more waits for the next run.
MAX_RESTARTS_PER_RUN = 1
# ``Type/id`` of a deleted entry's request.url (relative or absolute, optional ``_history``).
DELETED_REF = re.compile(r"(?:^|/)([A-Z][A-Za-z]{1,63})/([A-Za-z0-9.\-]{1,64})"
                         r"(?:/_history/[^/]+)?/?$")


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


class OutputExpired(FhirHttpError):
    """An output file answered 404/410: the server no longer keeps this export's files."""


class _EndedMidLine(ProtocolError):
    """The body ended without a final newline: most likely a cut the framing did not show
    (a close-delimited body), so it is retried like any other cut connection."""


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
        state = copy_state(ctx.state)
        since = run_start(ctx, state.get("since"))
        for restarts in range(MAX_RESTARTS_PER_RUN + 1):
            try:
                yield from self.export(state, ctx, since)
                return
            except OutputExpired as exc:
                # Retrying a file the server has dropped would fail forever: forget the export
                # and ask again for the same window (what was already yielded dedups).
                job: dict[str, Any] = state.pop("export", None) or {}
                since = job.get("since_used")
                log.warning("fhir_bulk.output_expired", source=self.name, status=exc.status,
                            path=exc.path)
                yield RecordError(origin=exc.path, code="export-expired",
                                  message=f"{exc}: the export's files have expired; "
                                          "a new export is started with the same _since")
                again = restarts < MAX_RESTARTS_PER_RUN
                yield Checkpoint(state=copy_state(state),
                                 progress="export files expired: " + (
                                     "starting a new export" if again
                                     else "the next run starts a new export"))
                for url in job.get("files") or {}:
                    self.local_file(url).unlink(missing_ok=True)  # partial downloads
                if job.get("status_url"):
                    self._cancel(job["status_url"])

    def export(self, state: dict[str, Any], ctx: SourceContext,
               since: str | None) -> Iterator[Item]:
        """Continue the export in ``state`` (or kick one off with ``since``) to its end."""
        job: dict[str, Any] | None = state.get("export")
        if job is not None and ctx.full and job.get("since_used"):
            # A full export was asked for while an incremental one is pending: drop that one.
            self._cancel(job["status_url"])
            job = None
        if job is None:
            job = self.kick_off(since, ctx.resource_types)
            state["export"] = job
            yield Checkpoint(state=copy_state(state), progress="export accepted")
        if job.get("manifest") is None:
            outcome = yield from self.poll(state, job)
            if outcome is None:
                return
            job["manifest"] = outcome
            job["files"] = {}
            yield Checkpoint(state=copy_state(state), progress="export complete, downloading")
        manifest = job["manifest"]
        needs_token = bool(manifest.get("requiresAccessToken"))
        outputs = [(o, "output") for o in manifest.get("output") or []] + \
                  [(o, "deleted") for o in manifest.get("deleted") or []] + \
                  [(o, "error") for o in manifest.get("error") or []]
        # Ids per type, kept only when this run reads the whole of a full system export.
        ids: dict[str, set[str]] | None = (
            {} if self.cfg.level == "system" and job.get("since_used") is None and not job["files"] else None
        )
        for n, (entry, kind) in enumerate(outputs):
            for item in self.process_file(state, job, n, entry, kind, needs_token):
                if ids is not None and isinstance(item, Record):
                    res = item.resource
                    ids.setdefault(str(res.get("resourceType")), set()).add(str(res.get("id")))
                yield item
        status_url = job["status_url"]
        files = job["files"].values()
        unread = sum(f.get("bad", 0) for f in files)
        short = sum(1 for f in files if f.get("short"))
        if unread or short:
            # Resources after a bad line or missing from a short file were never yielded:
            # keep the window open so the next export fetches them again.
            kept = earlier_bound(state.get("since"), job.get("since_used"))
            final: dict[str, Any] = {"since": kept} if kept else {}
            progress = (f"export done with {unread} unreadable or failed lines and {short} short "
                        "files: _since not advanced")
            log.warning("fhir_bulk.export_incomplete", source=self.name, unreadable=unread,
                        short_files=short)
        else:
            final = {"since": manifest.get("transactionTime") or state.get("since")}
            progress = f"export done: {len(outputs)} files"
            if ids is not None:
                yield from self.inventories(job, manifest, ids)
        yield Checkpoint(state=final, progress=progress)
        # The pipeline has committed the final state by now; tell the server it can clean up.
        self._cancel(status_url)

    def inventories(self, job: Mapping[str, Any], manifest: Mapping[str, Any],
                    ids: Mapping[str, set[str]]) -> Iterator[Inventory]:
        """What a complete full export holds, per exported type. A resource a ``_typeFilter``
        no longer selects (e.g. its code left the spine code set) counts as gone too: it is
        no longer registry data."""
        types = job.get("types") or sorted({str(o.get("type")) for o in manifest.get("output") or []})
        for rtype in types:
            yield Inventory(rtype, frozenset(ids.get(rtype, ())), origin=f"full export {rtype}")

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
        return {"status_url": location, "since_used": since, "manifest": None, "files": {},
                "types": list(types)}

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
                yield Checkpoint(state=copy_state(state), progress=f"export: {progress[:100]}")
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
            yield Checkpoint(state=copy_state(state), progress="export failed")
            return None

    # ------------------------------------------------------------------ files
    def process_file(self, state: dict[str, Any], job: dict[str, Any], n: int,
                     entry: Mapping[str, Any], kind: str, needs_token: bool) -> Iterator[Item]:
        url = str(entry["url"])
        fstate: dict[str, Any] = job["files"].setdefault(url, {"done": False, "downloaded": 0,
                                                              "consumed": 0, "line": 0})
        if fstate["done"]:
            return
        # Counters added later than the rest of the file state: a saved state may lack them.
        fstate.setdefault("items", 0)  # non-blank lines read
        fstate.setdefault("bad", 0)  # lines of output/deleted data that could not be read
        self.work_dir.mkdir(parents=True, exist_ok=True)
        local = self.local_file(url)
        auth = self.auth if needs_token else None
        yield from self.download(url, local, fstate, state, auth)
        rtype = str(entry.get("type") or "")
        label = f"{rtype or kind}-file{n + 1}" if kind != "deleted" else f"deleted-file{n + 1}"
        with local.open("rb") as fh:
            fh.seek(fstate["consumed"])
            line_no = fstate["line"]
            for raw in fh:
                line_no += 1
                fstate["consumed"] += len(raw)
                fstate["line"] = line_no
                line = raw.strip()
                if line:
                    fstate["items"] += 1
                    items = self.items(line, f"{label}:line {line_no}", kind, rtype)
                    # An unreadable line, or a server error about resources it did not export:
                    # either way something was not received.
                    if any(isinstance(i, RecordError) and i.code != "export-warning" for i in items):
                        fstate["bad"] += 1
                    yield from items
                if line_no % self.cfg.checkpoint_every == 0:
                    yield Checkpoint(state=copy_state(state), progress=f"{label}: {line_no} lines")
        expected = entry.get("count")
        if (kind != "error" and isinstance(expected, int) and not isinstance(expected, bool)
                and fstate["items"] < expected):
            # A cut at a line boundary leaves no broken line behind; the count still shows it.
            fstate["short"] = True
            yield RecordError(origin=label, code="bulk-file-short",
                              message=f"{label}: {fstate['items']} lines where the manifest "
                                      f"announced {expected}",
                              resource_type=rtype or None)
        fstate["done"] = True
        yield Checkpoint(state=copy_state(state), progress=f"{label}: done, {line_no} lines")
        local.unlink(missing_ok=True)

    def local_file(self, url: str) -> Path:
        """Where the download of output file ``url`` is kept until its lines are yielded."""
        return self.work_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.ndjson"

    def items(self, line: bytes, origin: str, kind: str, rtype: str) -> list[Item]:
        """What one NDJSON line of a ``kind`` file (output, deleted, error) stands for."""
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return [RecordError(origin=origin, code="malformed-json",
                                message=f"{origin} {describe_json_error(exc, line)}",
                                raw=line, resource_type=rtype or None)]
        if not isinstance(resource, dict):
            return [RecordError(origin=origin, code="not-a-resource",
                                message=f"{origin}: not a JSON object", raw=line)]
        if kind == "error":
            issues = operation_outcome_issues(resource)
            text = "; ".join(f"{i.get('code', '?')}: {i.get('diagnostics', '')}" for i in issues)
            # Only error/fatal issues mean resources are missing; warnings and information
            # (some servers always send them) must not hold the _since window open.
            failed = not issues or any(i.get("severity") in ("error", "fatal") for i in issues)
            return [RecordError(origin=origin, code="export-error" if failed else "export-warning",
                                message=f"server export error: {text or 'no issue'}",
                                raw=line, resource_type="OperationOutcome")]
        if kind == "deleted":
            return _deletions(resource, line, origin)
        return [Record(resource=resource, origin=origin, raw=line)]

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
                    if resp.status_code in EXPIRED_STATUSES:
                        raise _expired(resp, url)
                    raise_for_fhir(resp)
                    if resp.status_code == 206 and _range_start(resp) != have:
                        if not have:
                            raise BulkExportError(f"{url_path(url)}: partial content that was "
                                                  "not asked for")
                        # Not the range asked for: appending it would corrupt the file.
                        log.warning("fhir_bulk.range_mismatch", path=url_path(url))
                        have = 0
                        continue
                    appending = resp.status_code == 206 and have > 0
                    if not appending:
                        have = 0  # the server ignored Range: start the file again
                    start = have
                    with local.open("ab" if appending else "wb") as out:
                        # read1, not iter_content: iter_content buffers a whole chunk and
                        # drops it when the connection dies, losing bytes Range could keep.
                        while chunk := resp.raw.read1(CHUNK):
                            out.write(chunk)
                            have += len(chunk)
                # A body without a final newline may have been cut where no framing shows it
                # (no Content-Length): ask for the rest. The server settles it with 416, an
                # empty 206 or the whole file again (it ignores Range); then that is the file.
                if have and not _ends_with_newline(local) and (
                        "Range" not in headers or (appending and have > start)):
                    raise _EndedMidLine(f"{url_path(url)} ended mid-line at {have} B")
                break
            except DOWNLOAD_ERRORS as exc:
                fstate["downloaded"] = have
                yield Checkpoint(state=copy_state(state), progress=f"download interrupted at {have} B")
                try:
                    retry = retry.increment(method="GET", url=url_path(url), error=exc)
                except MaxRetryError:
                    raise exc from None
                log.warning("fhir_bulk.download_resume", path=url_path(url), offset=have)
                retry.sleep()
        fstate["downloaded"] = have
        fstate["complete"] = True
        yield Checkpoint(state=copy_state(state), progress=f"downloaded {url_path(url)}: {have} B")


def _expired(resp: requests.Response, url: str) -> OutputExpired:
    try:
        body = resp.json()
    except ValueError:
        body = None
    return OutputExpired(resp.status_code, url_path(url), operation_outcome_issues(body))


def _range_start(resp: requests.Response) -> int | None:
    """First byte of a 206 answer, from ``Content-Range: bytes <first>-<last>/<total>``."""
    m = re.match(r"\s*bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"


def _deletions(bundle: Mapping[str, Any], line: bytes, origin: str) -> list[Item]:
    """``Deleted`` for each ``DELETE Type/id`` entry of a Bulk Data 2.0 deleted-file Bundle."""
    if bundle.get("resourceType") != "Bundle":
        return [RecordError(origin=origin, code="bad-deleted-bundle",
                            message=f"{origin}: a deleted file line that is not a Bundle",
                            raw=line)]
    out: list[Item] = []
    for i, entry in enumerate(bundle.get("entry") or []):
        request = entry.get("request") if isinstance(entry, Mapping) else None
        request = request if isinstance(request, Mapping) else {}
        path = str(request.get("url") or "").split("?")[0]
        m = DELETED_REF.search(path)
        if request.get("method") != "DELETE" or m is None:
            out.append(RecordError(origin=f"{origin} entry {i}", code="bad-deleted-entry",
                                   message=f"{origin} entry {i}: not a DELETE of Type/id",
                                   field="Bundle.entry.request", raw=line))
            continue
        out.append(Deleted(resource_type=m.group(1), resource_id=m.group(2),
                           origin=f"{origin} entry {i}"))
    return out
