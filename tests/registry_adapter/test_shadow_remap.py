"""`mappings diff`: the staged records mapped with edited copies inside a rolled-back
transaction, on SQLite and PostgreSQL. The preview's counts equal what applying the edit then
does, and the store is left exactly as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from mappings.codemaps import BUNDLED, append_code, load_codemap
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_adapter.shadow_remap import shadow_remap
from registry_store.tables import CASES, MAPPING_ERRORS, STAGING
from tests.conftest import write_config_file
from tests.review.conftest import UNLISTED_CAUSE, fill

VALUES = {"category": "other_lumbar_fusion", "module": "lumbar", "role": "index", "rank": "10",
          "label": "Unlisted procedure, spine"}  # fmt: skip


def fingerprint(app: App) -> dict[str, Any]:
    """Everything a remap could touch, compared whole."""
    with app.engine.connect() as conn:
        return {
            "cases": sorted(tuple(map(str, r)) for r in conn.execute(select(CASES))),
            "errors": sorted(
                tuple(map(str, r))
                for r in conn.execute(
                    select(MAPPING_ERRORS.c.id, MAPPING_ERRORS.c.status, MAPPING_ERRORS.c.cause_id)
                )
            ),
            "staging": sorted(
                tuple(map(str, r))
                for r in conn.execute(select(STAGING.c.id, STAGING.c.status, STAGING.c.updated_at))
            ),
        }


def edited_codemaps(tmp_path: Path) -> Path:
    copy = tmp_path / "edited-codemaps"
    shutil.copytree(BUNDLED, copy)
    append_code(load_codemap(copy / "spine-procedures.yaml"), "cpt", "22899", dict(VALUES), "test")
    return copy


def test_preview_changes_nothing_and_predicts_the_apply(
    make_app: Callable[..., App], db_url: str, tmp_path: Path
) -> None:
    site = tmp_path / "site-codemaps"
    shutil.copytree(BUNDLED, site)
    app = make_app(db_url, mappings={"codemaps": str(site)})
    fill(app)
    before = fingerprint(app)
    with app.engine.connect() as conn:
        cases_before = conn.execute(select(func.count()).select_from(CASES)).scalar_one()

    preview = shadow_remap(app, codemaps=edited_codemaps(tmp_path)).as_dict()
    assert fingerprint(app) == before  # nothing written
    assert preview["cases_created"] == 3 and preview["cases_removed"] == 0
    assert preview["errors_cleared"] == 3
    assert {e["cause_id"] for e in preview["changes"]["errors_cleared"]} == {UNLISTED_CAUSE}
    created = {c["id"] for c in preview["changes"]["cases_created"]}

    # The same edit applied for real (the site's code map, then re-process) does what it said.
    append_code(load_codemap(site / "spine-procedures.yaml"), "cpt", "22899", dict(VALUES), "test")
    app.reload_mappings_if_changed()
    Pipeline(app).reprocess(everything=True)
    with app.engine.connect() as conn:
        now = {r for r in conn.execute(select(CASES.c.id).where(CASES.c.status == "active")).scalars()}
        open_cause = conn.execute(
            select(func.count()).where(
                MAPPING_ERRORS.c.cause_id == UNLISTED_CAUSE, MAPPING_ERRORS.c.status == "open"
            )
        ).scalar_one()
    assert created <= now and len(now) == cases_before + preview["cases_created"]
    assert open_cause == 0


def test_unchanged_copies_preview_no_change(make_app: Callable[..., App], tmp_path: Path) -> None:
    app = make_app()
    fill(app)
    copy = tmp_path / "same"
    shutil.copytree(BUNDLED, copy)
    diff = shadow_remap(app, codemaps=copy).as_dict()
    assert {k: diff[k] for k in ("cases_created", "cases_removed", "cases_changed", "errors_added")} == {
        "cases_created": 0, "cases_removed": 0, "cases_changed": 0, "errors_added": 0,
    }  # fmt: skip


def test_cli_mappings_diff_json(make_app: Callable[..., App], tmp_path: Path) -> None:
    fill(make_app())
    config = write_config_file(tmp_path, migrate=False)
    exe = str(Path(sys.executable).with_name("registry-adapter"))
    proc = subprocess.run(
        [exe, "--config", str(config), "mappings", "diff", "--codemaps", str(edited_codemaps(tmp_path)),
         "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    keys = {"cases_created", "cases_removed", "cases_changed", "errors_cleared", "errors_added", "changes"}
    assert keys <= set(result)
    assert result["cases_created"] == 3
    broken = tmp_path / "broken"
    shutil.copytree(BUNDLED, broken)
    (broken / "spine-procedures.csv").write_text("system,code\ncpt\n")
    proc = subprocess.run(
        [exe, "--config", str(config), "mappings", "diff", "--codemaps", str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "the edited files do not load" in proc.stderr
