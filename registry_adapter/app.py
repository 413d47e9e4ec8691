"""The assembled application: settings, database, code maps, mappings, site context.

Built once per command or daemon; everything heavy (mapping compilation, code maps) happens
here so the pipeline's hot loop only maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import Engine
from sqlmodel import SQLModel

from mappings.codemaps import CodeMap, load_codemaps
from mappings.convert import SiteContext
from mappings.engine import RegistryMapping, load_mappings
from registry_adapter.config import Settings
from registry_store import migrate
from registry_store.db import make_engine
from registry_store.models import Condition, Encounter, Patient, Procedure, PromResponse

# Registry tables a mapping may write to, by the name mapping files use.
TARGET_TABLES: dict[str, type[SQLModel]] = {
    "patients": Patient,
    "encounters": Encounter,
    "procedures": Procedure,
    "conditions": Condition,
    "prom_responses": PromResponse,
}


def target_columns() -> dict[str, list[Any]]:
    """Columns of each table a mapping may write: the engine checks mapping files against
    their names and values against their sizes (too long is a mapping error, not a failed
    database write)."""
    return {name: list(model.__table__.columns) for name, model in TARGET_TABLES.items()}  # type: ignore[attr-defined]


@dataclass
class App:
    settings: Settings
    db_url: str

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.db_url)

    @cached_property
    def codemaps(self) -> dict[str, CodeMap]:
        return load_codemaps(self.settings.mappings.codemaps)

    @cached_property
    def mappings(self) -> dict[str, RegistryMapping]:
        return load_mappings(self.codemaps, self.settings.mappings.directory, target_columns())

    @cached_property
    def instruments(self) -> Any:
        from mappings.proms import load_instruments

        return load_instruments(site_overrides=self.settings.proms.instruments or None)

    @cached_property
    def site(self) -> SiteContext:
        s = self.settings.site
        return SiteContext(site_id=s.id, tz=s.tz, pseudonym_key=s.key_bytes(), instruments=self.instruments)

    def upgrade_db(self) -> None:
        migrate.upgrade(self.engine)

    def ensure_db(self) -> None:
        """Bring the schema to the current version (idempotent; cheap when already there)."""
        if migrate.current_revision(self.engine) != migrate.head_revision(self.engine):
            migrate.upgrade(self.engine)


def build_app(settings: Settings, db_url: str | None = None) -> App:
    return App(settings=settings, db_url=db_url or settings.database.url)
