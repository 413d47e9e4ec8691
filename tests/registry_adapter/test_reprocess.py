"""`registry-adapter reprocess` as registry staff run it: by resource type, and everything.

Each test syncs the sample feed with the real command, then re-processes and reads the store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mappings.codemaps import BUNDLED as BUNDLED_CODEMAPS
from registry_store.db import make_engine
from tests.registry_adapter.test_cli import run, write_config


def _rows(db: str, sql: str) -> set[tuple[Any, ...]]:
    engine = make_engine(db)
    try:
        with engine.connect() as conn:
            return {tuple(r) for r in conn.execute(text(sql))}
    finally:
        engine.dispose()


def _count(db: str, sql: str) -> int:
    ((n,),) = _rows(db, sql)
    return int(n)


OPEN_ERRORS = "SELECT resource_type, resource_id, code FROM mapping_errors WHERE status = 'open'"
STAGED = "SELECT resource_type, resource_id, status FROM staging"


def _sync(tmp_path: Path, db_url: str, **overrides: Any) -> Path:
    cfg = write_config(tmp_path, database={"url": db_url}, **overrides)
    run("sync", "--json", config=cfg)
    return cfg


def test_reprocess_a_type_after_a_code_map_fix_clears_its_errors(tmp_path: Path, db_url: str) -> None:
    _sync(tmp_path, db_url)
    before = _rows(db_url, OPEN_ERRORS)
    # The sample feed has two Conditions coded M48.9, which the code map does not list.
    unmapped = {r for r in before if r[0] == "Condition"}
    assert unmapped == {
        ("Condition", "cond-unmapped-1", "codemap.unmapped_code"),
        ("Condition", "cond-unmapped-2", "codemap.unmapped_code"),
    }
    n_conditions = _count(db_url, "SELECT count(*) FROM staging WHERE resource_type = 'Condition'")

    # Registry staff add the code to the site's copy of the code map, then re-process Conditions.
    site_maps = tmp_path / "codemaps"
    shutil.copytree(BUNDLED_CODEMAPS, site_maps)
    with (site_maps / "spine-diagnoses.csv").open("a", encoding="utf-8") as fh:
        fh.write("icd10cm,M48.9,exact,other_spine,,Spondylopathy unspecified,added by test\r\n")
    cfg = write_config(tmp_path, database={"url": db_url}, mappings={"codemaps": str(site_maps)})
    result = json.loads(run("reprocess", "--type", "Condition", "--json", config=cfg).stdout)

    # Every staged Condition (not only the failed ones) went through mapping again.
    assert result["selected"] == n_conditions
    assert result["failed"] == 0
    assert result["mapped"] + result["out_of_scope"] + result["excluded"] == n_conditions
    assert _rows(
        db_url, "SELECT status, count(*) FROM staging WHERE resource_type = 'Condition' GROUP BY status"
    ) == {
        ("mapped", result["mapped"]),
        ("out_of_scope", result["out_of_scope"]),
    }
    # The fixed records left the error list; the other types' errors were not touched.
    assert _rows(db_url, OPEN_ERRORS) == before - unmapped
    assert _rows(
        db_url, "SELECT resource_id, status FROM mapping_errors WHERE resource_type = 'Condition'"
    ) == {("cond-unmapped-1", "resolved"), ("cond-unmapped-2", "resolved")}
    assert _rows(
        db_url, "SELECT id, code, category FROM conditions WHERE id IN ('cond-unmapped-1', 'cond-unmapped-2')"
    ) == {("cond-unmapped-1", "M48.9", "other_spine"), ("cond-unmapped-2", "M48.9", "other_spine")}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_reprocess_all_maps_every_staged_record_again_and_changes_nothing(
    tmp_path: Path, db_url: str
) -> None:
    cfg = _sync(tmp_path, db_url)
    staged, errors = _rows(db_url, STAGED), _rows(db_url, OPEN_ERRORS)
    cases = _rows(db_url, "SELECT id, procedure_id, category, status FROM cases")
    by_status = dict(_rows(db_url, "SELECT status, count(*) FROM staging GROUP BY status"))
    # Input that never parsed is not re-mapped (nothing in it could map now).
    unparsed = _count(db_url, "SELECT count(*) FROM staging WHERE content_type = 'application/octet-stream'")
    assert unparsed == 1

    result = json.loads(run("reprocess", "--all", "--json", config=cfg).stdout)
    assert result["selected"] == len(staged) - unparsed
    assert (result["mapped"], result["failed"], result["out_of_scope"], result["excluded"]) == (
        by_status["mapped"],
        by_status["failed"],
        by_status["out_of_scope"],
        by_status["excluded"],
    )
    # Nothing changed in the mappings, so nothing changed in the store.
    assert _rows(db_url, STAGED) == staged
    assert _rows(db_url, OPEN_ERRORS) == errors
    assert _rows(db_url, "SELECT id, procedure_id, category, status FROM cases") == cases

    # Without --all or a filter only the failed records are selected.
    failed_only = json.loads(run("reprocess", "--json", config=cfg).stdout)
    assert failed_only["selected"] == by_status["failed"]
    assert failed_only["failed"] == by_status["failed"] and failed_only["mapped"] == 0
