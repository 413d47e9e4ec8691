"""Writes to review-UI accounts (``users``): creation, password, role, sign-in bookkeeping.

The rules (roles, password length, lockout policy, argon2) belong to ``review.auth``; these
functions only store what it decided, each in the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Connection

from registry_store.tables import USERS
from registry_store.timeutil import utcnow


def create_account(conn: Connection, *, username: str, password_hash: str, role: str) -> int:
    """A new account; returns its id."""
    return int(
        conn.execute(
            USERS.insert()
            .values(username=username, password_hash=password_hash, role=role, created_at=utcnow())
            .returning(USERS.c.id)
        ).scalar_one()
    )


def replace_password(conn: Connection, username: str, password_hash: str) -> bool:
    """New password hash: every session of the account ends and a lock is lifted.
    False when there is no such account."""
    done = conn.execute(
        update(USERS)
        .where(USERS.c.username == username)
        .values(
            password_hash=password_hash,
            session_version=USERS.c.session_version + 1,
            failed_logins=0,
            locked_until=None,
        )
    ).rowcount
    return bool(done)


def change_account(
    conn: Connection, username: str, *, role: str | None = None, disabled: bool | None = None
) -> bool:
    """Set the role and/or the disabled flag; False when there is no such account."""
    values: dict[str, Any] = {}
    if role is not None:
        values["role"] = role
    if disabled is not None:
        values["disabled"] = disabled
    if not values:
        return conn.execute(USERS.select().where(USERS.c.username == username)).first() is not None
    return bool(conn.execute(update(USERS).where(USERS.c.username == username).values(**values)).rowcount)


def record_login(conn: Connection, user_id: int, at: datetime, *, rehashed: str | None = None) -> None:
    """A successful sign-in: the failure count and any lock are cleared; ``rehashed`` replaces
    a hash made with outdated parameters."""
    values: dict[str, Any] = {"last_login_at": at, "failed_logins": 0, "locked_until": None}
    if rehashed is not None:
        values["password_hash"] = rehashed
    conn.execute(update(USERS).where(USERS.c.id == user_id).values(**values))


def count_failed_login(conn: Connection, user_id: int) -> int:
    """One more consecutive wrong password; returns the new count. Incremented in SQL so
    concurrent attempts cannot overwrite each other's count."""
    return int(
        conn.execute(
            update(USERS)
            .where(USERS.c.id == user_id)
            .values(failed_logins=USERS.c.failed_logins + 1)
            .returning(USERS.c.failed_logins)
        ).scalar_one()
    )


def lock_account(conn: Connection, user_id: int, until: datetime) -> None:
    """Refuse sign-in until ``until``; the failure count starts again after it."""
    conn.execute(update(USERS).where(USERS.c.id == user_id).values(failed_logins=0, locked_until=until))


def end_sessions(conn: Connection, user_id: int) -> None:
    """Void every session of the user: cookies carrying the old session version stop working."""
    conn.execute(
        update(USERS).where(USERS.c.id == user_id).values(session_version=USERS.c.session_version + 1)
    )
