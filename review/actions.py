"""What reviewers change: cause decisions and code-map additions, each written to the audit log."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from mappings.codemaps import CodeMap, CodeMapError, append_code, display_code, load_codemap
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline, RunCounts
from registry_store import audit
from registry_store.errors import decide_cause
from registry_store.tables import AUDIT_LOG
from review.auth import CurrentUser
from review.code_map_versions import keep_version, restore_version
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
    if site_dir is None:
        # Never the installed package: an upgrade would silently undo the edit.
        raise ActionError(
            "no site folder for code maps is configured: set mappings.codemaps in the config "
            "(e.g. var/site-codemaps) so edits never go into the installed package"
        )
    if cmap.table.parent.resolve() == Path(site_dir).resolve():
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
        target, cmap = _pick_codemap(app, summary, codemap_name)
        cmap = _site_copy(app, cmap)
        previous = keep_version(cmap.table)
        note = f"added in review by {user.username} (cause {cause_id})"
        try:
            append_code(cmap, target.system, target.code, values, note)
        except CodeMapError as exc:
            # The message names the column and the allowed values, never patient data.
            previous.unlink(missing_ok=True)
            raise ActionError(str(exc).split(": ", 1)[-1]) from None
        added = {
            "codemap": cmap.name,
            "file": cmap.table.name,
            "system": target.system,
            "code": target.code,
            "values": {k: v for k, v in values.items() if k in cmap.value_columns},
            # The file as it was, for "Undo" (code_map_versions.py).
            "previous_version": previous.name,
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

    selected, counts = reprocess_audited(app, audited, "re-process the cause again", cause_id=cause_id)
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


def reprocess_audited(
    app: App, audited: Callable[[dict[str, Any]], None], again: str, **selection: Any
) -> tuple[int, RunCounts]:
    """Pipeline.reprocess over ``selection``; a failure is audited, then refused with ``again``
    (what the reviewer should do next). The caller holds _CODEMAP_LOCK."""
    try:
        return Pipeline(app).reprocess(**selection)
    except Exception as exc:
        # Recorded with the error's class only: driver messages may quote patient values.
        audited({"outcome": "failed", "error": type(exc).__name__})
        raise ActionError(
            f"re-processing failed ({type(exc).__name__}); the records are unchanged or pending: {again}"
        ) from exc


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value.isoformat() if hasattr(value, "isoformat") else value


def _pick_codemap(app: App, summary: dict[str, Any], codemap_name: str) -> tuple[CodeTarget, CodeMap]:
    target = code_target(app, summary)
    if target is None:
        raise ActionError("this cause is not a code missing from a code map")
    cmap = next((m for m in target.codemaps if m.name == codemap_name), None)
    if cmap is None:
        raise ActionError(f"code map {codemap_name} does not take {target.system} codes")
    if cmap.lookup(target.system, target.code) is not None:
        raise ActionError(f"{target.system} {target.code} is already in {cmap.name}; re-process instead")
    return target, cmap


def preview_add_code(app: App, cause_id: str, codemap_name: str, values: dict[str, Any]) -> dict[str, Any]:
    """What adding the cause's code would do, computed before anything is saved: the cause's
    records mapped with an edited copy of the code maps in a rolled-back transaction."""
    from registry_adapter.shadow_remap import shadow_remap

    with app.engine.connect() as conn:
        summary = cause_summary(conn, cause_id)
    if summary is None:
        raise ActionError("no such cause")
    with _CODEMAP_LOCK:
        target, cmap = _pick_codemap(app, summary, codemap_name)
        with tempfile.TemporaryDirectory(prefix="codemap-preview-") as tmp:
            folder = Path(tmp)
            site = app.settings.mappings.codemaps
            if site is not None and Path(site).is_dir():
                for path in Path(site).iterdir():
                    if path.is_file():
                        shutil.copy2(path, folder / path.name)
            manifests = cmap.table.parent.glob("*.yaml")
            manifest = next((p for p in manifests if load_codemap(p).name == cmap.name), None)
            if manifest is None:
                raise ActionError(f"cannot find the manifest of code map {cmap.name}")
            shutil.copy2(manifest, folder / manifest.name)
            shutil.copy2(cmap.table, folder / cmap.table.name)
            try:
                edited = load_codemap(folder / manifest.name)
                append_code(edited, target.system, target.code, values, "preview")
            except CodeMapError as exc:
                raise ActionError(str(exc).split(": ", 1)[-1]) from None
            diff = shadow_remap(app, codemaps=folder, cause_id=cause_id).as_dict()
    kinds: dict[str, int] = {}
    for case in diff["changes"]["cases_created"]:
        kind = " ".join(str(v).replace("_", " ") for v in (case["module"], case["category"]) if v)
        kinds[kind] = kinds.get(kind, 0) + 1
    made = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    words = (
        f"creates {diff['cases_created']} case(s)" + (f" ({made})" if made else "")
        + f", removes {diff['cases_removed']}, changes {diff['cases_changed']}"
        + f", clears {diff['errors_cleared']} error(s), adds {diff['errors_added']}"
    )
    return {**diff, "words": words, "codemap": cmap.name, "system": target.system, "code": target.code}


def last_add(conn: Connection, cause_id: str) -> dict[str, Any] | None:
    """The latest code added for this cause in review that was not undone since (for "Undo")."""
    entries = conn.execute(
        select(AUDIT_LOG.c.action, AUDIT_LOG.c.after, AUDIT_LOG.c.at)
        .where(
            AUDIT_LOG.c.target == f"cause:{cause_id}",
            AUDIT_LOG.c.action.in_(["codemap.add_code", "codemap.undo"]),
        )
        .order_by(AUDIT_LOG.c.id.desc())
        .limit(1)
    ).first()
    if entries is None or entries.action != "codemap.add_code" or not entries.after.get("previous_version"):
        return None
    return {**entries.after, "at": entries.at}


def undo_add_code(app: App, user: CurrentUser, cause_id: str) -> dict[str, Any]:
    """Put back the code map as it was before the last code added for this cause, and map the
    records of the cause's resource type again, so its errors (and cases) are as before."""
    with app.engine.connect() as conn:
        summary = cause_summary(conn, cause_id)
        added = last_add(conn, cause_id)
    if summary is None:
        raise ActionError("no such cause")
    if added is None:
        raise ActionError("no code added in review for this cause to undo")
    with _CODEMAP_LOCK:
        cmap = app.codemaps.get(added["codemap"])
        if cmap is None:
            raise ActionError(f"code map {added['codemap']} is no longer configured")
        try:
            restore_version(cmap.table, added["previous_version"])
        except FileNotFoundError as exc:
            raise ActionError(str(exc)) from None
        app.reload_mappings_if_changed()
        selected, _ = Pipeline(app).reprocess(resource_type=summary["resource_type"])
        with app.engine.connect() as conn:
            open_after = open_error_count(conn, cause_id)
        result = {
            "codemap": cmap.name,
            "system": added["system"],
            "code": added["code"],
            "restored_version": added["previous_version"],
            "reprocessed": selected,
            "open_errors": open_after,
        }
        audit.record_alone(
            app.engine,
            username=user.username,
            action="codemap.undo",
            target=f"cause:{cause_id}",
            before={"open_errors": summary["counts"]["open"]},
            after=result,
        )
    return result
