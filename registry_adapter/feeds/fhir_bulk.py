"""Feed type ``fhir_bulk``: FHIR Bulk Data ``$export`` (``adapters.fhir_bulk``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from adapters.auth import AuthConfig
from adapters.base import Source
from adapters.fhir_bulk import FhirBulkConfig
from adapters.fhir_bulk import FhirBulkSource as FhirBulkReader
from adapters.http import HttpConfig
from registry_adapter.feeds import FeedType
from registry_adapter.feeds.base import AdapterFeedSettings, forbid_extra

if TYPE_CHECKING:
    from registry_adapter.app import App

forbid_extra(FhirBulkConfig, AuthConfig, HttpConfig)


class FhirBulkSource(AdapterFeedSettings):
    type: Literal["fhir_bulk"]
    name: str
    settings: FhirBulkConfig


def build(cfg: FhirBulkSource, app: App) -> Source:
    return FhirBulkReader(cfg.name, cfg.settings)


PATH_STRINGS = {
    AuthConfig: frozenset({"private_key_file"}),
    HttpConfig: frozenset({"verify"}),
    FhirBulkConfig: frozenset({"work_dir"}),
}

FEED = FeedType("fhir_bulk", FhirBulkSource, build, "FHIR Bulk Data $export", PATH_STRINGS)
