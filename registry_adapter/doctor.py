"""``registry-adapter doctor``: is this installation ready to go live?

Each check prints one pass/fail/skip line, and a fix for each failure. Nothing is written to
the registry store or sent to anyone: the FHIR checks only read (one record per type), the
SMTP check says NOOP, the webhook check opens a TCP connection and closes it. The exit code
is the number of failed checks.

A new check is a function ``(Doctor) -> Iterable[Result]`` appended to ``CHECKS``, or, for a
check that belongs to another package, listed by that package's ``spine_registry_adapter.doctor``
entry point (``scheduler/doctor.py`` checks the reminder channels).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import packages_distributions, version
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import requests
from rich.markup import escape
from sqlalchemy import text

from adapters.auth import AuthError, OAuthClientAuth, make_auth
from adapters.fhir_bulk import FhirBulkConfig
from adapters.fhir_rest import FhirRestConfig
from adapters.http import make_session
from registry_adapter import logs
from registry_adapter.app import App, build_app
from registry_adapter.cli import Ctx, out, pass_ctx
from registry_adapter.config import ConfigError, Settings, load_settings
from registry_adapter.extras import DISTRIBUTION
from registry_adapter.feeds.fhir_bulk import FhirBulkSource
from registry_adapter.feeds.fhir_rest import FhirRestSource
from registry_adapter.feeds.mllp import MllpSource
from registry_adapter.plugins import DOCTOR, plugins

Status = Literal["pass", "fail", "skip"]

# Free space below this on a data folder fails: a nightly full sync or a Bulk export of a
# large hospital needs a few GB of staging and download room.
MIN_FREE_BYTES = 2 * 1024**3
# Clock skew above this fails: incremental FHIR syncs ask for changes since the last run's
# server time, less the sources' overlap (5 minutes by default); tokens carry exp/iat too.
MAX_CLOCK_SKEW_SECONDS = 60.0
# Network checks give up quickly: doctor reports, it does not wait out an outage.
NETWORK_TIMEOUT = (5.0, 15.0)


@dataclass(frozen=True)
class Result:
    check: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class Doctor:
    config_path: Path | None
    db: str | None
    settings: Settings | None = None
    app: App | None = None


Check = Callable[[Doctor], Iterable[Result]]


def passed(check: str, detail: str) -> Result:
    return Result(check, "pass", detail)


def failed(check: str, detail: str, fix: str) -> Result:
    return Result(check, "fail", detail, fix)


def skipped(check: str, detail: str) -> Result:
    return Result(check, "skip", detail)


# -- installation, configuration, database, host ----------------------------------------------


def check_installation(doc: Doctor) -> Iterator[Result]:
    """No other distribution installs one of our top-level packages into this environment.

    ``adapters`` and ``scheduler`` are also PyPI projects; pip lets the one installed last
    overwrite the other's files without a warning (docs/install.md, "Package names").
    """
    owners = packages_distributions()
    ours = sorted(name for name, dists in owners.items() if DISTRIBUTION in dists)
    if not ours:
        yield skipped("installation", f"{DISTRIBUTION} is not installed (running from a source tree)")
        return
    clashes = {name: sorted(set(owners[name]) - {DISTRIBUTION}) for name in ours}
    clashes = {name: others for name, others in clashes.items() if others}
    if clashes:
        shared = "; ".join(f"`{name}` also from {', '.join(others)}" for name, others in clashes.items())
        yield failed(
            "installation",
            f"packages shared with other distributions: {shared}",
            "install the adapter into a virtual environment of its own (docs/install.md)",
        )
        return
    yield passed("installation", f"{DISTRIBUTION} {version(DISTRIBUTION)}; packages {', '.join(ours)}")


def check_configuration(doc: Doctor) -> Iterator[Result]:
    try:
        doc.settings = load_settings(doc.config_path)
        logs.configure(doc.settings.logging.format, doc.settings.logging.level)
    except ConfigError as exc:
        yield failed("configuration", str(exc), "correct the named key (see config.example.yaml)")
        return
    yield passed("configuration", f"{len(doc.settings.sources)} source(s) configured")


def check_database(doc: Doctor) -> Iterator[Result]:
    if doc.settings is None:
        yield skipped("database", "no valid configuration")
        return
    from registry_store import migrate

    try:
        doc.app = build_app(doc.settings, doc.db)
        with doc.app.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current = migrate.current_revision(doc.app.engine)
        head = migrate.head_revision(doc.app.engine)
    except Exception as exc:
        # The driver's message names host and database, never row data (hide_parameters).
        yield failed(
            "database",
            f"cannot connect: {type(exc).__name__}: {str(exc).splitlines()[0]}",
            "check database.url, that the server runs and that the user may log in",
        )
        return
    if current != head:
        yield failed(
            "database",
            f"schema at revision {current or 'none'}, code expects {head}",
            "run `registry-adapter db upgrade` (back up first, see docs/operations.md)",
        )
        return
    yield passed("database", f"reachable, schema at revision {head}")


def _data_folders(settings: Settings, db_url: str) -> list[Path]:
    """Folders the adapter writes to: the SQLite store, Bulk downloads, HL7 v2 drop folders."""
    folders: list[Path] = []
    if db_url.startswith("sqlite:///") and ":memory:" not in db_url:
        folders.append(Path(db_url.removeprefix("sqlite:///")).parent)
    for src in settings.sources:
        if isinstance(src, FhirBulkSource) and src.settings.work_dir:
            folders.append(Path(src.settings.work_dir))
        path = getattr(src, "path", None)
        if isinstance(path, Path):
            folders.append(path)
    return folders


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk_space(doc: Doctor) -> Iterator[Result]:
    if doc.settings is None or doc.app is None:
        yield skipped("disk space", "no valid configuration or database")
        return
    folders = _data_folders(doc.settings, doc.app.db_url)
    if not folders:
        yield skipped("disk space", "no local data folders (PostgreSQL, no file sources)")
        return
    for folder in dict.fromkeys(folders):
        free = shutil.disk_usage(_existing_ancestor(folder)).free
        if free < MIN_FREE_BYTES:
            yield failed(
                "disk space",
                f"{folder}: {free / 1024**3:.1f} GB free, fewer than {MIN_FREE_BYTES / 1024**3:.0f} GB",
                "free space on that file system or move the folder (see the config file)",
            )
        else:
            yield passed("disk space", f"{folder}: {free / 1024**3:.1f} GB free")


def check_time_zone(doc: Doctor) -> Iterator[Result]:
    if doc.settings is None:
        yield skipped("time zone", "no valid configuration")
        return
    name = doc.settings.site.timezone
    try:
        now = datetime.now(ZoneInfo(name))
    except ZoneInfoNotFoundError:
        yield failed("time zone", f"{name}: no time zone data", "install the tzdata package")
        return
    yield passed("time zone", f"site.timezone {name}: now {now.isoformat(timespec='minutes')}")


# -- FHIR sources -----------------------------------------------------------------------------


class _Fhir:
    """Read-only requests to one FHIR source, without the sync's long retry schedule."""

    def __init__(self, name: str, cfg: FhirRestConfig | FhirBulkConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.base = cfg.base_url.rstrip("/")
        self.http = dataclasses.replace(cfg.http, retries=0, timeout=NETWORK_TIMEOUT)
        self.session = make_session(self.http)

    def check(self, what: str) -> str:
        return f"{self.name}: {what}"

    def get(self, path: str, auth: requests.auth.AuthBase | None = None) -> requests.Response:
        return self.session.get(
            f"{self.base}/{path}",
            headers={"Accept": "application/fhir+json"},
            auth=auth,
            timeout=self.http.timeout,
        )


def _json(resp: requests.Response) -> dict[str, Any]:
    """The JSON object of a response; empty for anything else (an HTML error page, ...)."""
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


_SET_CREDENTIAL = "set the environment variable the source's auth: names (e.g. in secrets.env)"


def _unreachable(check: str, exc: Exception) -> Result:
    return failed(
        check,
        f"no answer: {type(exc).__name__}",
        "check base_url, DNS, firewall, proxy and the CA bundle (http.verify)",
    )


def _capability(
    fhir: _Fhir, auth: requests.auth.AuthBase | None
) -> tuple[list[Result], dict[str, Any] | None]:
    check = fhir.check("CapabilityStatement")
    try:
        # With the token: the spec lets servers protect metadata too.
        resp = fhir.get("metadata", auth)
    except requests.RequestException as exc:
        return [_unreachable(check, exc)], None
    body = _json(resp)
    if resp.status_code in (401, 403):
        answer = f"GET metadata answered {resp.status_code}"
        return [failed(check, answer, "configure auth: for this source")], None
    if resp.status_code != 200 or body.get("resourceType") != "CapabilityStatement":
        return [
            failed(check, f"GET metadata answered {resp.status_code}", "check base_url (the FHIR R4 base)")
        ], None
    results = [passed(check, f"FHIR {body.get('fhirVersion', '?')} at {fhir.base}")]
    if not str(body.get("fhirVersion", "")).startswith("4.0"):
        results = [
            failed(check, f"FHIR {body.get('fhirVersion')}, not R4", "point base_url at the R4 endpoint")
        ]
    results.append(_clock_skew(fhir, resp))
    return results, body


def _clock_skew(fhir: _Fhir, resp: requests.Response) -> Result:
    check = fhir.check("clock skew")
    date = resp.headers.get("Date")
    if not date:
        return skipped(check, "the server sends no Date header")
    skew = (datetime.now(UTC) - parsedate_to_datetime(date)).total_seconds()
    if abs(skew) > MAX_CLOCK_SKEW_SECONDS:
        return failed(
            check,
            f"this host is {skew:+.0f} s off the server's clock",
            "synchronise this host's clock (chrony/systemd-timesyncd against the hospital's NTP)",
        )
    return passed(check, f"{skew:+.0f} s against the server's Date header")


def _auth(fhir: _Fhir) -> tuple[list[Result], requests.auth.AuthBase | None]:
    auth_cfg = fhir.cfg.auth
    smart, token = fhir.check("SMART configuration"), fhir.check("token request")
    if auth_cfg.method not in ("client_credentials", "smart_backend"):
        reason = f"auth method {auth_cfg.method} needs no token"
        try:
            plain = make_auth(auth_cfg, fhir.base, fhir.http)
        except AuthError as exc:  # a credential's environment variable is not set
            return [skipped(smart, reason), failed(token, str(exc), _SET_CREDENTIAL)], None
        return [skipped(smart, reason), skipped(token, reason)], plain
    results: list[Result] = []
    try:
        resp = fhir.get(".well-known/smart-configuration")
        found = resp.status_code == 200 and "token_endpoint" in _json(resp)
    except requests.RequestException:
        found = False
    if found:
        results.append(passed(smart, "token endpoint advertised"))
    elif auth_cfg.token_url:
        results.append(skipped(smart, "not published; auth.token_url is configured"))
    else:
        results.append(
            failed(smart, "no .well-known/smart-configuration", "set auth.token_url for this source")
        )
    try:
        auth = OAuthClientAuth(auth_cfg, fhir.base, fhir.http)
        auth.token()
    except (AuthError, requests.RequestException) as exc:
        results.append(
            failed(token, str(exc), "check client_id, its secret or key, scope, and the server's client list")
        )
        return results, None
    results.append(passed(token, f"access token granted for scope {auth_cfg.scope}"))
    return results, auth


def _searches(fhir: _Fhir, auth: requests.auth.AuthBase | None, types: Iterable[str]) -> Iterator[Result]:
    for rtype in types:
        check = fhir.check(f"search {rtype}")
        try:
            resp = fhir.get(f"{rtype}?_count=1", auth)
        except requests.RequestException as exc:
            yield _unreachable(check, exc)
            continue
        if resp.status_code == 200 and _json(resp).get("resourceType") == "Bundle":
            yield passed(check, "one-record search answered")
        elif resp.status_code in (401, 403):
            yield failed(check, f"answered {resp.status_code}", "grant this client read access to the type")
        else:
            yield failed(check, f"answered {resp.status_code}", "check the resource type and the server log")


def _exports(capability: dict[str, Any]) -> bool:
    """Whether the CapabilityStatement declares $export (Bulk Data Access IG)."""
    for rest in capability.get("rest", []):
        ops = [*rest.get("operation", [])]
        for resource in rest.get("resource", []):
            ops += resource.get("operation", [])
        if any(op.get("name") == "export" or str(op.get("definition", "")).endswith("/export") for op in ops):
            return True
    return any("bulk-data" in str(url) for url in capability.get("instantiates", []))


def check_fhir_sources(doc: Doctor) -> Iterator[Result]:
    if doc.settings is None:
        yield skipped("FHIR sources", "no valid configuration")
        return
    sources = [s for s in doc.settings.sources if isinstance(s, FhirRestSource | FhirBulkSource)]
    if not sources:
        yield skipped("FHIR sources", "none configured")
    for src in sources:
        fhir = _Fhir(src.name, src.settings)
        auth_results, auth = _auth(fhir)
        yield from auth_results
        if any(r.status == "fail" for r in auth_results if r.check == fhir.check("token request")):
            continue  # without a token every other request fails too: one cause, one line
        results, capability = _capability(fhir, auth)
        yield from results
        if capability is None:
            continue
        if isinstance(src, FhirBulkSource):
            check = fhir.check("Bulk kick-off")
            if _exports(capability):
                yield passed(check, "$export is declared")
            else:
                yield failed(
                    check,
                    "the CapabilityStatement declares no $export",
                    "enable Bulk Data on the server, or use a fhir_rest source",
                )
        yield from _searches(fhir, auth, src.settings.resource_types)


# -- listeners and outbound channels ----------------------------------------------------------


def check_mllp_ports(doc: Doctor) -> Iterator[Result]:
    if doc.settings is None:
        yield skipped("MLLP port", "no valid configuration")
        return
    listeners = [s for s in doc.settings.sources if isinstance(s, MllpSource)]
    if not listeners:
        yield skipped("MLLP port", "no mllp source configured")
    for src in listeners:
        check = f"{src.name}: MLLP port {src.host}:{src.port}"
        try:
            with socket.create_connection((src.host, src.port), timeout=NETWORK_TIMEOUT[0]):
                pass
            yield passed(check, "listening (the adapter, or whatever holds the port: see `ss -ltnp`)")
            continue
        except OSError:
            pass
        try:
            with socket.socket(socket.AF_INET6 if ":" in src.host else socket.AF_INET) as probe:
                probe.bind((src.host, src.port))
        except OSError as exc:
            yield failed(
                check,
                f"cannot listen: {exc.strerror}",
                "pick a free port or address (ports below 1024 need CAP_NET_BIND_SERVICE)",
            )
            continue
        yield passed(check, "free")


def check_sftp(doc: Doctor) -> Iterator[Result]:
    # Registry submission over SFTP has no setting yet; its check goes here when it does.
    yield skipped("SFTP", "no SFTP upload is configured (not supported yet)")


CHECKS: list[Check] = [
    check_installation,
    check_configuration,
    check_database,
    check_disk_space,
    check_time_zone,
    check_fhir_sources,
    check_mllp_ports,
]
# Last, after the checks plug-ins add (``spine_registry_adapter.doctor`` entry points, e.g.
# the scheduler's SMTP and webhook checks).
LAST_CHECKS: list[Check] = [check_sftp]


def all_checks() -> list[Check]:
    """The core checks, then each plug-in's (by entry point name), then ``LAST_CHECKS``."""
    added: list[Check] = []
    for plugin in plugins(DOCTOR):
        checks = plugin.load()
        if not isinstance(checks, list | tuple) or not all(callable(c) for c in checks):
            raise TypeError(f"entry point {plugin.name} = {plugin.value} is not a list of checks")
        added.extend(checks)
    return [*CHECKS, *added, *LAST_CHECKS]


def run_checks(
    config_path: Path | None, db: str | None, checks: Iterable[Check] | None = None
) -> list[Result]:
    doc = Doctor(config_path, db)
    checks = all_checks() if checks is None else checks
    results: list[Result] = []
    for check in checks:
        results.extend(check(doc))
    if doc.app is not None:
        doc.app.engine.dispose()
    return results


_MARKS = {"pass": "[green]✓[/]", "fail": "[red]✗[/]", "skip": "[dim]-[/]"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@pass_ctx
def doctor(obj: Ctx, as_json: bool) -> None:
    """Go-live readiness: configuration, database, disk, time, sources and channels.

    One line per check, with a fix for each failure; the exit code is the number of failures.
    """
    results = run_checks(obj.config_path, obj.db)
    failures = sum(r.status == "fail" for r in results)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    else:
        for r in results:
            line = f"{_MARKS[r.status]} {escape(r.check)}: {escape(r.detail)}"
            out.print(line + (f"\n    fix: {escape(r.fix)}" if r.fix else ""), highlight=False)
        out.print(f"{failures} check(s) failed" if failures else "ready: no check failed")
    # Exit codes above 125 mean signals to shells.
    sys.exit(min(failures, 125))


COMMANDS = [doctor]
