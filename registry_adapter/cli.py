"""``registry-adapter``: the one command line for hospital IT and registry staff."""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from datetime import time as dt_time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import click
from rich.console import Console
from rich.markup import escape

from registry_adapter.feeds.base import ConfigError

# The application, the pipeline and the store (SQLAlchemy, the mapping compiler, alembic, ...)
# are imported by the commands that use them, not here: ``--help``, ``--version`` and a typo
# answer at once, and each command pays only for what it runs.
if TYPE_CHECKING:
    from registry_adapter.app import App
    from registry_adapter.pipeline import RunResult

console = Console(stderr=True, soft_wrap=True)
# soft_wrap: long lines stay whole when output goes to a file or a pipe.
out = Console(soft_wrap=True)


class Ctx:
    def __init__(self, config: Path | None, db: str | None):
        self.config_path = config
        self.db = db
        self._app: App | None = None

    @property
    def app(self) -> App:
        if self._app is None:
            from registry_adapter import logs
            from registry_adapter.app import build_app
            from registry_adapter.config import load_settings

            settings = load_settings(self.config_path)
            logs.configure(settings.logging.format, settings.logging.level)
            app = build_app(settings, self.db)
            app.check_db()
            # The app's long-lived objects (models, mappings, code maps, compiled plans) are
            # never garbage: frozen, the cyclic collector stops re-scanning them at every
            # full collection, which cost ~20 % of an import's CPU.
            gc.freeze()
            self._app = app
        return self._app


pass_ctx = click.make_pass_decorator(Ctx)


def _replan(app: App, reason: str, since: datetime | None) -> None:
    """Run the after-store plug-ins (the scheduler plans reminders there), so that reminders
    follow the cases just stored and the reminder pages are never silently empty.

    ``since``: when the run started; what it stored is stamped at or after it (the cases it
    assembled, the staged records it changed), so a plug-in redoes only that part (None:
    everything).
    """
    from registry_adapter.plugins import AFTER_STORE, plugins

    for plugin in plugins(AFTER_STORE):
        hook = plugin.load()
        if callable(hook):
            hook(app, reason, since)


def _run_started() -> datetime:
    """The time a storing run starts, as the store stamps its rows (``_replan``'s ``since``)."""
    from registry_store.timeutil import utcnow

    return utcnow()


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, dict[str, int]], None]]:
    """A live status line on a terminal; nothing when output goes to a file or a pipe."""
    if not enabled or not console.is_terminal:
        yield lambda _n, _c: None
        return
    with console.status("starting…") as status:

        def update(note: str, counts: dict[str, int]) -> None:
            status.update(
                f"{note or 'working'} · received {counts['received']:,} · new {counts['staged_new']:,}"
                f" · updated {counts['staged_updated']:,} · mapped {counts['mapped']:,}"
                f" · failed {counts['failed']:,}"
            )

        yield update


class _Cli(click.Group):
    """The command group; feature modules' commands join it when it is first asked for them.

    Not at import: ``scheduler.cli`` imports this module, so registering here at import time
    would find it half-initialised (without ``COMMANDS``) whenever it was imported first.
    """

    _plugins_loaded = False

    def _load_plugins(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True
            _register_plugin_commands()
            _accept_global_options_after(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        # A core command that is not a group (``import``, ``sync``, ``reprocess``, ...) runs
        # without importing the plug-in modules (the review UI, SFTP delivery, the reminder
        # channels: a good part of a second); plug-ins add commands and subcommands of the core
        # groups (``cases withdraw``), they never replace a core command.
        command = None if self._plugins_loaded else super().get_command(ctx, cmd_name)
        if command is not None and not isinstance(command, click.Group):
            _accept_global_options(command)
            return command
        self._load_plugins()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugins()
        return super().list_commands(ctx)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path),
    help="Configuration file [default: $REGISTRY_ADAPTER_CONFIG or ./config.yaml].",
)
@click.option("--db", "db", metavar="URL", help="Database URL; overrides database.url in the config.")
@click.version_option(package_name="spine-registry-adapter")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, db: str | None) -> None:
    """Feed the spine registry from hospital FHIR and HL7 v2 sources."""
    ctx.obj = Ctx(config, db)


def _set_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(Ctx).config_path = value


def _set_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(Ctx).db = value


def _accept_global_options_after(group: click.Group) -> None:
    """Give every command ``--config``/``--db`` too, so they work after the command name
    (``registry-adapter stats --db ...``) as well as before it; the value lands in the same
    ``Ctx``, which builds the App only when a command first asks for it."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_global_options_after(command)
            continue
        _accept_global_options(command)


def _accept_global_options(command: click.Command) -> None:
    """``--config``/``--db`` after the name of one command (see ``_accept_global_options_after``)."""
    if not any("--config" in param.opts for param in command.params):
        command.params += [
            click.Option(
                ["--config"],
                type=click.Path(path_type=Path),
                expose_value=False,
                callback=_set_config,
                help="Configuration file (as before the command).",
            ),
            click.Option(
                ["--db"],
                metavar="URL",
                expose_value=False,
                callback=_set_db,
                help="Database URL (as before the command).",
            ),
        ]


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table on a terminal; tab-separated lines (header first) anywhere else, so a file or
    a pipe gets every value whole, never a column cut to the terminal's width."""
    if out.is_terminal:
        from rich.table import Table

        table = Table()
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        out.print(table)
        return
    for row in (columns, *rows):
        click.echo("\t".join(" ".join(("" if v is None else str(v)).split()) for v in row))


def require_known(option: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """A usage error (exit 2) listing the valid values when a value of ``option`` is not one
    of them; for options whose values come from the config or the database, which
    ``click.Choice`` cannot know when the command line is parsed."""
    known = sorted(set(valid))
    unknown = [v for v in given if v not in known]
    if unknown:
        shown = ", ".join(known[:30]) + (f" … ({len(known) - 30} more)" if len(known) > 30 else "")
        raise click.BadParameter(
            f"unknown {', '.join(unknown)}; valid: {shown or 'none (nothing to choose from yet)'}",
            param_hint=f"'{option}'",
        )


def _mapped_types(app: App) -> set[str]:
    return {m.resource_type for m in app.mappings.values()}


def _require_known_cause(app: App, cause_id: str | None) -> None:
    if cause_id is None:
        return
    from sqlalchemy import select

    from registry_store.tables import MAPPING_ERRORS

    with app.engine.connect() as conn:
        causes = conn.execute(select(MAPPING_ERRORS.c.cause_id).distinct()).scalars().all()
    require_known("--cause", [cause_id], causes)


def _summary(result: RunResult, app: App) -> None:
    c = result.counts
    out.print(
        f"[bold]{result.source}[/]: {result.outcome} in {result.seconds:.1f}s — received {c.received:,}, "
        f"invalid {c.invalid:,}, new {c.staged_new:,}, updated {c.staged_updated:,}, "
        f"unchanged {c.unchanged:,}, "
        f"deleted {c.deleted:,}; mapped {c.mapped:,}, failed {c.failed:,}, "
        f"out of scope {c.out_of_scope:,}, excluded {c.excluded:,}"
    )


def _report(app: App) -> None:
    from sqlalchemy import select

    from registry_adapter.pipeline import stats
    from registry_adapter.queries import list_causes
    from registry_store.tables import CASES

    s = stats(app)
    with app.engine.connect() as conn:
        causes = list_causes(conn, limit=15)
        # The diagnoses of the active cases (only that column: whole case rows cost).
        active = select(CASES.c.diagnoses).where(CASES.c.status == "active")
        diag = sum(len(d) for d in conn.execute(active).scalars())
    out.print(
        f"Registry: {s['staged']:,} resources staged · {s['patients']:,} patients · "
        f"{s['cases']:,} cases · {diag:,} case diagnoses · {s['prom_responses']:,} PROM responses · "
        f"{s['out_of_scope']:,} out of scope · {s['errors_open']:,} open mapping errors"
    )
    if causes:
        out.print("\n[bold]Open mapping errors by cause[/] (fix one cause, clear its records):")
        for cause in causes:
            value = f" \\[{escape(cause['value'])}]" if cause["value"] else ""
            out.print(
                f"  {cause['count']:>5} × {cause['code']}{value}  cause {cause['cause_id']}\n"
                f"          {escape(cause['example_message'])}",
                highlight=False,
            )


def _parse_since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | datetime | None:
    """``--since``: a date (YYYY-MM-DD) or an ISO 8601 date-time, with or without an offset."""
    if value is None:
        return None
    text = value.strip()
    try:
        if "T" in text or " " in text:
            return datetime.fromisoformat(text)
        return date.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date (2026-01-31) or a date-time (2026-01-31T08:00, "
            "2026-01-31T08:00:00-06:00, 2026-01-31T14:00:00Z)"
        ) from None


def _fhir_instant(since: date | datetime, tz: ZoneInfo) -> str:
    """A full FHIR instant in the site time zone: a date means its site-local midnight, and a
    date-time without an offset is site-local time (as the hospital's staff would mean it)."""
    if not isinstance(since, datetime):
        since = datetime.combine(since, dt_time.min)
    local = since.astimezone(tz) if since.tzinfo else since.replace(tzinfo=tz)
    return local.isoformat(timespec="milliseconds" if local.microsecond else "seconds")


@cli.command()
@click.option("--source", "source_name", help="Only this configured source.")
@click.option("--full", is_flag=True, help="Ignore watermarks and read everything again.")
@click.option(
    "--since",
    callback=_parse_since,
    metavar="DATE|DATETIME",
    help="Only changes since this date (site-local midnight) or date-time (ISO 8601; without an "
    "offset it is site-local time).",
)
@click.option(
    "--type", "types", multiple=True, help="Only these resource types (repeatable; those the mappings read)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the run results as JSON.")
@pass_ctx
def sync(
    obj: Ctx,
    source_name: str | None,
    full: bool,
    since: date | datetime | None,
    types: tuple[str, ...],
    as_json: bool,
) -> None:
    """Pull the configured sources into the registry store."""
    from adapters.base import SourceContext
    from registry_adapter.pipeline import Pipeline, SourceBusy, describe_failure
    from registry_adapter.sources import build_source, is_pulled

    app = obj.app
    require_known("--type", types, _mapped_types(app))
    since_instant = _fhir_instant(since, app.settings.site.tz) if since is not None else None
    configs = (
        [app.settings.source(source_name)]
        if source_name
        # Listeners are pushed to (see `listen`); everything else is pulled here.
        else [s for s in app.settings.sources if is_pulled(s)]
    )
    if not configs:
        raise click.UsageError("no sources to sync are configured (see sources: in the config file)")
    results = []
    failures: list[str] = []
    started = _run_started()
    with _progress(not as_json) as progress:
        pipeline = Pipeline(app, progress)
        for cfg in configs:
            # One failing feed must not keep the others from syncing; each run row says why.
            try:
                source = build_source(cfg, app)
                results.append(
                    pipeline.ingest(
                        source, SourceContext(full=full, since=since_instant, resource_types=types)
                    )
                )
            except (ConfigError, SourceBusy) as exc:
                failures.append(f"{cfg.name}: {exc}")
            except Exception as exc:
                failures.append(f"{cfg.name}: sync failed ({describe_failure(exc)}); see `runs list`")
    # A partial run kept what it read, but something stopped: the exit code must say so.
    failures += [f"{r.source}: {r.outcome} ({r.failure})" for r in results if r.failure]
    if results:
        _replan(app, "sync", started)
    if as_json:
        for failure in failures:
            console.print(f"✗ {failure}", highlight=False)
        _emit_json(
            [
                {
                    "run_id": r.run_id,
                    "source": r.source,
                    "outcome": r.outcome,
                    "seconds": round(r.seconds, 3),
                    **r.counts.as_dict(),
                }
                for r in results
            ]
        )
        sys.exit(1 if failures else 0)
    for r in results:
        _summary(r, app)
    _report(app)
    for failure in failures:
        console.print(f"[red]✗[/] {escape(failure)}", highlight=False)
    if failures:
        sys.exit(1)


@cli.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--source",
    "source_name",
    default="import",
    show_default=True,
    help="Source name the records are filed under.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run result as JSON.")
@pass_ctx
def import_(obj: Ctx, paths: tuple[Path, ...], source_name: str, as_json: bool) -> None:
    """Load FHIR NDJSON / Bundle files or folders (e.g. a file a hospital sent)."""
    from adapters.base import SourceContext
    from registry_adapter.pipeline import Pipeline
    from registry_adapter.sources import import_source

    app = obj.app
    started = _run_started()
    with _progress(not as_json) as progress:
        result = Pipeline(app, progress).ingest(
            import_source(source_name, list(paths)), SourceContext(full=True), kind="import"
        )
    # Invalid input (binary, empty, unreadable, malformed) is staged as errors: when that is
    # all there was, the import did not do its job and a script must see that.
    nothing_accepted = result.counts.received - result.counts.invalid <= 0
    _replan(app, "import", started)
    if as_json:
        _emit_json(
            {
                "run_id": result.run_id,
                "source": result.source,
                "outcome": result.outcome,
                **result.counts.as_dict(),
            }
        )
    else:
        _summary(result, app)
        _report(app)
    if nothing_accepted:
        why = (
            f"{result.counts.invalid:,} invalid input(s) (see `errors causes`)"
            if result.counts.invalid
            else "no records found"
        )
        console.print(f"[red]✗[/] nothing accepted: {why}", highlight=False)
        sys.exit(1)


@cli.command()
@click.option("--type", "resource_type", help="Only staged records of this resource type.")
@click.option("--cause", "cause_id", help="Only records with an open error of this cause.")
@click.option("--source", "source_name", help="Only records of this source.")
@click.option("--all", "everything", is_flag=True, help="Every staged record, not only failed ones.")
@click.option("--no-map", "no_map", is_flag=True,
              help="Only mark them pending; `registry-adapter worker` processes map them.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_ctx
def reprocess(
    obj: Ctx,
    resource_type: str | None,
    cause_id: str | None,
    source_name: str | None,
    everything: bool,
    no_map: bool,
    as_json: bool,
) -> None:
    """Map staged records again after fixing a mapping or code map (default: failed ones)."""
    from sqlalchemy import select

    from registry_adapter.pipeline import Pipeline
    from registry_store.tables import STAGING

    app = obj.app
    if resource_type is not None:
        with app.engine.connect() as conn:
            staged = conn.execute(select(STAGING.c.resource_type).distinct()).scalars().all()
        require_known("--type", [resource_type], {*staged, *_mapped_types(app)})
    _require_known_cause(app, cause_id)
    started = _run_started()
    with _progress(not as_json) as progress:
        selected, counts = Pipeline(app, progress).reprocess(
            resource_type=resource_type, cause_id=cause_id, source=source_name, everything=everything,
            map_now=not no_map,
        )
    _replan(app, "reprocess", started)
    if as_json:
        _emit_json({"selected": selected, **counts.as_dict()})
        return
    out.print(
        f"Re-processed {selected:,} records: mapped {counts.mapped:,}, failed {counts.failed:,}, "
        f"out of scope {counts.out_of_scope:,}, excluded {counts.excluded:,}"
    )
    _report(app)


@cli.command()
@click.option("--until-idle", is_flag=True, help="Exit when nothing is pending (else wait for more).")
@click.option("--poll", "poll_seconds", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True,
              help="Seconds between looks for pending records when idle.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_ctx
def worker(obj: Ctx, until_idle: bool, poll_seconds: float, as_json: bool) -> None:
    """Map pending staged records beside other workers (PostgreSQL: claims batches with
    SELECT ... FOR UPDATE SKIP LOCKED; run as many as the database and hosts allow)."""
    from registry_adapter.pipeline import Pipeline
    from registry_adapter.worker import run_registered

    app = obj.app
    started = _run_started()
    with _progress(not as_json) as progress:
        pipeline = Pipeline(app, progress)
        counts, last, others = run_registered(pipeline, until_idle=until_idle, poll_seconds=poll_seconds)
    if last:  # the last worker to stop refreshes outcomes and reminders for all of them
        # Since this one started, unless another was already running then (whose writes,
        # and those of any it outlived, may be older): then everything.
        _replan(app, "worker", None if others else started)
    if as_json:
        _emit_json(counts.as_dict())
        return
    out.print(
        f"Worker mapped {counts.mapped:,}, failed {counts.failed:,}, out of scope {counts.out_of_scope:,}, "
        f"excluded {counts.excluded:,}; {counts.cases:,} active cases assembled"
    )


@cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_ctx
def stats_cmd(obj: Ctx, as_json: bool) -> None:
    """Counts of what the registry store holds."""
    from registry_adapter.pipeline import stats

    data = stats(obj.app)
    if as_json:
        _emit_json(data)
        return
    print_table(("what", "count"), [(key.replace("_", " "), value) for key, value in data.items()])


@cli.group()
def cases() -> None:
    """Registry cases (one per index spine surgery)."""


@cases.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per case.")
@click.option("--limit", type=int, default=None, help="At most this many cases.")
@click.option("--include-removed", is_flag=True, help="Also cases whose procedure was withdrawn.")
@pass_ctx
def cases_list(obj: Ctx, as_json: bool, limit: int | None, include_removed: bool) -> None:
    """Cases with module, category, surgery and discharge dates and diagnoses."""
    from registry_adapter.queries import list_cases

    with obj.app.engine.connect() as conn:
        rows = list_cases(conn, limit=limit, include_removed=include_removed)
    if as_json:
        _emit_json(rows)
        return
    print_table(
        ("procedure", "patient", "module", "category", "surgery", "discharge", "diagnoses"),
        [
            (
                r["procedure_id"],
                r["patient_id"],
                r["module"],
                r["category"],
                r["surgery_date"],
                r["discharge_date"],
                ", ".join(r["diagnoses"]),
            )
            for r in rows
        ],
    )


@cli.group()
def errors() -> None:
    """Mapping errors, one per record and problem, grouped into causes."""


@errors.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per error.")
@click.option("--cause", "cause_id", help="Only errors of this cause (an id from `errors causes`).")
@click.option("--limit", type=int, default=None, help="At most this many errors.")
@pass_ctx
def errors_list(obj: Ctx, as_json: bool, cause_id: str | None, limit: int | None) -> None:
    """Open mapping errors: record, code, field, offending value and message."""
    from registry_adapter.queries import list_errors

    _require_known_cause(obj.app, cause_id)
    with obj.app.engine.connect() as conn:
        rows = list_errors(conn, cause_id=cause_id, limit=limit)
    if as_json:
        _emit_json(rows)
        return
    print_table(
        ("cause", "type", "id", "code", "field", "value", "message"),
        [
            [r[k] for k in ("cause_id", "resource_type", "resource_id", "code", "field", "value", "message")]
            for r in rows
        ],
    )


@errors.command("causes")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per cause.")
@pass_ctx
def errors_causes(obj: Ctx, as_json: bool) -> None:
    """Open errors grouped by cause: fix one cause, clear many records."""
    from registry_adapter.queries import list_causes

    with obj.app.engine.connect() as conn:
        rows = list_causes(conn)
    if as_json:
        _emit_json(rows)
        return
    _report(obj.app)


@cli.group()
def runs() -> None:
    """Sync and import runs."""


@runs.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
@click.option("--limit", type=int, default=20, show_default=True, help="The latest this many runs.")
@pass_ctx
def runs_list(obj: Ctx, as_json: bool, limit: int) -> None:
    """Recent sync and import runs with outcome and counts."""
    from registry_adapter.queries import list_runs

    with obj.app.engine.connect() as conn:
        rows = list_runs(conn, limit=limit)
    if as_json:
        _emit_json(rows)
        return
    print_table(
        ("run", "source", "kind", "started", "outcome", "received", "mapped", "failed"),
        [
            (
                r["id"],
                r["source"],
                r["kind"],
                r["started_at"][:19],
                r["outcome"],
                *((r["counts"] or {}).get(k) for k in ("received", "mapped", "failed")),
            )
            for r in rows
        ],
    )


@cli.command()
@click.option("--source", "source_name", help="The configured mllp source (default: the only one).")
@click.option("--port", type=int, help="Override the configured port (0: any free port).")
@pass_ctx
def listen(obj: Ctx, source_name: str | None, port: int | None) -> None:
    """Run the HL7 v2 MLLP listener (ACK after staging; conversion follows in batches)."""
    import asyncio

    from registry_adapter.feeds.mllp import MllpSource
    from registry_adapter.listener import serve

    app = obj.app
    listeners = [s for s in app.settings.sources if isinstance(s, MllpSource)]
    if source_name:
        listeners = [s for s in listeners if s.name == source_name]
    if len(listeners) != 1:
        raise click.UsageError("configure one source of type mllp, or name it with --source")
    asyncio.run(serve(app, listeners[0], port=port))


@cli.group()
def mappings() -> None:
    """Check and try mapping files and code maps; run the SQL-on-FHIR conformance suite."""


@mappings.command("check")
@pass_ctx
def mappings_check(obj: Ctx) -> None:
    """Validate all mapping files, code maps and PROM instruments (file:line messages)."""
    from registry_adapter.mapping_tools import check_all

    problems, counts = check_all(obj.app)
    for problem in problems:
        console.print(f"[red]✗[/] {escape(problem)}", highlight=False)
    summary = ", ".join(f"{v:,} {k}" for k, v in counts.items())
    if problems:
        out.print(f"{len(problems)} problem(s); checked {summary}")
        sys.exit(1)
    out.print(f"all good: {summary}")


@mappings.command("test")
@click.argument("mapping_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("resource_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_ctx
def mappings_test(obj: Ctx, mapping_file: Path, resource_file: Path) -> None:
    """Show the rows and errors MAPPING_FILE produces for one RESOURCE_FILE (JSON)."""
    from registry_adapter.mapping_tools import try_mapping

    _emit_json(try_mapping(obj.app, mapping_file, resource_file))


@mappings.command("diff")
@click.option(
    "--views",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Edited copy of the mappings folder [default: the configured one].",
)
@click.option(
    "--codemaps",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Edited copy of the code-map folder [default: the configured one].",
)
@click.option("--json", "as_json", is_flag=True, help="Counts and field-level changes as one JSON object.")
@pass_ctx
def mappings_diff(obj: Ctx, views: Path | None, codemaps: Path | None, as_json: bool) -> None:
    """What mapping the staged records with edited mappings or code maps would change (nothing
    is written): cases created, removed and changed by field; errors cleared and added."""
    from mappings.codemaps import CodeMapError
    from mappings.engine import MappingFileError
    from registry_adapter.shadow_remap import shadow_remap

    try:
        diff = shadow_remap(obj.app, views, codemaps).as_dict()
    except (CodeMapError, MappingFileError) as exc:
        raise click.ClickException(f"the edited files do not load: {exc}") from None
    if as_json:
        _emit_json(diff)
        return
    out.print(
        f"cases: {diff['cases_created']:,} created, {diff['cases_removed']:,} removed, "
        f"{diff['cases_changed']:,} changed; errors: {diff['errors_cleared']:,} cleared, "
        f"{diff['errors_added']:,} added (nothing was saved)"
    )
    changes = diff["changes"]
    for case in changes["cases_created"]:
        out.print(f"+ case {case['id']}: {case['module']} {case['category']} ({case['surgery_date']})")
    for case in changes["cases_removed"]:
        out.print(f"- case {case['id']}: {case['module']} {case['category']} ({case['surgery_date']})")
    for case in changes["cases_changed"]:
        for name, change in case["fields"].items():
            out.print(f"~ case {case['id']} {name}: {change['before']} -> {change['after']}")
    for sign, key in (("-", "errors_cleared"), ("+", "errors_added")):
        for err in changes[key]:
            record = f"{err['resource_type']}/{err['resource_id']}"
            out.print(f"{sign} error {err['code']} on {record} (cause {err['cause_id']})")


@mappings.command("conformance")
@click.option(
    "--tests",
    "tests_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of SQL-on-FHIR v2 test files.",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the specification's test report JSON here.",
)
def mappings_conformance(tests_dir: Path, report_file: Path | None) -> None:
    """Run the SQL-on-FHIR v2 conformance tests against the view engine."""
    from mappings.conformance import run_suite

    report, passed, total = run_suite(tests_dir)
    if report_file:
        report_file.write_text(json.dumps(report, indent=2) + "\n")
    out.print(
        f"{passed}/{total} tests passed" + (f"; report written to {report_file}" if report_file else "")
    )
    if passed < total:
        sys.exit(1)


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Migrate to this revision.")
@click.pass_obj
def db_upgrade(obj: Ctx, revision: str) -> None:
    """Apply schema migrations (safe to run again)."""
    from registry_adapter import logs
    from registry_adapter.app import build_app
    from registry_adapter.config import load_settings
    from registry_store import migrate
    from registry_store.db import reported_unavailable

    settings = load_settings(obj.config_path)
    logs.configure(settings.logging.format, settings.logging.level)
    app = build_app(settings, obj.db)
    with reported_unavailable(app.engine.url):
        before = migrate.current_revision(app.engine)
    migrate.upgrade(app.engine, revision)
    after = migrate.current_revision(app.engine)
    out.print(f"database at revision {after}" + ("" if before != after else " (already current)"))


@db.command("current")
@click.option("--check", is_flag=True, help="Exit 1 unless the schema is at head (health checks).")
@click.pass_obj
def db_current(obj: Ctx, check: bool) -> None:
    """The database's schema revision and the one this code needs."""
    from registry_adapter.app import build_app
    from registry_adapter.config import load_settings
    from registry_store import migrate
    from registry_store.db import reported_unavailable

    app = build_app(load_settings(obj.config_path), obj.db)
    with reported_unavailable(app.engine.url):
        current = migrate.current_revision(app.engine)
    head = migrate.head_revision(app.engine)
    out.print(f"current {current} · head {head}")
    if check and current != head:
        sys.exit(1)


@db.command("downgrade")
@click.option("--revision", required=True, help="Revision to go back to (see docs/operations.md).")
@click.pass_obj
def db_downgrade(obj: Ctx, revision: str) -> None:
    """Undo schema migrations, before reinstalling an older version (back up first)."""
    from registry_adapter.app import build_app
    from registry_adapter.config import load_settings
    from registry_store import migrate

    app = build_app(load_settings(obj.config_path), obj.db)
    migrate.downgrade(app.engine, revision)
    out.print(f"database at revision {migrate.current_revision(app.engine)}")


# Commands of plugin modules that need an optional extra: listed, and naming the extra when
# run, even where the extra is not installed and the module cannot be imported.
_OPTIONAL_COMMANDS = {"review.cli": ("serve", "users", "month")}


def _register_plugin_commands() -> None:
    """Command groups that live beside their feature (scheduler/cli.py, review/cli.py, ...),
    found through the ``spine_registry_adapter.commands`` entry points (registry_adapter.plugins).

    Each such module exposes ``COMMANDS``: click commands taking the shared ``Ctx`` object.
    """
    from registry_adapter.extras import extra_for, unavailable_command
    from registry_adapter.plugins import COMMANDS, plugins

    for plugin in plugins(COMMANDS, required=True):
        try:
            module = plugin.load()
        except ModuleNotFoundError as exc:
            extra = extra_for(exc)
            if extra is None:
                raise
            for name in _OPTIONAL_COMMANDS.get(plugin.value, ()):
                cli.add_command(unavailable_command(name, extra))
            continue
        for command in getattr(module, "COMMANDS", []):
            cli.add_command(command)


def main() -> None:
    # Everything this process creates (SQLite store, work folders, exports, keys) may hold
    # patient data or secrets: owner-only files (0600) and folders (0700).
    os.umask(0o077)
    # A record's mapping allocates thousands of short-lived containers: a larger first
    # generation collects them in fewer passes (measured: GC 2.1 s -> 0.3 s of an import).
    gc.set_threshold(10_000, 10, 10)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; committed work is kept and the next run resumes")
        sys.exit(130)
    except Exception as exc:
        kind = _reported_failure(exc)
        if kind == "mapping":
            console.print(f"[red]mapping error:[/] {exc}", highlight=False)
        elif kind == "database":
            console.print(f"[red]database error:[/] {escape(str(exc))}", highlight=False)
        else:
            raise
        sys.exit(2)


# Errors ``main`` reports in one line (exit 2), by the module defining them: an error of one of
# these classes can only have been raised once its module was imported, so the modules are
# looked up among those loaded rather than imported here (that would undo the lazy imports).
_REPORTED = (
    ("mappings.engine", "MappingFileError", "mapping"),
    ("mappings.codemaps", "CodeMapError", "mapping"),
    ("registry_store.db", "DatabaseUnavailable", "database"),
    ("registry_store.migrate", "SchemaNotCurrent", "database"),
)


def _reported_failure(exc: Exception) -> str | None:
    for module_name, class_name, kind in _REPORTED:
        module = sys.modules.get(module_name)
        error_class = getattr(module, class_name, None) if module is not None else None
        if isinstance(error_class, type) and isinstance(exc, error_class):
            return kind
    return None
