"""The assembled application: settings, database, code maps, mappings, site context.

Built once per command or daemon; everything heavy (mapping compilation, code maps) happens
here so the pipeline's hot loop only maps. A long-lived process (the daemon) calls
:meth:`App.reload_mappings_if_changed` before each job, so code maps and mappings edited
meanwhile (by staff, or by the review UI in another process) are used from the next run on.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from adapters.hl7v2 import config as hl7v2_config
from mappings import codemaps as codemaps_module
from mappings import engine as mapping_engine
from mappings.codemaps import CodeMap, load_codemaps
from mappings.convert import SiteContext
from mappings.engine import RegistryMapping, load_mappings
from registry_adapter.config import Settings
from registry_store import migrate
from registry_store.db import make_engine, parse_url, reported_unavailable
from registry_store.tables import MAPPING_TARGETS


def target_columns() -> dict[str, list[Any]]:
    """Columns of each table a mapping may write: the engine checks mapping files against
    their names and values against their sizes (too long is a mapping error, not a failed
    database write)."""
    return {name: list(table.columns) for name, table in MAPPING_TARGETS.items()}


def files_fingerprint(directories: Iterable[Path | None]) -> str:
    """A digest of the names and contents of the files directly in ``directories``.

    Contents rather than mtimes: an edit within the file system's timestamp granularity, or
    a file copied in with its old mtime, still counts as a change. The folders hold a few
    small YAML/CSV files, so hashing them before each job costs next to nothing.
    """
    digest = hashlib.sha256()
    for directory in directories:
        if directory is None:
            continue
        digest.update(f"\0dir {directory}\0".encode())
        try:
            files = sorted(p for p in directory.iterdir() if p.is_file())
        except OSError:
            digest.update(b"unreadable")
            continue
        for path in files:
            digest.update(f"\0file {path.name}\0".encode())
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"unreadable")
    return digest.hexdigest()


@dataclass
class App:
    settings: Settings
    db_url: str
    # Fingerprint of the mapping/code-map files the cached ``codemaps`` were loaded from.
    _mapping_files: str | None = field(default=None, init=False, repr=False, compare=False)
    _reload_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    @cached_property
    def engine(self) -> Engine:
        url = parse_url(self.db_url)
        password = self.settings.database.password_value()
        if password is not None and url.password is None and url.get_backend_name() != "sqlite":
            url = url.set(password=password)  # a URL object takes it as it is, no encoding
        return make_engine(url)

    def mapping_files_fingerprint(self) -> str:
        """Digest of every file code maps and mappings are loaded from (bundled and site)."""
        m = self.settings.mappings
        return files_fingerprint(
            [
                codemaps_module.BUNDLED,
                m.codemaps,
                m.directory or mapping_engine.BUNDLED,
                hl7v2_config.current_directory(),
            ]
        )

    @cached_property
    def codemaps(self) -> dict[str, CodeMap]:
        # Taken before reading: an edit made while loading shows up as a change next time.
        self._mapping_files = self.mapping_files_fingerprint()
        return load_codemaps(self.settings.mappings.codemaps)

    @cached_property
    def mappings(self) -> dict[str, RegistryMapping]:
        return load_mappings(self.codemaps, self.settings.mappings.directory, target_columns())

    def reload_mappings_if_changed(self) -> bool:
        """Reload code maps (and recompile mappings, if they were loaded) when their files
        changed since they were read; True when it reloaded.

        Both are loaded before either replaces the cached ones, so a broken file raises
        (``CodeMapError`` / ``MappingFileError``) and leaves the App on the previous, working
        versions; the change is tried again on the next call. Code holding the old dicts keeps
        a consistent pair until it asks again.
        """
        with self._reload_lock:
            if "codemaps" not in self.__dict__:
                return False  # nothing cached yet: the first use reads the current files
            current = self.mapping_files_fingerprint()
            if current == self._mapping_files:
                return False
            codemaps = load_codemaps(self.settings.mappings.codemaps)
            compiled = "mappings" in self.__dict__
            mappings = (
                load_mappings(codemaps, self.settings.mappings.directory, target_columns())
                if compiled
                else None
            )
            self.__dict__["codemaps"] = codemaps
            hl7v2_config.forget_loaded()  # v2 conversion files are read again on next use
            if mappings is not None:
                self.__dict__["mappings"] = mappings
            self._mapping_files = current
            return True

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

    def check_db(self) -> None:
        """Connect and check the schema is current (``DatabaseUnavailable`` /
        ``SchemaNotCurrent`` otherwise); changes nothing, only ``db upgrade`` migrates."""
        with reported_unavailable(self.engine.url):
            migrate.require_current(self.engine)


def build_app(settings: Settings, db_url: str | None = None) -> App:
    # v2 conversion loads its files deep inside calls without settings: one site per process.
    hl7v2_config.use_directory(hl7v2_config.site_directory(settings.mappings.directory))
    return App(settings=settings, db_url=db_url or settings.database.url)
