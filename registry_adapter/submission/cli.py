"""``registry-adapter submit``, ``submissions list|feedback`` and ``measures``."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from registry_adapter.cli import Ctx, out, pass_ctx, print_table

# Submission itself (outcomes, the package, delivery) is imported by the command that runs it:
# listing the command line (``--help``) needs none of it.


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (2025-07-01)") from None


@click.command("submit")
@click.option("--period", metavar="YYYYQn", help="Quarter to submit [default: the last complete quarter].")
@click.option("--since", callback=_date, metavar="DATE", help="Cases operated on from DATE up to today.")
@click.option("--dry-run", is_flag=True, help="Count what would go and what is held back; send nothing.")
@click.option("--output", type=click.Path(path_type=Path), help="Write the package into this folder instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_ctx
def submit(
    obj: Ctx, period: str | None, since: date | None, dry_run: bool, output: Path | None, as_json: bool
) -> None:
    """Build the registry submission package (delta since the last one) and deliver it."""
    from registry_adapter.submission.delivery import DeliveryError
    from registry_adapter.submission.service import SubmissionError, run_submission

    try:
        result = run_submission(obj.app, period=period, since=since, dry_run=dry_run, output=output)
    except (SubmissionError, DeliveryError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _emit(result.as_dict())
        return
    c = result.counts
    verb = "would send" if dry_run else "sent"
    out.print(
        f"{result.period}: {verb} {c['new']} new, {c['changed']} changed, {c['withdrawn']} withdrawn;"
        f" {c['unchanged']} unchanged; {c['held_back']} held back",
        highlight=False,
    )
    for reason, n in result.held_back_by_reason.items():
        out.print(f"  held back: {reason}: {n}", highlight=False)
    if result.package:
        out.print(
            f"package {result.package} (sha256 {result.sha256}) → {result.destination}", highlight=False
        )
    elif not dry_run:
        out.print("nothing new to submit", highlight=False)


@click.group("submissions")
def submissions() -> None:
    """The submission ledger and registry feedback."""


@submissions.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_ctx
def submissions_list(obj: Ctx, as_json: bool) -> None:
    """Packages delivered to the registry, newest first."""
    from registry_store.submissions import SUBMISSIONS

    with obj.app.engine.connect() as conn:
        rows = conn.execute(select(SUBMISSIONS).order_by(SUBMISSIONS.c.id.desc())).all()
    data = [
        {
            "id": r.id,
            "period": r.period,
            "delivered_at": r.delivered_at,
            "package": r.package_name,
            "sha256": r.package_sha256,
            "destination": r.destination,
            "dictionary_version": r.dictionary_version,
            "counts": r.counts,
        }
        for r in rows
    ]
    if as_json:
        _emit(data)
        return
    print_table(
        ["id", "period", "delivered", "new", "changed", "withdrawn", "package"],
        [
            [
                d["id"],
                d["period"],
                str(d["delivered_at"])[:19],
                d["counts"].get("new", 0),
                d["counts"].get("changed", 0),
                d["counts"].get("withdrawn", 0),
                d["package"],
            ]
            for d in data
        ],
    )


@submissions.command("feedback")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_ctx
def submissions_feedback(obj: Ctx, file: Path, as_json: bool) -> None:
    """Turn the registry's validation file (case_id, field, message) into review errors."""
    from registry_adapter.submission.feedback import FeedbackFileError, load_feedback

    try:
        result = load_feedback(obj.app, file)
    except FeedbackFileError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _emit(result.__dict__)
        return
    out.print(f"{result.rows} rows: {result.errors_opened} review errors opened", highlight=False)
    if result.unknown_cases:
        lines = ", ".join(map(str, result.unknown_cases[:20]))
        out.print(f"no submitted case with that key on lines {lines}", highlight=False)


@click.command("measures")
@click.option("--period", metavar="YYYYQn", help="Cases operated on in this quarter [default: all].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_ctx
def measures(obj: Ctx, period: str | None, as_json: bool) -> None:
    """Outcome and PROM figures per module, as the registry measures the site."""
    from registry_adapter.submission.measures import compute_measures
    from registry_adapter.submission.service import SubmissionError

    try:
        data = compute_measures(obj.app, period)
    except SubmissionError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _emit(data)
        return

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}%"

    rows = []
    for module, f in data["modules"].items():
        comp = f["prom_completion"]
        rows.append(
            [
                module,
                f["cases"],
                pct(f["surgical_site_infection_rate"]),
                pct(f["neurological_deficit_rate"]),
                pct(f["return_to_or_90d_rate"]),
                pct(f["readmission_30d_rate"]),
                pct(f["readmission_90d_rate"]),
                f"{pct(comp['baseline'])}/{pct(comp['90d'])}/{pct(comp['1y'])}",
            ]
        )
    out.print(f"period {data['period']}", highlight=False)
    print_table(
        [
            "module",
            "cases",
            "SSI",
            "neuro deficit",
            "return to OR 90d",
            "readmit 30d",
            "readmit 90d",
            "PROM baseline/90d/1y",
        ],
        rows,
    )
    for module, f in data["modules"].items():
        for name, change in f["prom_change"].items():
            if change["pairs"]:
                out.print(
                    f"{module} {name}: mean change {change['mean_change']} ({change['pairs']} pairs)",
                    highlight=False,
                )


COMMANDS = [submit, submissions, measures]
