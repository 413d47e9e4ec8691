"""What reviewers change: cause decisions and code-map additions, each written to the audit log."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mappings.codemaps import CodeMap, CodeMapError, append_code, display_code, load_codemap
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_store import audit
from registry_store.errors import decide_cause
from review.auth import CurrentUser
from review.queries import cause_summary, open_error_count

UNMAPPED_CODE = "codemap.unmapped_code"
# Code-map files and the App's compiled mappings are shared by every request of the process.
_CODEMAP_LOCK = threading.Lock()


class ActionError(Exception):
    """The action cannot be done as asked; the message is safe to show (no patient data)."""


@dataclass(frozen=True)
class CodeTarget:
    """Where the offending code of a cause would be added: system, code and candidate maps."""

    system: str
    code: str
    codemaps: list[CodeMap]


def code_target(app: App, cause: dict[str, Any]) -> CodeTarget | None:
    """For an unmapped-code cause: its code and the code maps whose scope holds it."""
    if cause["code"] != UNMAPPED_CODE or not cause["value"] or "|" not in cause["value"]:
        return None
    system, code = cause["value"].split("|", 1)
    with_system = [m for m in app.codemaps.values() if system in m.systems]
    in_scope = [m for m in with_system if m.in_scope(system, code)]
    maps = in_scope or with_system
    # The form staff read and write in the CSV (M48.9, not M489); lookups normalise either way.
    return CodeTarget(system, display_code(system, code), maps) if maps else None


def _decide(app: App, user: CurrentUser, cause_id: str, status: str, reason: str, action: str) -> int:
    with app.engine.begin() as conn:
        summary = cause_summary(conn, cause_id)
        if summary is None:
            raise ActionError("no such cause")
        before = {"counts": summary["counts"], "decision": _plain(summary["decision"])}
        changed = decide_cause(conn, cause_id, status=status, reason=reason, by=user.username)
        after_summary = cause_summary(conn, cause_id)
        assert after_summary is not None
        audit.record(
            conn,
            username=user.username,
            action=action,
            target=f"cause:{cause_id}",
            before=before,
            after={"counts": after_summary["counts"], "decision": {"status": status, "reason": reason}},
        )
    return changed


def ignore_cause(app: App, user: CurrentUser, cause_id: str, reason: str) -> int:
    """Mark every open error of the cause ignored; returns how many."""
    reason = reason.strip()
    if not reason:
        raise ActionError("give a reason for ignoring this cause")
    return _decide(app, user, cause_id, "ignored", reason[:2000], "cause.ignore")


def reopen_cause(app: App, user: CurrentUser, cause_id: str) -> int:
    return _decide(app, user, cause_id, "open", "", "cause.reopen")


def _site_copy(app: App, cmap: CodeMap) -> CodeMap:
    """The code map as a file in the site folder (copied there first if it is the bundled one).

    Edits must land where the site keeps its code maps, or the next upgrade of the adapter
    would overwrite them.
    """
    site_dir = app.settings.mappings.codemaps
    if site_dir is None or cmap.table.parent.resolve() == Path(site_dir).resolve():
        return cmap
    site_dir.mkdir(parents=True, exist_ok=True)
    manifest = next((p for p in cmap.table.parent.glob("*.yaml") if load_codemap(p).name == cmap.name), None)
    if manifest is None:
        raise ActionError(f"cannot find the manifest of code map {cmap.name}")
    shutil.copy2(manifest, site_dir / manifest.name)
    shutil.copy2(cmap.table, site_dir / cmap.table.name)
    return load_codemap(site_dir / manifest.name)


def add_code_and_reprocess(
    app: App, user: CurrentUser, cause_id: str, codemap_name: str, values: dict[str, Any]
) -> dict[str, Any]:
    """Add the cause's code to a code map, then re-process the cause: two audited steps.

    The code-map change is audited (``codemap.add_code``) in its own transaction right after
    the file is written, so it is on record even if re-processing then fails; re-processing is
    audited on its own (``cause.reprocess``) and can be repeated from the cause's page.
    """
    with app.engine.connect() as conn:
        summary = cause_summary(conn, cause_id)
    if summary is None:
        raise ActionError("no such cause")
    with _CODEMAP_LOCK:
        target = code_target(app, summary)
        if target is None:
            raise ActionError("this cause is not a code missing from a code map")
        cmap = next((m for m in target.codemaps if m.name == codemap_name), None)
        if cmap is None:
            raise ActionError(f"code map {codemap_name} does not take {target.system} codes")
        if cmap.lookup(target.system, target.code) is not None:
            raise ActionError(f"{target.system} {target.code} is already in {cmap.name}; re-process instead")
        cmap = _site_copy(app, cmap)
        note = f"added in review by {user.username} (cause {cause_id})"
        try:
            append_code(cmap, target.system, target.code, values, note)
        except CodeMapError as exc:
            # The message names the column and the allowed values, never patient data.
            raise ActionError(str(exc).split(": ", 1)[-1]) from None
        added = {
            "codemap": cmap.name,
            "file": cmap.table.name,
            "system": target.system,
            "code": target.code,
            "values": {k: v for k, v in values.items() if k in cmap.value_columns},
        }
        audit.record_alone(
            app.engine,
            username=user.username,
            action="codemap.add_code",
            target=f"cause:{cause_id}",
            before={"open_errors": summary["counts"]["open"]},
            after=added,
        )
        # The App compiled mappings against the old tables: rebuild both before re-mapping.
        app.reload_mappings_if_changed()
        try:
            done = _reprocess_locked(app, user, cause_id, summary["counts"]["open"])
        except ActionError as exc:
            raise ActionError(
                f"{target.system.upper()} {target.code} was added to {cmap.name}, but {exc}"
            ) from exc
    return {**added, **done}


def reprocess_cause(app: App, user: CurrentUser, cause_id: str) -> dict[str, Any]:
    """Map the cause's open records again (after a mapping or code-map fix made elsewhere)."""
    with app.engine.connect() as conn:
        summary = cause_summary(conn, cause_id)
    if summary is None:
        raise ActionError("no such cause")
    if not summary["counts"]["open"]:
        raise ActionError("this cause has no open records to re-process")
    with _CODEMAP_LOCK:
        # Pick up code-map files edited outside the UI since the mappings were compiled.
        app.reload_mappings_if_changed()
        return _reprocess_locked(app, user, cause_id, summary["counts"]["open"])


def _reprocess_locked(app: App, user: CurrentUser, cause_id: str, open_before: int) -> dict[str, Any]:
    """Re-map the cause's records and audit the outcome, failure included (caller holds the lock)."""

    def audited(after: dict[str, Any]) -> None:
        audit.record_alone(
            app.engine,
            username=user.username,
            action="cause.reprocess",
            target=f"cause:{cause_id}",
            before={"open_errors": open_before},
            after=after,
        )

    try:
        selected, counts = Pipeline(app).reprocess(cause_id=cause_id)
    except Exception as exc:
        # Recorded with the error's class only: driver messages may quote patient values.
        audited({"outcome": "failed", "error": type(exc).__name__})
        raise ActionError(
            f"re-processing failed ({type(exc).__name__}); the records are unchanged or pending: "
            "re-process the cause again"
        ) from exc
    with app.engine.connect() as conn:
        open_after = open_error_count(conn, cause_id)
    result = {
        "reprocessed": selected,
        "mapped": counts.mapped,
        "failed": counts.failed,
        "open_errors": open_after,
    }
    audited({"outcome": "done", **result})
    return result


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value.isoformat() if hasattr(value, "isoformat") else value
