"""FHIR REST search source: incremental per resource type, or patient by patient.

Incremental sync, per resource type::

    GET [base]/[Type]?_lastUpdated=gt<watermark - overlap>&_sort=_lastUpdated&_count=N&<params>

then ``Bundle.link[next]`` is followed exactly as given (servers make it opaque). The
watermark of a type is the highest ``meta.lastUpdated`` seen; a ``Checkpoint`` carrying it is
yielded only after that page's records, so a crash resumes after the last committed page.
Overlap (``overlap_seconds``) re-reads a short window to absorb clock skew and ties across a
page boundary; staging drops the repeats by content hash. If the server does not honour
``_sort=_lastUpdated`` (pages come back out of order) a mid-type watermark would skip data,
so the type's watermark then only moves when the type is complete (set
``sort_by_last_updated: false`` for such servers: a crash before the disorder is noticed
could otherwise resume past a row).

Servers that page by plain offset over a live result set (rather than a snapshot or cursor,
as HAPI, Epic and Cerner do) shift later pages when a resource changes mid-sync, which can
skip a row. When a resource already seen in the traversal comes back with a newer version,
the type's watermark goes back to where that traversal started, so the next run reads the
window again (a crash before the shift is noticed can still lose the row). A row skipped
because another was *deleted* mid-sync cannot be noticed this way; a full sync catches it.

State (``Checkpoint.state``)::

    {"types": {"Procedure": {"watermark": "2026-...Z"}, ...},
     "patients": {"watermark": "...", "cohort": [ids], "run": {...}}}   # patient-scoped mode

Deletions: a complete read by type (``sync --full``, or the first sync) ends with an
``Inventory`` per type, the ids the server still has (found by search or as references); the
pipeline marks staged records of the type that are missing from it deleted at the source
(also one the type's ``search_params`` no longer select: it left the registry's scope). No
inventory is given when any type stopped or its result set shifted (a row may have been
skipped), nor in patient-scoped mode (patients leave a cohort without being deleted).
Optionally, ``detect_deletes`` also reads type-level ``[Type]/_history?_since=`` after an
incremental search and yields ``Deleted`` for DELETE entries (HAPI, Azure and Google servers
support it; Medplum has instance-level history only, so the test server adds type-level
history); a server that refuses it (4xx/501) is logged once per type and the sync goes on,
relying on the next full sync. A resource set to ``entered-in-error`` arrives as an update.

A malformed page (not JSON, not a Bundle) is staged as an error and stops only its resource
type (or, patient-scoped, its patient): that type's watermark stays at its last good page and
the other types go on. After yielding everything else, ``read`` raises
:class:`SyncIncomplete`, so the pipeline records the run as partial (what was committed stays)
and the next run resumes the stopped parts.

Referenced Patients and Encounters (``subject``/``patient``/``encounter``) that were not
among the yielded resources are read once per run with ``[Type]?_id=a,b,...``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import orjson
import requests
import structlog

from adapters.auth import AuthConfig, make_auth
from adapters.base import (
    Checkpoint,
    Deleted,
    Inventory,
    Item,
    JSONDict,
    Record,
    RecordError,
    SourceContext,
    SourceIncomplete,
)
from adapters.http import (
    FhirHttpError,
    HttpConfig,
    get_with_body_retry,
    make_session,
    raise_for_fhir,
    url_path,
)
from adapters.incremental import (
    TypeWatermark,
    copy_state,
    format_instant,
    last_updated_filter,
    later,
)
from registry_types.json_limits import describe_json_error

log = structlog.get_logger(__name__)

DEFAULT_TYPES = ("Patient", "Encounter", "Procedure", "Condition", "QuestionnaireResponse")
REFERENCE_FIELDS = ("subject", "patient", "encounter")
REFERENCED_TYPES = ("Patient", "Encounter")


@dataclass(frozen=True, slots=True)
class PatientScope:
    """Patient-scoped mode: find the cohort, then read each patient's resources.

    The cohort is the members of ``group_id`` when set, or the Patient items of the FHIR
    List ``list_id`` (Epic exposes patient lists as List; entries marked ``deleted`` are left
    out), else the subjects of a ``cohort_type`` search with ``cohort_params`` (e.g. spine CPT
    codes). ``patient_params`` overrides the search parameter linking a type to its patient.
    """

    group_id: str | None = None
    list_id: str | None = None
    cohort_type: str = "Procedure"
    cohort_params: str = ""
    patient_params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.group_id and self.list_id:
            raise ValueError("set group_id or list_id, not both")

    def param_for(self, resource_type: str) -> str:
        if resource_type == "Patient":
            return "_id"
        return self.patient_params.get(resource_type, "patient")


@dataclass(frozen=True, slots=True)
class FhirRestConfig:
    """One FHIR REST source. ``search_params`` maps a type to extra query text
    (``"code=http://www.ama-assn.org/go/cpt|22633,22551"``)."""

    base_url: str
    resource_types: tuple[str, ...] = DEFAULT_TYPES
    search_params: Mapping[str, str] = field(default_factory=dict)
    page_size: int = 100
    overlap_seconds: float = 300.0
    sort_by_last_updated: bool = True
    patient_scoped: PatientScope | None = None
    fetch_references: bool = True
    detect_deletes: bool = False
    auth: AuthConfig = field(default_factory=AuthConfig)
    http: HttpConfig = field(default_factory=HttpConfig)


class SyncIncomplete(SourceIncomplete):
    """Some resource types or patients stopped at a malformed page; everything else was read.

    Raised only after the source has yielded (and checkpointed) all it could, so the pipeline
    keeps and maps what was committed and records the run as partial with this message; the next run
    resumes the stopped parts from their last good page.
    """

    def __init__(self, stopped: Mapping[str, str]) -> None:
        self.stopped = dict(stopped)
        parts = "; ".join(f"{what} at {origin}" for what, origin in self.stopped.items())
        super().__init__(f"stopped at a malformed page: {parts} (everything else was synced; "
                         "the next sync resumes from the last good page)")


class MalformedPage(Exception):
    """A page that is not a usable Bundle; ``origin`` names its URL path and page number."""

    def __init__(self, code: str, message: str, origin: str) -> None:
        super().__init__(message)
        self.code = code
        self.origin = origin


@dataclass(slots=True)
class _Page:
    path: str
    number: int
    bundle: JSONDict
    server_time: str | None


def _last_updated(resource: Mapping[str, Any]) -> str | None:
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, Mapping) else None
    return value if isinstance(value, str) else None


class FhirRestSource:
    """A :class:`adapters.base.Source` reading a FHIR R4 server by REST search."""

    def __init__(self, name: str, config: FhirRestConfig,
                 session: requests.Session | None = None) -> None:
        self.name = name
        self.cfg = config
        self.base = config.base_url.rstrip("/")
        self.session = session or make_session(config.http)
        self.auth = make_auth(config.auth, self.base, config.http)

    # ------------------------------------------------------------------ entry point
    def read(self, ctx: SourceContext) -> Iterator[Item]:
        """Yield everything readable; then raise :class:`SyncIncomplete` if a malformed page
        stopped a resource type or patient, so the run is recorded as partial, not succeeded."""
        types = tuple(t for t in self.cfg.resource_types
                      if not ctx.resource_types or t in ctx.resource_types)
        run = _Run(self, ctx, types)
        if self.cfg.patient_scoped is not None:
            yield from run.patient_scoped(self.cfg.patient_scoped)
        else:
            yield from run.by_type()
            if run.complete and not run.stopped:
                for rtype in types:
                    yield Inventory(rtype, frozenset(run.ids.get(rtype, ())),
                                    origin=f"{url_path(self.base)}/{rtype} complete search")
                yield run.checkpoint("complete read: ids compared with what is staged")
        if run.stopped:
            raise SyncIncomplete(run.stopped)

    # ------------------------------------------------------------------ HTTP
    def get_page(self, url: str, number: int, expect: tuple[str, ...] = ("Bundle",)) -> _Page:
        """Fetch one page (a Bundle, or one of ``expect``); :class:`MalformedPage` when it is
        not JSON or not of an expected type."""
        resp = get_with_body_retry(self.session, url, self.cfg.http, auth=self.auth,
                                   headers={"Accept": "application/fhir+json"})
        raise_for_fhir(resp)
        path = url_path(url)
        try:
            bundle = orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise MalformedPage("malformed-page",
                                f"page {number} of {path} {describe_json_error(exc, resp.content)}",
                                f"{path} page {number}") from None
        if not isinstance(bundle, dict) or bundle.get("resourceType") not in expect:
            raise MalformedPage("not-a-bundle",
                                f"page {number} of {path} is not a {' or '.join(expect)}",
                                f"{path} page {number}")
        date = resp.headers.get("Date")
        server_time = format_instant(parsedate_to_datetime(date)) if date else None
        return _Page(path, number, bundle, server_time)

    def search_url(self, resource_type: str, params: Mapping[str, str], extra: str = "") -> str:
        query = urlencode(params, safe=",|:")
        if extra:
            query = f"{query}&{extra}" if query else extra
        return f"{self.base}/{resource_type}?{query}"

    def pages(self, first_url: str, expect: tuple[str, ...] = ("Bundle",)) -> Iterator[_Page]:
        url: str | None = first_url
        number = 1
        while url:
            page = self.get_page(url, number, expect)
            yield page
            url = next((str(link.get("url")) for link in page.bundle.get("link") or []
                        if isinstance(link, Mapping) and link.get("relation") == "next"
                        and link.get("url")), None)
            number += 1


class _Run:
    """One ``read()``: the working state of a sync run."""

    def __init__(self, source: FhirRestSource, ctx: SourceContext, types: tuple[str, ...]):
        self.src = source
        self.cfg = source.cfg
        self.ctx = ctx
        self.types = types
        self.state: dict[str, Any] = copy_state(ctx.state)
        self.seen: set[str] = set()  # "Type/id/version" yielded in this run
        self.known_refs: set[str] = set()  # "Type/id" yielded or already looked up
        self.counts: dict[str, int] = {}
        self.stopped: dict[str, str] = {}  # what stopped at a malformed page -> page origin
        self.ids: dict[str, set[str]] = {}  # type -> ids yielded in this run
        # Every type read without a _lastUpdated filter and no result set shifted: the ids
        # yielded are all the server has (see Inventory).
        self.complete = True

    # ------------------------------------------------------------------ helpers
    def since_for(self, watermark: str | None) -> tuple[str, str] | None:
        """The ``_lastUpdated`` filter for a run starting from ``watermark``."""
        return last_updated_filter(self.ctx, watermark, self.cfg.overlap_seconds)

    def search_params(self, since: tuple[str, str] | None) -> dict[str, str]:
        params = {"_count": str(self.cfg.page_size)}
        if self.cfg.sort_by_last_updated:
            params["_sort"] = "_lastUpdated"
        if since:
            params["_lastUpdated"] = f"{since[0]}{since[1]}"
        return params

    def checkpoint(self, progress: str) -> Checkpoint:
        return Checkpoint(state=copy_state(self.state), progress=progress)

    def records(self, page: _Page) -> Iterator[Record | RecordError]:
        for i, entry in enumerate(page.bundle.get("entry") or []):
            origin = f"{page.path} page {page.number} entry {i}"
            resource = entry.get("resource") if isinstance(entry, Mapping) else None
            if not isinstance(resource, dict) or not resource.get("resourceType"):
                yield RecordError(origin=origin, code="entry-without-resource",
                                  message=f"{origin} has no resource", field="entry.resource")
                continue
            if resource.get("resourceType") == "OperationOutcome":
                continue  # search warnings, not data
            ref = f"{resource['resourceType']}/{resource.get('id')}"
            meta = resource.get("meta")
            version = (meta.get("versionId") or meta.get("lastUpdated")
                       if isinstance(meta, Mapping) else None)
            key = f"{ref}/{version}"
            if key in self.seen:
                # The same version twice in one run (offset paging, references): once is
                # enough. A newer version of it is a different key and is yielded.
                continue
            self.seen.add(key)
            self.known_refs.add(ref)
            self.ids.setdefault(resource["resourceType"], set()).add(str(resource.get("id")))
            self.counts[resource["resourceType"]] = self.counts.get(resource["resourceType"], 0) + 1
            yield Record(resource=resource, origin=origin)

    def references(self, page: _Page) -> Iterator[Record | RecordError]:
        """Read referenced Patients/Encounters not yet yielded in this run."""
        if not self.cfg.fetch_references:
            return
        wanted: dict[str, set[str]] = {t: set() for t in REFERENCED_TYPES}
        for entry in page.bundle.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, Mapping) else None
            if not isinstance(resource, Mapping):
                continue
            for fld in REFERENCE_FIELDS:
                ref = resource.get(fld)
                ref = ref.get("reference") if isinstance(ref, Mapping) else None
                if not isinstance(ref, str):
                    continue
                if ref.startswith(self.src.base + "/"):
                    ref = ref[len(self.src.base) + 1:]
                parts = ref.split("/")
                if len(parts) == 2 and parts[0] in wanted and ref not in self.known_refs:
                    wanted[parts[0]].add(parts[1])
        for rtype, ids in wanted.items():
            ordered = sorted(ids)
            for start in range(0, len(ordered), self.cfg.page_size):
                chunk = ordered[start:start + self.cfg.page_size]
                url = self.src.search_url(rtype, {"_id": ",".join(chunk),
                                                  "_count": str(len(chunk))})
                for ref_page in self.src.pages(url):
                    yield from self.records(ref_page)
                for missing in chunk:
                    # Not found or not visible: remember so it is asked for once per run.
                    self.known_refs.add(f"{rtype}/{missing}")

    # ------------------------------------------------------------------ by type
    def by_type(self) -> Iterator[Item]:
        types_state: dict[str, Any] = self.state.setdefault("types", {})
        for rtype in self.types:
            tstate = types_state.setdefault(rtype, {})
            previous = tstate.get("watermark")
            since = self.since_for(previous)
            self.complete = self.complete and since is None
            url = self.src.search_url(rtype, self.search_params(since),
                                      self.cfg.search_params.get(rtype, ""))
            mark = TypeWatermark(previous, sorted_pages=self.cfg.sort_by_last_updated)
            deletions_from: str | None = None
            log.info("fhir_rest.type_start", source=self.src.name, type=rtype,
                     incremental=since is not None)
            try:
                for page in self.src.pages(url):
                    for entry in page.bundle.get("entry") or []:
                        res = entry.get("resource") if isinstance(entry, Mapping) else None
                        mode = (entry.get("search") or {}).get("mode", "match") \
                            if isinstance(entry, Mapping) else "match"
                        lu = _last_updated(res) if isinstance(res, Mapping) else None
                        if (lu is None or not isinstance(res, Mapping) or mode != "match"
                                or res.get("resourceType") != rtype):
                            continue
                        events = mark.see(str(res.get("id")), lu)
                        if "unsorted" in events:
                            log.warning("fhir_rest.unsorted_pages", type=rtype,
                                        page=page.number)
                        if "shifted" in events:
                            # A resource we already had came back newer: the server pages by
                            # offset over a live result set, so a row may have been skipped.
                            self.complete = False
                            log.warning("fhir_rest.result_set_shifted", type=rtype,
                                        page=page.number)
                    yield from self.records(page)
                    yield from self.references(page)
                    # Unsorted or shifting pages: a watermark committed from earlier pages
                    # may be past a row still to come, so it stays where the type started.
                    tstate["watermark"] = mark.after_page
                    yield self.checkpoint(f"{rtype}: page {page.number}, "
                                          f"{self.counts.get(rtype, 0)} resources")
                if self.cfg.detect_deletes and since is not None:
                    deletions_from = since[1]
                    yield from self.deletions(rtype, deletions_from)
            except MalformedPage as exc:
                # Only this type stops: its watermark stays at the end of its last good page
                # (set above), so the next run reads from there; the other types go on. A
                # history page that fails leaves deletions unread since the previous watermark,
                # so the type goes back there.
                if deletions_from is not None:
                    tstate["watermark"] = previous
                yield RecordError(origin=exc.origin, code=exc.code, message=str(exc),
                                  resource_type=rtype)
                log.error("fhir_rest.malformed_page", type=rtype, error=str(exc))
                self.stopped[rtype] = exc.origin
                yield self.checkpoint(f"{rtype}: stopped at a malformed page")
                continue
            # After a shift the watermark stays where this traversal started, so the next run
            # reads the window again.
            tstate["watermark"] = mark.at_end
            yield self.checkpoint(f"{rtype}: done, {self.counts.get(rtype, 0)} resources")

    def deletions(self, rtype: str, since: str) -> Iterator[Item]:
        params = {"_since": since, "_count": str(self.cfg.page_size)}
        url = f"{self.src.base}/{rtype}/_history?{urlencode(params)}"
        try:
            yield from self._history_deletions(url)
        except FhirHttpError as exc:
            if exc.status >= 500 and exc.status != 501:
                raise
            # Type-level history is optional in FHIR; a server without it must not fail the
            # source: deletions are then found by the next full sync (Inventory).
            log.warning("fhir_rest.history_unsupported", source=self.src.name, type=rtype,
                        status=exc.status)

    def _history_deletions(self, url: str) -> Iterator[Item]:
        for page in self.src.pages(url):
            for i, entry in enumerate(page.bundle.get("entry") or []):
                request = entry.get("request") if isinstance(entry, Mapping) else None
                if not isinstance(request, Mapping) or request.get("method") != "DELETE":
                    continue
                ref = str(request.get("url", "")).split("?")[0].split("/")
                if len(ref) >= 2:
                    yield Deleted(resource_type=ref[-2], resource_id=ref[-1],
                                  origin=f"{page.path} page {page.number} entry {i}")

    # ------------------------------------------------------------------ patient-scoped
    def cohort(self, scope: PatientScope) -> tuple[list[str], str | None]:
        """Patient ids of the cohort, and the server's time when the cohort was read."""
        ids: set[str] = set()
        server_time: str | None = None
        if scope.group_id:
            page = self.src.get_page(f"{self.src.base}/Group/{scope.group_id}", 1,
                                     expect=("Group",))
            group = page.bundle
            server_time = page.server_time
            members = [m.get("entity", {}).get("reference", "") for m in group.get("member", [])]
        elif scope.list_id:
            members = []
            # A read answers with the List; a server that pages a long list answers with
            # Bundle pages holding it, and their next links are followed.
            for page in self.src.pages(f"{self.src.base}/List/{scope.list_id}",
                                       expect=("List", "Bundle")):
                server_time = server_time or page.server_time
                lists = ([page.bundle] if page.bundle.get("resourceType") == "List" else
                         [e.get("resource") for e in page.bundle.get("entry") or []
                          if isinstance(e, Mapping)])
                for lst in lists:
                    if not isinstance(lst, Mapping) or lst.get("resourceType") != "List":
                        continue
                    for item in lst.get("entry") or []:
                        if not isinstance(item, Mapping) or item.get("deleted") is True:
                            continue  # removed from the list
                        ref = item.get("item")
                        if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
                            members.append(ref["reference"])
        else:
            url = self.src.search_url(scope.cohort_type, {"_count": str(self.cfg.page_size)},
                                      scope.cohort_params)
            members = []
            for page in self.src.pages(url):
                server_time = server_time or page.server_time
                for entry in page.bundle.get("entry") or []:
                    res = entry.get("resource") or {}
                    for fld in ("subject", "patient"):
                        ref = res.get(fld)
                        if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
                            members.append(ref["reference"])
        for ref in members:
            parts = str(ref).split("/")
            if len(parts) >= 2 and parts[-2] == "Patient":
                ids.add(parts[-1])
        return sorted(ids), server_time

    def patient_scoped(self, scope: PatientScope) -> Iterator[Item]:
        pstate: dict[str, Any] = self.state.setdefault("patients", {})
        run: dict[str, Any] | None = pstate.get("run")
        if run is None:
            cohort, server_time = self.cohort(scope)
            run = {"cohort": cohort, "after": None, "started": server_time,
                   "since": pstate.get("watermark"), "high": pstate.get("watermark")}
            pstate["run"] = run
            yield self.checkpoint(f"cohort of {len(cohort)} patients")
        known = set(pstate.get("cohort") or [])
        since_known = self.since_for(run["since"])
        for pid in run["cohort"]:
            if run["after"] is not None and pid <= run["after"]:
                continue
            # A patient new to the cohort is read in full: their older data was never synced.
            since = since_known if pid in known else self.since_for(None)
            try:
                for rtype in self.types:
                    value = pid if rtype == "Patient" else f"Patient/{pid}"
                    params = self.search_params(since)
                    params[scope.param_for(rtype)] = value
                    url = self.src.search_url(rtype, params, self.cfg.search_params.get(rtype, ""))
                    for page in self.src.pages(url):
                        for entry in page.bundle.get("entry") or []:
                            res = entry.get("resource")
                            if isinstance(res, Mapping):
                                run["high"] = later(run["high"], _last_updated(res))
                        yield from self.records(page)
                        yield from self.references(page)
            except MalformedPage as exc:
                # This patient stops; the others go on, and the run ends incomplete (below).
                yield RecordError(origin=exc.origin, code=exc.code, message=str(exc))
                log.error("fhir_rest.malformed_page", patient=pid, error=str(exc))
                self.stopped[f"Patient/{pid}"] = exc.origin
                run.setdefault("failed", []).append(pid)
            run["after"] = pid
            yield self.checkpoint(f"patient {run['cohort'].index(pid) + 1} of "
                                  f"{len(run['cohort'])}")
        failed = run.pop("failed", [])
        for pid in failed:  # also those of a run that crashed after noting them
            self.stopped.setdefault(f"Patient/{pid}", "a page read by an interrupted run")
        if failed:
            # The run is not over: the next one reads only the patients that stopped, from the
            # same window; the others count as known from now on.
            pstate["cohort"] = sorted(known | (set(run["cohort"]) - set(failed)))
            pstate["run"] = {**run, "cohort": failed, "after": None}
            yield self.checkpoint(f"{len(failed)} of {len(run['cohort'])} patients stopped at a "
                                  "malformed page")
            return
        # The run's start on the server clock bounds what this run saw for every patient;
        # a patient's data changed after its turn is newer than that, so it is re-read next run.
        pstate["watermark"] = run["started"] or run["high"]
        pstate["cohort"] = sorted(known | set(run["cohort"]))
        del pstate["run"]
        yield self.checkpoint(f"done: {len(run['cohort'])} patients")
