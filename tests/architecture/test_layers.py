"""The house's rules, checked on the code itself (README, "Contributing: architecture").

- The top-level packages import one another in one direction only (``layers.LAYERS``, bottom
  first), so there is no import cycle between them.
- Only ``registry_store`` writes tables: anything else calls its named write functions.
- Migrations import no live code: a revision must do what it did when it was written.
"""

from __future__ import annotations

import ast
import tomllib

import pytest

from tests.architecture.layers import (
    LAYERS,
    ROOT,
    STORE,
    cycles,
    imported_modules,
    package_imports,
    python_files,
    table_writes,
    writes_outside_store,
)


def test_no_import_cycle_between_top_level_packages() -> None:
    edges = package_imports()
    found = cycles(edges)
    detail = [
        f"{a} -> {b}: {where[0]}"
        for group in found
        for a in group
        for b, where in edges[a].items()
        if b in group
    ]
    assert found == [], "import cycles between packages:\n" + "\n".join(detail)


def test_each_package_imports_only_packages_below_it() -> None:
    edges = package_imports()
    upward = [
        f"{a} (layer {LAYERS.index(a)}) -> {b} (layer {LAYERS.index(b)}): {where[0]}"
        for a, targets in edges.items()
        for b, where in targets.items()
        if LAYERS.index(b) > LAYERS.index(a)
    ]
    assert upward == [], "imports up the layers:\n" + "\n".join(upward)


def test_only_registry_store_writes_tables() -> None:
    found = writes_outside_store()
    assert found == [], (
        "table writes outside registry_store (put them in a named function there):\n"
        + "\n".join(map(str, found))
    )


def test_migrations_import_no_live_code() -> None:
    live = set(LAYERS)
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in python_files(f"{STORE}/migrations/versions")
        for line, module in imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        if module.split(".")[0] in live
    ]
    assert found == []


# -- the checks themselves ---------------------------------------------------------------


@pytest.mark.parametrize(
    "snippet",
    [
        "from sqlalchemy import update\nupdate(T).values(a=1)",
        "from sqlalchemy import delete as remove\nremove(T)",
        "from sqlalchemy.dialects import postgresql\npostgresql.insert(T)",
        "from sqlalchemy.dialects import postgresql, sqlite\n"
        "dialect = postgresql if pg else sqlite\ndialect.insert(T)",
        "import sqlalchemy as sa\nsa.insert(T)",
        "USERS.insert().values(name='x')",
        "from registry_store.db import upsert\nupsert(conn, T, rows, keys=['id'])",
        "conn.execute(text('INSERT INTO users (name) VALUES (:n)'))",
        "conn.exec_driver_sql('update users set role = 1')",
        "conn.execute(text('DELETE FROM cases'))",
        "from sqlmodel import Session\nwith Session(engine) as session:\n    session.add(row)",
        "from sqlalchemy.orm import Session\nself.session.merge(row)",
    ],
)
def test_a_table_write_is_found(snippet: str) -> None:
    assert len(table_writes(snippet)) == 1


@pytest.mark.parametrize(
    "snippet",
    [
        "seen = set()\nseen.add(1)",
        "row = {}\nrow.update(a=1)",
        "import hashlib\nhashlib.sha256().update(b'x')",
        "import requests\nrequests.Session().delete(url)",  # an HTTP DELETE, not a table
        "from sqlalchemy import select\nselect(T).where(T.c.a == 1)",
        "def f():\n    '''Acquiring is one INSERT INTO job_locks ... statement.'''",
        "message = 'delete the file from the drop folder'",
    ],
)
def test_what_is_not_a_table_write(snippet: str) -> None:
    assert table_writes(snippet) == []


def test_cycles_are_found() -> None:
    edges = {"a": {"b": ["x"]}, "b": {"c": ["x"]}, "c": {"a": ["x"]}, "d": {"a": ["x"]}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b": ["x"]}, "b": {}}) == []


def test_every_packaged_top_level_package_has_a_layer() -> None:
    """A new top-level package must take its place in ``LAYERS`` (and so in these checks)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {pattern.rstrip("*") for pattern in include} == set(LAYERS)
