"""Configured sources → adapter objects."""

from __future__ import annotations

from pathlib import Path

from adapters.base import Source
from adapters.fhir_bulk import FhirBulkSource
from adapters.fhir_rest import FhirRestSource
from adapters.files import FilesSource
from adapters.hl7v2.drop import Hl7DropFolder
from registry_adapter import config as cfgmod
from registry_adapter.app import App
from registry_adapter.config import ConfigError, SourceConfig


def build_source(cfg: SourceConfig, app: App) -> Source:
    if isinstance(cfg, cfgmod.FilesSource):
        if not cfg.path.exists():
            raise ConfigError(f"sources.{cfg.name}.path: folder {cfg.path} does not exist")
        return FilesSource(cfg.name, [cfg.path], cfg.patterns)
    if isinstance(cfg, cfgmod.FhirRestSource):
        return FhirRestSource(cfg.name, cfg.settings)
    if isinstance(cfg, cfgmod.FhirBulkSource):
        return FhirBulkSource(cfg.name, cfg.settings)
    if isinstance(cfg, cfgmod.Hl7FilesSource):
        if not cfg.path.exists():
            raise ConfigError(f"sources.{cfg.name}.path: folder {cfg.path} does not exist")
        return Hl7DropFolder(
            cfg.name, cfg.path, archive=cfg.archive, quarantine=cfg.quarantine, patterns=cfg.patterns
        )
    raise ConfigError(f"source {cfg.name}: type {cfg.type!r} is pulled by `sync`; it is not (see `listen`)")


def import_source(name: str, paths: list[Path]) -> Source:
    """Files given on the command line (staff loading what a hospital sent)."""
    return FilesSource(name, paths)
