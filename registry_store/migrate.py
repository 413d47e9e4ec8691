"""Schema migrations (Alembic), driven programmatically so no alembic.ini has to be found."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).with_name("migrations")


def _config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's Config is a ConfigParser: "%" starts an interpolation, and a %-encoded
    # password ("%40" for "@") would break it (and be quoted in the error), so it is doubled.
    # Migrations run on the engine's own connection; the URL is only env.py's fallback.
    url = engine.url.render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(_config(engine)).get_current_head()


class SchemaNotCurrent(Exception):
    """The database is not at the revision this code needs; only ``db upgrade`` changes that."""

    def __init__(self, current: str | None, head: str | None):
        self.current, self.head = current, head
        super().__init__(
            f"database is at revision {current or 'none (empty database)'}, the code needs {head}: "
            "run registry-adapter db upgrade"
        )


def require_current(engine: Engine) -> None:
    """Raise :class:`SchemaNotCurrent` unless the schema is at head; never changes it, because
    migrating a production database is the operator's decision (and a backup's moment)."""
    current, head = current_revision(engine), head_revision(engine)
    if current != head:
        raise SchemaNotCurrent(current, head)


def revision(engine: Engine, message: str) -> None:
    """Autogenerate a migration from the models (developer tool)."""
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True)
