"""Users, passwords (argon2id) and who is signed in.

The session cookie holds only the user id and a CSRF token; the user's role and whether the
account is still enabled are read from the store on every request, so disabling an account or
changing a role takes effect at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine

from registry_store.models import User
from registry_store.timeutil import utcnow

USERS = User.__table__  # type: ignore[attr-defined]
ROLES = ("viewer", "reviewer", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}
MIN_PASSWORD = 12

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
        return int(
            conn.execute(
                USERS.insert()
                .values(username=username, password_hash=hashed, role=role, created_at=utcnow())
                .returning(USERS.c.id)
            ).scalar_one()
        )


def set_password(engine: Engine, username: str, password: str) -> None:
    hashed = hash_password(password)
    with engine.begin() as conn:
        done = conn.execute(
            update(USERS).where(USERS.c.username == username).values(password_hash=hashed)
        ).rowcount
    if not done:
        raise UserError(f"no user {username}")


def set_user(engine: Engine, username: str, *, role: str | None = None, disabled: bool | None = None) -> None:
    values: dict[str, Any] = {}
    if role is not None:
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}")
        values["role"] = role
    if disabled is not None:
        values["disabled"] = disabled
    with engine.begin() as conn:
        done = conn.execute(update(USERS).where(USERS.c.username == username).values(**values)).rowcount
    if not done:
        raise UserError(f"no user {username}")


def list_users(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        query = select(
            USERS.c.username, USERS.c.role, USERS.c.disabled, USERS.c.created_at, USERS.c.last_login_at
        ).order_by(USERS.c.username)
        return [dict(r._mapping) for r in conn.execute(query)]


def authenticate(conn: Connection, username: str, password: str) -> CurrentUser | None:
    """The user if the password matches and the account is enabled; the hash is upgraded if stale."""
    row = conn.execute(select(USERS).where(USERS.c.username == username.strip())).first()
    stored = row.password_hash if row is not None else _DUMMY_HASH
    try:
        _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None or row.disabled:
        return None
    values: dict[str, Any] = {"last_login_at": utcnow()}
    if _hasher.check_needs_rehash(stored):
        values["password_hash"] = _hasher.hash(password)
    conn.execute(update(USERS).where(USERS.c.id == row.id).values(**values))
    return CurrentUser(int(row.id), row.username, row.role)


def load_user(conn: Connection, user_id: Any) -> CurrentUser | None:
    if not isinstance(user_id, int):
        return None
    row = conn.execute(
        select(USERS.c.id, USERS.c.username, USERS.c.role, USERS.c.disabled).where(USERS.c.id == user_id)
    ).first()
    if row is None or row.disabled or row.role not in _RANK:
        return None
    return CurrentUser(int(row.id), row.username, row.role)
