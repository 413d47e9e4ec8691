"""Feed type ``fhir_rest``: incremental FHIR REST search against a server (``adapters.fhir_rest``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from adapters.auth import AuthConfig
from adapters.base import Source
from adapters.fhir_rest import FhirRestConfig, PatientScope
from adapters.fhir_rest import FhirRestSource as FhirRestReader
from adapters.http import HttpConfig
from registry_adapter.feeds import FeedType
from registry_adapter.feeds.base import AdapterFeedSettings, forbid_extra

if TYPE_CHECKING:
    from registry_adapter.app import App

forbid_extra(FhirRestConfig, PatientScope, AuthConfig, HttpConfig)


class FhirRestSource(AdapterFeedSettings):
    type: Literal["fhir_rest"]
    name: str
    settings: FhirRestConfig


def build(cfg: FhirRestSource, app: App) -> Source:
    return FhirRestReader(cfg.name, cfg.settings)


# ``verify`` is a CA bundle path only when it is a string; ``True``/``False`` stay as they are.
PATH_STRINGS = {AuthConfig: frozenset({"private_key_file"}), HttpConfig: frozenset({"verify"})}

FEED = FeedType(
    "fhir_rest", FhirRestSource, build, "FHIR REST search, incremental by _lastUpdated", PATH_STRINGS
)
