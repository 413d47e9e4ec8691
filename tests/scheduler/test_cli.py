"""``registry-adapter reminders ...`` on the bundled sample feed."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from registry_adapter.cli import cli
from tests.conftest import write_config_file
from tests.scheduler.conftest import SmtpSink, reminder_config


def write_config(tmp_path: Path, *, migrate: bool = True, **overrides: Any) -> Path:
    return write_config_file(tmp_path, migrate=migrate, **overrides)


def run(config: Path, *args: str) -> Result:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    return result


@pytest.fixture
def synced(tmp_path: Path) -> Path:
    config = write_config(tmp_path)
    assert run(config, "sync", "--full", "--json").exit_code == 0
    forget_reminders(config)
    return config


def forget_reminders(config: Path) -> None:
    """A sync plans reminders as of today (the scheduler's after-store plug-in); these tests
    plan as of 2024 on the feed's dates, from a store that has none yet."""
    db = yaml.safe_load(config.read_text())["database"]["url"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM reminders").fetchone()[0] == 120  # planned by the sync
        conn.execute("DELETE FROM reminders")


def test_list_json_is_current_and_writes_nothing(synced: Path) -> None:
    result = run(synced, "reminders", "list", "--json", "--as-of", "2024-07-01")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 120  # 40 cases x baseline, 90d, 1y
    for key in ("procedure_id", "timepoint", "due_date", "window_start", "window_end", "status", "attempts"):
        assert key in rows[0]
    by = {(r["procedure_id"], r["timepoint"]): r for r in rows}
    # Surgery 2024-03-15, discharge 2024-03-19; ODI answered 2024-06-19 (day 92 after discharge).
    assert by[("proc-0001", "90d")]["status"] == "completed"
    assert by[("proc-0001", "90d")]["completed_response_id"] == "qr-0001-90d"
    expected = {
        "due_date": "2025-03-15",
        "window_start": "2025-01-09",
        "window_end": "2025-06-14",
        "status": "scheduled",
        "attempts": 0,
        "next_attempt_on": "2025-03-15",
    }
    assert {k: by[("proc-0001", "1y")][k] for k in expected} == expected
    assert by[("proc-0002", "baseline")]["status"] == "completed"
    assert by[("proc-0001", "baseline")]["status"] == "missing"
    # Listing planned in a transaction it rolled back: nothing was stored.
    again = json.loads(run(synced, "reminders", "list", "--json", "--status", "missing").output)
    assert again and all(r["status"] == "missing" for r in again)
    assert json.loads(run(synced, "stats", "--json").output)["cases"] == 40


def test_plan_send_opt_out_worklist(tmp_path: Path, smtp_server: SmtpSink) -> None:
    disabled = write_config(tmp_path)
    assert run(disabled, "sync", "--full", "--json").exit_code == 0
    forget_reminders(disabled)
    refused = CliRunner().invoke(cli, ["--config", str(disabled), "reminders", "send", "--due"])
    assert refused.exit_code == 2 and "reminders are disabled" in refused.output

    config = write_config(tmp_path, reminders=reminder_config(smtp_server, channels=["email", "worklist"]))
    dry = json.loads(
        run(config, "reminders", "send", "--due", "--dry-run", "--json", "--as-of", "2024-07-01").output
    )
    assert [(i["procedure_id"], i["timepoint"], i["attempt"], i["channels"]) for i in dry["items"]] == [
        ("proc-0002", "90d", 1, ["email"])
    ]
    assert not smtp_server.messages

    planned = json.loads(run(config, "reminders", "plan", "--json", "--as-of", "2024-07-01").output)
    assert planned["created"] == 120
    assert (
        json.loads(run(config, "reminders", "plan", "--json", "--as-of", "2024-07-01").output)["updated"] == 0
    )

    sent = json.loads(run(config, "reminders", "send", "--due", "--json", "--as-of", "2024-07-01").output)
    assert sent["sent"] == 1 and len(smtp_server.messages) == 1
    assert smtp_server.messages[0]["To"] == "patient2@example.invalid"
    again = json.loads(run(config, "reminders", "send", "--due", "--json", "--as-of", "2024-07-01").output)
    assert again["sent"] == 0

    result = run(config, "reminders", "opt-out", "pat-0002")
    assert result.exit_code == 0 and "stopped" in result.output
    rows = json.loads(run(config, "reminders", "list", "--json", "--as-of", "2024-07-01").output)
    mine = [r for r in rows if r["procedure_id"] == "proc-0002"]
    assert {r["timepoint"]: (r["status"], r["cancel_reason"]) for r in mine} == {
        "baseline": ("completed", None),  # what was completed stays completed
        "90d": ("cancelled", "opted_out"),
        "1y": ("cancelled", "opted_out"),
    }
    assert run(config, "reminders", "opt-out", "pat-0002", "--undo").exit_code == 0
    rows = json.loads(run(config, "reminders", "list", "--json", "--as-of", "2024-07-01").output)
    assert {r["status"] for r in rows if r["procedure_id"] == "proc-0002" and r["timepoint"] == "1y"} == {
        "scheduled"
    }

    # A patient without email goes to the worklist (the next channel in order).
    csv_path = tmp_path / "worklist.csv"
    assert run(config, "reminders", "worklist", "--csv", str(csv_path)).exit_code == 0
    with csv_path.open() as fh:
        assert list(csv.DictReader(fh)) == []  # email reached everyone so far
    unknown = CliRunner().invoke(cli, ["--config", str(config), "reminders", "opt-out", "nobody"])
    assert unknown.exit_code == 2


def test_configuration_mistakes_are_reported_by_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, reminders={"instruments": {"lumbar": ["odi", "oswestry"]}})
    result = CliRunner().invoke(cli, ["--config", str(config), "reminders", "plan"])
    assert (
        result.exit_code == 2
        and "reminders.instruments.lumbar" in result.output
        and "oswestry" in result.output
    )
    config = write_config(tmp_path, reminders={"remind": ["6w"]})
    result = CliRunner().invoke(cli, ["--config", str(config), "run", "--no-services"])
    assert result.exit_code == 2 and "unknown time points ['6w']" in result.output
    # Not migrated: the configuration cannot even be read, so no database is known.
    config = write_config(tmp_path, migrate=False, reminders={"enabled": True, "channels": ["email"]})
    result = CliRunner().invoke(cli, ["--config", str(config), "reminders", "list"])
    assert result.exit_code != 0 and "link.token_secret" in str(result.exception or result.output)


def reminder_count(config: Path, where: str = "") -> int:
    """Reminder rows stored in the config's SQLite database (read apart from the CLI)."""
    db = yaml.safe_load(config.read_text())["database"]["url"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM reminders {where}").fetchone()[0])


def test_plan_dry_run_saves_nothing(synced: Path) -> None:
    dry = json.loads(run(synced, "reminders", "plan", "--dry-run", "--json", "--as-of", "2024-07-01").output)
    assert (dry["dry_run"], dry["created"], dry["updated"]) == (True, 120, 0)
    assert reminder_count(synced) == 0
    text_out = run(synced, "reminders", "plan", "--dry-run", "--as-of", "2024-07-01").output
    assert "Would plan: 120 new" in text_out and "nothing saved" in text_out
    assert reminder_count(synced) == 0

    real = json.loads(run(synced, "reminders", "plan", "--json", "--as-of", "2024-07-01").output)
    assert (real["dry_run"], real["created"]) == (False, 120) and reminder_count(synced) == 120
    # A year later windows have closed: the dry run counts the changes, the real plan makes them.
    later = ("--json", "--as-of", "2025-09-01")
    dry = json.loads(run(synced, "reminders", "plan", "--dry-run", *later).output)
    assert dry["updated"] > 0 and dry["by_status"].get("expired", 0) > 0
    assert reminder_count(synced, "WHERE status = 'expired'") == 0
    real = json.loads(run(synced, "reminders", "plan", *later).output)
    assert {k: real[k] for k in ("created", "updated", "by_status")} == {
        k: dry[k] for k in ("created", "updated", "by_status")
    }


def test_list_due_is_what_send_due_would_send(synced: Path) -> None:
    as_of = ("--as-of", "2024-07-01")
    everything = json.loads(run(synced, "reminders", "list", "--json", *as_of).output)
    due = json.loads(run(synced, "reminders", "list", "--due", "--json", *as_of).output)
    assert [(r["procedure_id"], r["timepoint"]) for r in due] == [("proc-0002", "90d")]
    assert due[0]["next_attempt_on"] <= "2024-07-01" and due[0]["unconfirmed"] is False
    # Scheduled but not yet due, or not reminded (baseline), is left out.
    assert any(r["status"] == "scheduled" and r["next_attempt_on"] > "2024-07-01" for r in everything)
    would_send = json.loads(run(synced, "reminders", "send", "--due", "--dry-run", "--json", *as_of).output)
    assert [(i["procedure_id"], i["timepoint"]) for i in would_send["items"]] == [
        (r["procedure_id"], r["timepoint"]) for r in due
    ]
    assert run(synced, "reminders", "list", "--due", *as_of).exit_code == 0  # the table form
    # Combines with the other filters.
    assert (
        json.loads(run(synced, "reminders", "list", "--due", "--timepoint", "1y", "--json", *as_of).output)
        == []
    )


def test_cases_withdraw_is_audited_cancels_reminders_and_lists_anchors(synced: Path) -> None:
    cases = json.loads(run(synced, "cases", "list", "--json").output)
    case = next(c for c in cases if c["procedure_id"] == "proc-0003")
    assert run(synced, "reminders", "plan", "--as-of", "2024-07-01").exit_code == 0
    missing = run(synced, "cases", "withdraw", "no-such-case", "--reason", "x")
    assert missing.exit_code != 0 and "no case with id no-such-case" in missing.output
    done = run(synced, "cases", "withdraw", case["case_id"], "--reason", "consent withdrawn", "--by", "Dana")
    assert done.exit_code == 0, done.output

    def listed() -> dict[str, Any]:
        rows = json.loads(run(synced, "cases", "list", "--json", "--include-removed").output)
        return next(c for c in rows if c["case_id"] == case["case_id"])

    assert listed()["status"] == "withdrawn"
    assert listed()["status_reason"] == "withdrawn by Dana: consent withdrawn"
    # A later sync does not bring the case back.
    assert run(synced, "sync", "--full", "--json").exit_code == 0
    assert listed()["status"] == "withdrawn"
    rows = json.loads(run(synced, "reminders", "list", "--json", "--as-of", "2024-07-01").output)
    mine = [r for r in rows if r["case_id"] == case["case_id"]]
    assert mine and all(r["status"] != "scheduled" for r in mine)
    assert any(r["cancel_reason"] == "case_withdrawn" for r in mine)
    # Every row says what its due date counts from.
    assert {r["anchor"] for r in rows} <= {"surgery", "discharge", "surgery_fallback"}
    assert {r["anchor"] for r in rows if r["timepoint"] == "1y"} == {"surgery"}
    with sqlite3.connect(synced.parent / "registry.db") as db:
        entry = db.execute("SELECT username, action, target, after FROM audit_log").fetchall()
        status = db.execute("SELECT status FROM cases WHERE id = ?", (case["case_id"],)).fetchone()
    assert status == ("withdrawn",)
    assert [(u, a, t) for u, a, t, _ in entry] == [("Dana", "case.withdraw", f"case:{case['case_id']}")]
