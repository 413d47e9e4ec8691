"""Configuration: fail fast naming the key; secrets from the environment or files."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from registry_adapter.config import ConfigError, Settings, load_settings, parse_settings
from registry_adapter.feeds.fhir_bulk import FhirBulkSource
from registry_adapter.feeds.fhir_rest import FhirRestSource
from registry_adapter.feeds.files import FilesSource

ROOT = Path(__file__).resolve().parents[2]


def _base() -> dict:
    return {"site": {"id": "s", "timezone": "Europe/Berlin", "pseudonym_key": "k"}}


def test_the_example_config_is_valid_and_runs_the_demo() -> None:
    settings = load_settings(ROOT / "config.example.yaml")
    assert settings.site.timezone == "America/Chicago"
    [sample] = settings.sources
    assert isinstance(sample, FilesSource) and sample.name == "sample"
    assert sample.path == ROOT / "examples" / "sample-feed"  # relative to the file
    assert sample.patterns == ("**/*.ndjson", "**/*.json", "**/*.ndjson.gz")  # as documented
    assert settings.database.url == f"sqlite:///{ROOT / 'var' / 'registry.db'}"


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"site": {"id": "s", "pseudonym_key": "k"}}, "site.timezone: Field required"),
        ({"site": {"id": "s", "timezone": "Mars/Base", "pseudonym_key": "k"}}, "site.timezone"),
        ({"site": {"id": "s", "timezone": "UTC"}}, "pseudonym_key"),
        ({"batch_size": 0}, "batch_size"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        ({"sources": [{"name": "a", "type": "files"}]}, "sources[0].path: Field required"),
        ({"sources": [{"name": "a", "type": "ftp", "path": "x"}]}, "sources[0]"),
        (
            {
                "sources": [
                    {
                        "name": "a",
                        "type": "fhir_rest",
                        "base_url": "http://x",
                        "patient_scoped": {"group_id": "g", "list_id": "l"},
                    }
                ]
            },
            "sources[0].patient_scoped: Value error, set group_id or list_id, not both",
        ),
        (
            {
                "proms": {
                    "timepoints": {
                        "90d": {
                            "anchor": "discharge",
                            "due_days": 90,
                            "window_start_days": 100,
                            "window_end_days": 180,
                        }
                    }
                }
            },
            "proms.timepoints.90d",
        ),
    ],
)
def test_invalid_settings_name_the_key(patch: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**_base(), **patch})
    assert expected in str(err.value)


def test_environment_references_and_secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITE_KEY", "from-env")
    cfg = {
        "site": {"id": "s", "timezone": "UTC", "pseudonym_key": "${SITE_KEY}"},
        "database": {"url": "${DB_URL:-sqlite:///x.db}"},
    }
    settings = parse_settings(cfg)
    assert settings.site.key_bytes() == b"from-env"
    assert settings.database.url == "sqlite:///x.db"
    with pytest.raises(ConfigError, match=r"site\.pseudonym_key: environment variable NOPE is not set"):
        parse_settings({"site": {"id": "s", "timezone": "UTC", "pseudonym_key": "${NOPE}"}})


def test_missing_key_file_is_created_private(tmp_path: Path) -> None:
    settings = parse_settings(
        {"site": {"id": "s", "timezone": "UTC", "pseudonym_key_file": "keys/p.key"}}, base_dir=tmp_path
    )
    key = settings.site.key_bytes()
    path = tmp_path / "keys" / "p.key"
    assert len(key) == 64 and path.stat().st_mode & 0o777 == 0o600
    assert settings.site.key_bytes() == key  # stable once created


def test_missing_or_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("site:\n  id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_settings(bad)


def test_relative_adapter_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    auth = {"method": "smart_backend", "client_id": "c", "private_key_file": "keys/smart.pem"}
    config = {
        **_base(),
        "sources": [
            {
                "name": "rest",
                "type": "fhir_rest",
                "base_url": "https://ehr.example/fhir",
                "auth": auth,
                "http": {"verify": "certs/ca.pem"},
            },
            {
                "name": "bulk",
                "type": "fhir_bulk",
                "base_url": "https://ehr.example/fhir",
                "work_dir": "var/bulk",
                "auth": {**auth, "private_key_file": "/abs/key.pem"},
                "http": {"verify": False},
            },
        ],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    settings = load_settings(tmp_path / "config.yaml")

    rest, bulk = settings.sources
    assert isinstance(rest, FhirRestSource) and isinstance(bulk, FhirBulkSource)
    assert rest.settings.auth.private_key_file == str(tmp_path / "keys" / "smart.pem")
    assert rest.settings.http.verify == str(tmp_path / "certs" / "ca.pem")
    assert bulk.settings.work_dir == str(tmp_path / "var" / "bulk")
    assert bulk.settings.auth.private_key_file == "/abs/key.pem"  # absolute: unchanged
    assert bulk.settings.http.verify is False  # not a path
    assert rest.settings.http.verify != "certs/ca.pem"


# Our nesting, not keys the user writes: an adapter source's "settings", the plug-in "sections".
_INTERNAL_KEYS = {"settings", "sections"}


def _keys(tp: Any, out: dict[str, str], seen: set[type]) -> None:
    """Every settings key name reachable from ``tp`` (pydantic models and dataclasses)."""
    origin = typing.get_origin(tp)
    if origin is not None or isinstance(tp, types.UnionType):
        for arg in typing.get_args(tp):
            _keys(arg, out, seen)
        return
    if not isinstance(tp, type) or tp in seen:
        return
    if issubclass(tp, BaseModel):
        seen.add(tp)
        for name, info in tp.model_fields.items():
            out.setdefault(name, f"{tp.__name__}.{name}")
            _keys(info.annotation, out, seen)
    elif dataclasses.is_dataclass(tp):
        seen.add(tp)
        hints = typing.get_type_hints(tp)
        for fld in dataclasses.fields(tp):
            out.setdefault(fld.name, f"{tp.__name__}.{fld.name}")
            _keys(hints[fld.name], out, seen)


def test_the_example_config_documents_every_key() -> None:
    from registry_adapter.feeds import feed_types

    keys: dict[str, str] = {}
    _keys(Settings, keys, set())
    # Sources are validated against their own feed type's model, loaded when one is configured.
    for feed in feed_types().values():
        _keys(feed.settings, keys, set())
    # The walk reaches every section: sources of each kind, auth, http, reminders, review.
    assert {
        "private_key_file",
        "retry_after_max",
        "work_dir",
        "list_id",
        "convert_every_seconds",
        "quiet_hours",
        "login_max_failures",
        "lock_ttl_seconds",
    } <= set(keys)
    text = (ROOT / "config.example.yaml").read_text()
    missing = sorted(
        where
        for name, where in keys.items()
        if name not in _INTERNAL_KEYS and not re.search(rf"(?<![\w-]){re.escape(name)}\s*:", text)
    )
    assert not missing, f"config.example.yaml does not document: {', '.join(missing)}"


def test_sections_owned_by_other_packages_are_composed_and_survive_a_json_round_trip() -> None:
    from review.settings import ReviewSettings
    from scheduler.settings import RemindersSettings, SchedulerSettings

    data = {
        "site": {"id": "s", "timezone": "UTC", "pseudonym_key": "k" * 32},
        "scheduler": {"lock_ttl_seconds": 120},
        "review": {"page_size": 25},
    }
    settings = parse_settings(data)
    assert settings.section(SchedulerSettings).lock_ttl_seconds == 120
    assert settings.lease_ttl_seconds() == 120.0
    assert settings.section(ReviewSettings).page_size == 25
    assert settings.section(RemindersSettings) == RemindersSettings()  # absent: its defaults
    # What a subprocess gets (model_dump_json, then model_validate_json) is the same settings.
    assert Settings.model_validate_json(settings.model_dump_json()) == settings
    changed = settings.with_section(ReviewSettings(page_size=10))
    assert changed.section(ReviewSettings).page_size == 10
    assert settings.section(ReviewSettings).page_size == 25  # a copy: the original is unchanged
    with pytest.raises(ConfigError, match=r"scheduler\.lock_ttl_seconds"):
        parse_settings({**data, "scheduler": {"lock_ttl_seconds": 1}})
