"""The daemon's nightly job uses code maps and mappings edited while it runs (by staff or by
the review UI in another process), without a restart."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
import structlog
from sqlalchemy import text

from mappings import engine as mapping_engine
from mappings.codemaps import BUNDLED as BUNDLED_CODEMAPS
from mappings.codemaps import CodeMapError
from registry_adapter.app import App
from scheduler import jobs
from scheduler.clock import at_local
from tests.scheduler.conftest import TZ, Feed

ROOT = Path(__file__).resolve().parents[2]
UNLISTED = "22899"  # in the spine-procedures scope, not in its table: a mapping error

# What the review UI does on "add to code map" when the site has no copy yet: copy the
# bundled map into the site folder (shutil.copy2 keeps the old mtimes), then append the code.
REVIEW_ADDS_CODE = """
import shutil, sys
from pathlib import Path
from mappings.codemaps import BUNDLED, append_code, load_codemap

site = Path(sys.argv[1])
for name in ("spine-procedures.yaml", "spine-procedures.csv"):
    shutil.copy2(BUNDLED / name, site / name)
cmap = load_codemap(site / "spine-procedures.yaml")
values = {"category": "other_lumbar_fusion", "module": "lumbar", "role": "index", "rank": "10",
          "revision": "false", "label": "Unlisted spine procedure"}
append_code(cmap, "cpt", sys.argv[2], values, "added in review by test")
"""


def write_batch(feed: Feed, folder: Path, name: str) -> None:
    """The feed's pending resources as an NDJSON file where the files source will find it."""
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in feed.pending))
    feed.pending.clear()


def case_procedures(app: App) -> list[str]:
    with app.engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT procedure_id FROM cases ORDER BY procedure_id"))]


def test_nightly_sees_a_code_added_by_another_process(make_app: Callable[..., App], tmp_path: Path) -> None:
    incoming, site_maps = tmp_path / "incoming", tmp_path / "site-codemaps"
    incoming.mkdir()
    site_maps.mkdir()
    app = make_app(
        sources=[{"name": "feed", "type": "files", "path": str(incoming)}],
        mappings={"codemaps": str(site_maps)},
    )
    feed = Feed(tmp_path / "unused", app)  # only its resource builders
    jobs.bind(app, at_local(date(2025, 2, 1), 3, TZ))

    feed.patient("pat-1")
    feed.surgery("1", "pat-1", date(2025, 1, 6), date(2025, 1, 9), codes=(UNLISTED,))
    write_batch(feed, incoming, "day-1.ndjson")
    jobs.nightly()
    assert case_procedures(app) == []  # the unlisted code is a mapping error for review
    assert app.codemaps["spine-procedures"].lookup("cpt", UNLISTED) is None

    # Meanwhile the review UI, a separate process, adds the code to the (site) code map.
    subprocess.run(
        [sys.executable, "-c", REVIEW_ADDS_CODE, str(site_maps), UNLISTED],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    feed.patient("pat-2")
    feed.surgery("2", "pat-2", date(2025, 1, 13), date(2025, 1, 15), codes=(UNLISTED,))
    write_batch(feed, incoming, "day-2.ndjson")

    first_load = app.codemaps
    jobs.nightly()
    assert "proc-2" in case_procedures(app)  # mapped with the new code, same process
    assert app.codemaps is not first_load
    assert app.codemaps["spine-procedures"].lookup("cpt", UNLISTED) is not None

    reloaded = app.codemaps, app.mappings
    jobs.nightly()  # nothing changed since: nothing is reloaded
    assert app.codemaps is reloaded[0] and app.mappings is reloaded[1]


def test_changed_mapping_file_is_recompiled_and_a_broken_edit_keeps_the_old(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    import shutil

    views, site_maps = tmp_path / "site-mappings", tmp_path / "site-codemaps"
    shutil.copytree(mapping_engine.BUNDLED, views)
    shutil.copytree(BUNDLED_CODEMAPS, site_maps)
    app = make_app(sources=[], mappings={"directory": str(views), "codemaps": str(site_maps)})
    assert app.reload_mappings_if_changed() is False  # nothing loaded yet: nothing to reload
    before = app.mappings["Procedure"]
    assert app.reload_mappings_if_changed() is False
    assert app.mappings["Procedure"] is before

    # Staff change a mapping file: the next check recompiles it.
    procedure_yaml = views / "procedure.yaml"
    procedure_yaml.write_text(procedure_yaml.read_text() + "\n# reviewed 2025-02-01\n")
    assert app.reload_mappings_if_changed() is True
    assert app.mappings["Procedure"] is not before
    assert app.reload_mappings_if_changed() is False

    # A broken code map edit: the App keeps the working versions, and retries next time.
    working_maps, working_mappings = app.codemaps, app.mappings
    table = site_maps / "spine-procedures.csv"
    good = table.read_text()
    table.write_text("system,code\ncpt,22633\n")  # value columns missing
    with pytest.raises(CodeMapError):
        app.reload_mappings_if_changed()
    assert app.codemaps is working_maps and app.mappings is working_mappings
    with structlog.testing.capture_logs() as logs:
        jobs.refresh_mappings(app, jobs.NIGHTLY_JOB)  # the job logs it and goes on
    [event] = logs
    assert event["event"] == "job.mappings_reload_failed" and "spine-procedures.csv" in event["error"]
    table.write_text(good)
    assert app.reload_mappings_if_changed() is True
    assert app.codemaps is not working_maps


def test_review_cache_drop_then_reload_check(make_app: Callable[..., App], tmp_path: Path) -> None:
    """The review UI drops the App's cached maps after adding a code in-process; the next
    load records the files it read, so the job's check then finds nothing new."""
    site_maps = tmp_path / "site-codemaps"
    site_maps.mkdir()
    app = make_app(sources=[], mappings={"codemaps": str(site_maps)})
    assert app.mappings
    subprocess.run(
        [sys.executable, "-c", REVIEW_ADDS_CODE, str(site_maps), UNLISTED], cwd=ROOT, check=True, timeout=60
    )
    app.__dict__.pop("mappings", None)  # what review/actions.py does
    app.__dict__.pop("codemaps", None)
    assert app.codemaps["spine-procedures"].lookup("cpt", UNLISTED) is not None
    assert app.reload_mappings_if_changed() is False
