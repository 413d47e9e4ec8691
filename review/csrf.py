"""CSRF protection for forms: a random token per session, required in every POST.

A synchronizer token (rather than only SameSite cookies) because SameSite=Lax still lets
same-site subdomains post, and some hospital browsers are old.
"""

from __future__ import annotations

import secrets

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request

FIELD = "csrf_token"
_KEY = "csrf"


def token(request: Request) -> str:
    """The session's token, created on first use (the login form needs one too)."""
    value = request.session.get(_KEY)
    if not isinstance(value, str):
        value = secrets.token_urlsafe(32)
        request.session[_KEY] = value
    return value


def rotate(request: Request) -> None:
    request.session[_KEY] = secrets.token_urlsafe(32)


async def checked_form(request: Request) -> FormData:
    """The POSTed form, or 403 when its token is missing or not this session's."""
    form = await request.form()
    sent = form.get(FIELD)
    expected = request.session.get(_KEY)
    if (
        not isinstance(sent, str)
        or not isinstance(expected, str)
        or not secrets.compare_digest(sent, expected)
    ):
        raise HTTPException(403, "the form has expired or did not come from this site; reload and try again")
    return form
