"""What every feed type's settings share, and the helpers its module uses to declare them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


class StrictSettings(BaseModel):
    """Settings read from config.yaml: unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FeedSettings(StrictSettings):
    """A configured source: its ``type`` (which feed type reads it) and its unique ``name``.

    Each feed type's model narrows ``type`` to ``Literal["<its type>"]``; config.yaml's
    ``sources`` list is validated against the union of all registered models.
    """

    type: str
    name: str


class AdapterFeedSettings(FeedSettings):
    """``name`` and ``type`` plus the adapter's own settings object, written flat in the YAML
    (``settings`` holds the adapter's dataclass: ``FhirRestConfig``, ...)."""

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: Any) -> Any:
        if isinstance(data, dict) and "settings" not in data:
            own = {k: v for k, v in data.items() if k not in ("name", "type")}
            return {"name": data.get("name"), "type": data.get("type"), "settings": own}
        return data


def forbid_extra(*classes: type) -> None:
    """The adapters declare their settings as plain dataclasses; validated with unknown keys
    refused, config errors name the key."""
    for cls in classes:
        cls.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
