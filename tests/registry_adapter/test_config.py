"""Configuration: fail fast naming the key; secrets from the environment or files."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry_adapter.config import ConfigError, load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]


def _base() -> dict:
    return {"site": {"id": "s", "timezone": "Europe/Berlin", "pseudonym_key": "k"}}


def test_the_example_config_is_valid_and_runs_the_demo() -> None:
    settings = load_settings(ROOT / "config.example.yaml")
    assert settings.site.timezone == "America/Chicago"
    assert settings.sources[0].name == "sample"
    assert settings.sources[0].path == ROOT / "examples" / "sample-feed"  # relative to the file
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
