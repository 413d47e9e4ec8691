"""PostgreSQL sessions plan every statement with its values (``plan_cache_mode``).

psycopg prepares a statement on the server after its fifth run; PostgreSQL's generic plan for
``source = $1 AND id IN ($2, …)`` filters the list over every row of the source instead of
looking the ids up, which made a 200,000-record remap quadratic. The setting must hold on every
pooled connection, including after a transaction that rolled back.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from registry_store.db import make_engine

pytestmark = pytest.mark.postgres


def test_postgresql_connections_use_custom_plans(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW plan_cache_mode")).scalar_one() == "force_custom_plan"
            conn.rollback()
        with engine.begin() as conn:
            assert conn.execute(text("SHOW plan_cache_mode")).scalar_one() == "force_custom_plan"
    finally:
        engine.dispose()
