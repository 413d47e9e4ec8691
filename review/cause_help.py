"""A cause of mapping errors in a coordinator's words: the catalogue entry, whether
re-processing can help now, and a plain-text block to paste into an IT ticket.

The ticket holds ids, counts and codes only, never patient data: the offending value is
included only for codes whose value is itself a code or a form URL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mappings import codemaps as codemaps_module
from mappings import engine as mapping_engine
from registry_adapter.app import App
from registry_adapter.error_catalogue import ErrorInfo, info

# Codes whose offending value is a code or a URL (safe to put in a ticket).
VALUE_IS_A_CODE = ("codemap.", "prom.unknown_instrument", "hl7.unsupported_message", "hl7.unknown_code")


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def newest_mapping_edit(app: App) -> datetime | None:
    """When a code map or mapping file (bundled or the site's) was last changed."""
    m = app.settings.mappings
    newest: float | None = None
    for folder in (codemaps_module.BUNDLED, m.codemaps, m.directory or mapping_engine.BUNDLED):
        if folder is None or not Path(folder).is_dir():
            continue
        for path in Path(folder).iterdir():
            if path.is_file():
                mtime = path.stat().st_mtime
                newest = mtime if newest is None else max(newest, mtime)
    return datetime.fromtimestamp(newest, UTC) if newest is not None else None


def reprocess_helps(
    app: App, cause: dict[str, Any], entry: ErrorInfo | None, started_at: datetime, fixed_in_codemap: bool
) -> tuple[bool, str]:
    """(offer "Re-process"?, why): only when a fix that re-processing applies can have happened
    since the errors were last seen. A missing code is re-processed once it is in a code map
    (the add-code form does both in one step)."""
    if not cause["counts"]["open"]:
        return False, "no open records"
    if cause["code"] == "codemap.unmapped_code":
        if fixed_in_codemap:
            return True, "the code is in a code map now"
        return False, "the code is not in a code map yet: add it above"
    if entry is not None and not entry.reprocess:
        return False, "the hospital must send the record again; the next sync picks it up by itself"
    last_seen = _aware(cause["last_seen"])
    edited = newest_mapping_edit(app)
    if edited is not None and edited > last_seen:
        return True, "a mapping or code map changed since these errors were recorded"
    if _aware(started_at) > last_seen:
        return True, "the adapter restarted (its configuration may have changed) since these errors"
    return False, "nothing changed since these errors were recorded: fix the cause first"


def ticket_text(
    site_id: str, cause: dict[str, Any], entry: ErrorInfo | None, examples: list[dict[str, Any]]
) -> str:
    """The "copy for an IT ticket" block: cause, counts, example ids and the fix needed."""
    counts = cause["counts"]
    title = entry.title if entry else cause["code"]
    value = cause.get("value")
    shown_value = f" [{value}]" if value and str(cause["code"]).startswith(VALUE_IS_A_CODE) else ""
    lines = [
        f"Spine registry adapter, site {site_id}: {title}",
        f"Error code: {cause['code']}{shown_value}; cause {cause['cause_id']}",
        f"Records: {counts['open']} open, {counts['ignored']} ignored, {counts['resolved']} resolved",
        f"Seen: first {_aware(cause['first_seen']):%Y-%m-%d %H:%M} UTC,"
        f" last {_aware(cause['last_seen']):%Y-%m-%d %H:%M} UTC",
        f"Mapping: {cause['mapping']} ({cause['resource_type']}"
        + (f", field {cause['field']})" if cause.get("field") else ")"),
        "Example records: "
        + (", ".join(f"{e['resource_type']}/{e['resource_id']} (source {e['source']})" for e in examples)
           or "none"),
    ]
    if entry is not None:
        lines += [f"What happened: {entry.explanation}", f"Fix needed ({entry.fixer}): {entry.next_step}"]
    return "\n".join(lines)


__all__ = ["info", "newest_mapping_edit", "reprocess_helps", "ticket_text"]
