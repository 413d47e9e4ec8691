"""Registry feedback: the registry's validation/rejection file turned into review errors.

The file is CSV with a header: ``case_id`` (the case key the package carried; ``case_key`` is
accepted too), ``field`` and ``message``. Each row opens an error on the case's anchor
procedure record, grouped by field, so staff see it beside the case's other errors.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from registry_adapter.app import App
from registry_store.errors import Issue
from registry_store.submissions import ITEMS, add_feedback_errors
from registry_store.tables import CASES
from registry_store.tables import PROCEDURES as PROCS


class FeedbackFileError(Exception):
    """The feedback file cannot be read; the message names the file and line."""


@dataclass
class FeedbackResult:
    rows: int = 0
    errors_opened: int = 0
    # line numbers whose case key no submission carried
    unknown_cases: list[int] = field(default_factory=list)


def load_feedback(app: App, path: Path) -> FeedbackResult:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeedbackFileError(f"{path}: cannot read the feedback file: {exc}") from None
    reader = csv.DictReader(text.splitlines())
    header = {h.strip().lower() for h in reader.fieldnames or []}
    key_col = "case_id" if "case_id" in header else "case_key"
    if key_col not in header or "field" not in header or "message" not in header:
        raise FeedbackFileError(f"{path}:1: expected the columns case_id, field, message")
    result = FeedbackResult()
    with app.engine.begin() as conn:
        keys: dict[str, str] = dict(conn.execute(select(ITEMS.c.case_key, ITEMS.c.case_id)).all())
        for line, raw in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            result.rows += 1
            case_id = keys.get(row.get(key_col, ""))
            case = conn.execute(select(CASES).where(CASES.c.id == case_id)).first() if case_id else None
            anchor = (
                conn.execute(
                    select(PROCS.c.staging_id).where(
                        PROCS.c.source == case.source, PROCS.c.id == case.procedure_id
                    )
                ).scalar_one_or_none()
                if case is not None
                else None
            )
            if case is None or anchor is None:
                result.unknown_cases.append(line)
                continue
            fld = row.get("field", "")[:200]
            issue = Issue(
                "registry.rejected",
                f"the registry rejected case {case.id}: {row.get('message', '')[:500]}",
                field=fld,
                value=fld or None,
                rule="registry_feedback",
            )
            result.errors_opened += add_feedback_errors(
                conn, case.source, anchor, "Procedure", case.procedure_id, [issue]
            )
    return result
