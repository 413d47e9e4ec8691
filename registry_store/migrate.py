"""Schema migrations (Alembic), driven programmatically so no alembic.ini has to be found."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")

# ``revision: str = "0011"`` / ``down_revision: str | None = "0010"`` as Alembic writes them.
_DECLARED = re.compile(r'^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(?:"([^"\n]*)"|None)\s*$', re.M)


def _config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's Config is a ConfigParser: "%" starts an interpolation, and a %-encoded
    # password ("%40" for "@") would break it (and be quoted in the error), so it is doubled.
    # Migrations run on the engine's own connection; the URL is only env.py's fallback.
    url = engine.url.render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    from alembic.script import ScriptDirectory

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
    # Every command checks this: when the stored revision is the head the migration files
    # declare, that settles it without importing Alembic and loading every migration (~0.3 s
    # a command); anything else is left to Alembic, which words the answer.
    declared = declared_head()
    if declared is not None and _stored_revisions(engine) == [declared]:
        return
    current, head = current_revision(engine), head_revision(engine)
    if current != head:
        raise SchemaNotCurrent(current, head)


def declared_head() -> str | None:
    """The head revision as the migration files declare it, read as text; None unless they
    read as one chain with one head (then only Alembic decides)."""
    revisions: set[str] = set()
    parents: set[str | None] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        declared = {name: value or None for name, value in _DECLARED.findall(path.read_text())}
        revision = declared.get("revision")
        if revision is None or "down_revision" not in declared:
            return None
        revisions.add(revision)
        parents.add(declared["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _stored_revisions(engine: Engine) -> list[str]:
    """The revisions the database's ``alembic_version`` table holds (none: an empty database)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return []
        return [str(v) for v in conn.execute(text("SELECT version_num FROM alembic_version")).scalars()]


def revision(engine: Engine, message: str) -> None:
    """Autogenerate a migration from the models (developer tool)."""
    from alembic import command

    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True)
