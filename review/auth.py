"""Users, passwords (argon2id) and who is signed in.

The session cookie holds only the user id, the account's session version and a CSRF token;
the user's role, whether the account is still enabled and its current session version are read
from the store on every request, so disabling an account, changing a role, signing out or
changing the password takes effect at once (a copied cookie dies with them).

Sign-in is throttled per account: after ``max_failures`` consecutive wrong passwords the account
is locked for a while. A locked account answers exactly like a wrong password (same message,
same argon2 verification), so neither the lock nor the account's existence can be probed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from registry_store import accounts, audit
from registry_store.tables import USERS
from registry_store.timeutil import as_utc, utcnow

ROLES = ("viewer", "reviewer", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}
MIN_PASSWORD = 12
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)

_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps login time the same either way,
# so response times do not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password-for-timing")


class UserError(Exception):
    """A user cannot be created or changed as asked."""


@dataclass(frozen=True)
class CurrentUser:
    id: int
    username: str
    role: str
    session_version: int = 0

    def can(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def add_user(engine: Engine, username: str, password: str, role: str) -> int:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    username = username.strip()
    if not username or len(username) > 100:
        raise UserError("the username must have 1 to 100 characters")
    hashed = hash_password(password)
    with engine.begin() as conn:
        if conn.execute(select(USERS.c.id).where(func.lower(USERS.c.username) == username.lower())).first():
            raise UserError(f"user {username} already exists")
        return accounts.create_account(conn, username=username, password_hash=hashed, role=role)


def set_password(engine: Engine, username: str, password: str) -> None:
    """New password; every session of the account ends and a lock is lifted."""
    hashed = hash_password(password)
    with engine.begin() as conn:
        done = accounts.replace_password(conn, username, hashed)
    if not done:
        raise UserError(f"no user {username}")


def set_user(engine: Engine, username: str, *, role: str | None = None, disabled: bool | None = None) -> None:
    if role is not None and role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    with engine.begin() as conn:
        done = accounts.change_account(conn, username, role=role, disabled=disabled)
    if not done:
        raise UserError(f"no user {username}")


def list_users(engine: Engine) -> list[dict[str, Any]]:
    """Accounts with role and state; ``locked_until`` is UTC (past values mean unlocked)."""
    with engine.connect() as conn:
        query = select(
            USERS.c.username,
            USERS.c.role,
            USERS.c.disabled,
            USERS.c.created_at,
            USERS.c.last_login_at,
            USERS.c.locked_until,
        ).order_by(USERS.c.username)
        rows = [dict(r._mapping) for r in conn.execute(query)]
    for row in rows:
        for key in ("created_at", "last_login_at", "locked_until"):
            row[key] = as_utc(row[key])
    return rows


def authenticate(
    conn: Connection,
    username: str,
    password: str,
    *,
    max_failures: int = MAX_FAILURES,
    lockout: timedelta = LOCKOUT,
) -> CurrentUser | None:
    """The user if the password matches and the account is enabled and not locked.

    Every call verifies one argon2 hash (a dummy one for unknown users) whatever the outcome,
    so timing tells nothing. Failures count per account; the ``max_failures``-th in a row
    locks it for ``lockout`` and is audited. Success resets the count and upgrades a stale hash.
    """
    row = conn.execute(select(USERS).where(USERS.c.username == username.strip())).first()
    stored = row.password_hash if row is not None else _DUMMY_HASH
    try:
        _hasher.verify(stored, password)
        matched = True
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        matched = False
    if row is None:
        return None
    now = utcnow()
    locked_until = as_utc(row.locked_until)
    if locked_until is not None and locked_until > now:
        # Attempts during the lock neither count nor extend it: the lock ends on time.
        return None
    if not matched:
        _count_failure(conn, row, now, max_failures, lockout)
        return None
    if row.disabled:
        return None
    rehashed = _hasher.hash(password) if _hasher.check_needs_rehash(stored) else None
    accounts.record_login(conn, int(row.id), now, rehashed=rehashed)
    return CurrentUser(int(row.id), row.username, row.role, int(row.session_version or 0))


def _count_failure(conn: Connection, row: Any, now: datetime, max_failures: int, lockout: timedelta) -> None:
    failures = accounts.count_failed_login(conn, int(row.id))
    if failures < max_failures:
        return
    until = now + lockout
    accounts.lock_account(conn, int(row.id), until)
    audit.record(
        conn,
        username=row.username,
        action="user.locked",
        target=f"user:{row.username}",
        before={"failed_logins": failures},
        after={"locked_until": until.isoformat(timespec="seconds"), "minutes": lockout.total_seconds() / 60},
    )


def end_sessions(conn: Connection, user_id: int) -> None:
    """Void every session of the user (sign-out): cookies carrying the old version stop working."""
    accounts.end_sessions(conn, user_id)


def load_user(conn: Connection, user_id: Any, session_version: Any = 0) -> CurrentUser | None:
    """The session's user, or None if the account is gone, disabled or the session was voided."""
    if not isinstance(user_id, int) or not isinstance(session_version, int):
        return None
    row = conn.execute(
        select(USERS.c.id, USERS.c.username, USERS.c.role, USERS.c.disabled, USERS.c.session_version).where(
            USERS.c.id == user_id
        )
    ).first()
    if (
        row is None
        or row.disabled
        or row.role not in _RANK
        or int(row.session_version or 0) != session_version
    ):
        return None
    return CurrentUser(int(row.id), row.username, row.role, int(row.session_version or 0))


