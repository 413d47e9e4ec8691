"""Authentication for FHIR sources, as ``requests`` auth objects.

Methods: ``none``, ``basic``, ``bearer`` (a static token), ``client_credentials`` (OAuth2
with a client secret) and ``smart_backend`` (SMART Backend Services: a client assertion JWT
signed RS384/ES384 with PyJWT, per https://hl7.org/fhir/smart-app-launch/backend-services.html).
Secrets are read from environment variables named in the config and keys from files, so the
config file itself never holds them. OAuth tokens are cached, refreshed shortly before they
expire, and refreshed once more when the server still answers 401.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
import requests
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from requests.auth import AuthBase, HTTPBasicAuth

from adapters.http import HttpConfig, make_session, url_path

log = structlog.get_logger(__name__)

AuthMethod = Literal["none", "basic", "bearer", "client_credentials", "smart_backend"]
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 300  # the SMART spec caps exp at five minutes ahead


class AuthError(Exception):
    """Authentication could not be set up or a token could not be obtained."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """How a source authenticates. ``*_env`` fields name environment variables.

    ``token_url``: the OAuth token endpoint; when ``None`` it is read from the server's
    ``.well-known/smart-configuration``. ``algorithm``: ``RS384``/``ES384``, inferred from the
    key when ``None``. ``secret_in_body`` sends client_id/secret as form fields
    (client_secret_post) instead of HTTP Basic (client_secret_basic).
    """

    method: AuthMethod = "none"
    username: str | None = None
    password_env: str | None = None
    token_env: str | None = None
    token_url: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    secret_in_body: bool = False
    private_key_file: str | None = None
    key_id: str | None = None
    jku: str | None = None
    algorithm: Literal["RS384", "ES384"] | None = None
    scope: str = "system/*.read"
    refresh_margin_seconds: float = 60.0


def _env(name: str | None, what: str) -> str:
    if not name:
        raise AuthError(f"auth: {what} needs the name of an environment variable")
    value = os.environ.get(name)
    if not value:
        raise AuthError(f"auth: environment variable {name} ({what}) is not set")
    return value


class BearerAuth(AuthBase):
    """A fixed ``Authorization: Bearer`` token."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float  # clock() deadline
    lifetime: float


class OAuthClientAuth(AuthBase):
    """Bearer tokens from an OAuth2 token endpoint, cached and refreshed.

    A token is renewed ``refresh_margin_seconds`` before its ``expires_in`` runs out, and a
    401 on a request made with a cached token renews it and sends the request once more.
    """

    def __init__(self, cfg: AuthConfig, fhir_base_url: str, http: HttpConfig) -> None:
        if not cfg.client_id:
            raise AuthError(f"auth: {cfg.method} needs client_id")
        self.cfg = cfg
        self.fhir_base_url = fhir_base_url.rstrip("/")
        self.http = http
        self._session = make_session(http)
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self.clock: Callable[[], float] = time.monotonic  # tests move time forward
        self._token_url = cfg.token_url
        self._signing_key: Any = None
        self._alg: str | None = None
        if cfg.method == "smart_backend":
            self._signing_key, self._alg = _load_signing_key(cfg)
        else:
            _env(cfg.client_secret_env, "client secret")  # fail at start-up, not mid-sync

    # -- token handling
    def token_url(self) -> str:
        if self._token_url is None:
            url = f"{self.fhir_base_url}/.well-known/smart-configuration"
            resp = self._session.get(url, timeout=self.http.timeout)
            if resp.status_code != 200:
                raise AuthError(f"auth: no token_url configured and {url_path(url)} "
                                f"answered {resp.status_code}")
            self._token_url = str(resp.json()["token_endpoint"])
        return self._token_url

    def client_assertion(self) -> str:
        """The signed JWT a SMART backend client presents instead of a secret."""
        token_url = self.token_url()
        now = int(time.time())
        claims = {"iss": self.cfg.client_id, "sub": self.cfg.client_id, "aud": token_url,
                  "exp": now + ASSERTION_LIFETIME_S, "jti": uuid.uuid4().hex}
        headers: dict[str, Any] = {"typ": "JWT"}
        if self.cfg.key_id:
            headers["kid"] = self.cfg.key_id
        if self.cfg.jku:
            headers["jku"] = self.cfg.jku
        assert self._alg is not None
        return jwt.encode(claims, self._signing_key, algorithm=self._alg, headers=headers)

    def _fetch(self) -> _Token:
        form = {"grant_type": "client_credentials", "scope": self.cfg.scope}
        auth: HTTPBasicAuth | None = None
        if self.cfg.method == "smart_backend":
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = self.client_assertion()
        elif self.cfg.secret_in_body:
            form["client_id"] = str(self.cfg.client_id)
            form["client_secret"] = _env(self.cfg.client_secret_env, "client secret")
        else:
            auth = HTTPBasicAuth(str(self.cfg.client_id),
                                 _env(self.cfg.client_secret_env, "client secret"))
        url = self.token_url()
        started = self.clock()
        resp = self._session.post(url, data=form, auth=auth, timeout=self.http.timeout,
                                  headers={"Accept": "application/json"})
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or "access_token" not in body:
            # OAuth error codes and descriptions are about the client, never about patients.
            raise AuthError(f"auth: token request to {url_path(url)} failed with HTTP "
                            f"{resp.status_code}: {body.get('error', '?')}: "
                            f"{str(body.get('error_description', ''))[:200]}")
        lifetime = float(body.get("expires_in") or 300)
        log.info("auth.token_obtained", method=self.cfg.method, expires_in=lifetime)
        return _Token(str(body["access_token"]), started + lifetime, lifetime)

    def token(self, force: bool = False) -> str:
        with self._lock:
            tok = self._token
            # Short-lived tokens: renew at half their life rather than on every request.
            margin = min(self.cfg.refresh_margin_seconds, tok.lifetime / 2) if tok else 0.0
            if force or tok is None or self.clock() >= tok.expires_at - margin:
                self._token = tok = self._fetch()
            return tok.value

    # -- requests hooks
    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token()}"
        r.register_hook("response", self._retry_on_401)
        return r

    def _retry_on_401(self, resp: requests.Response, **kwargs: Any) -> requests.Response:
        if resp.status_code != 401 or getattr(resp.request, "_token_retried", False):
            return resp
        log.info("auth.token_rejected", path=url_path(resp.url or ""))
        _ = resp.content  # drain so the connection goes back to the pool
        resp.close()
        retry = resp.request.copy()
        retry.headers["Authorization"] = f"Bearer {self.token(force=True)}"
        retry._token_retried = True  # type: ignore[attr-defined]
        assert resp.connection is not None
        new = resp.connection.send(retry, **kwargs)
        new.history.append(resp)
        new.request = retry
        return new


def _load_signing_key(cfg: AuthConfig) -> tuple[Any, str]:
    if not cfg.private_key_file:
        raise AuthError("auth: smart_backend needs private_key_file")
    path = Path(cfg.private_key_file)
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise AuthError(f"auth: cannot load private key {path}: {type(exc).__name__}") from exc
    if isinstance(key, rsa.RSAPrivateKey):
        inferred = "RS384"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        inferred = "ES384"
    else:
        raise AuthError(f"auth: {path} is neither an RSA nor an EC key")
    alg = cfg.algorithm or inferred
    if alg != inferred:
        raise AuthError(f"auth: algorithm {alg} does not match the {inferred[:2]} key in {path}")
    return key, alg


def make_auth(cfg: AuthConfig, fhir_base_url: str, http: HttpConfig) -> AuthBase | None:
    """The ``requests`` auth object for ``cfg`` (``None`` for ``method: none``)."""
    if cfg.method == "none":
        return None
    if cfg.method == "basic":
        if not cfg.username:
            raise AuthError("auth: basic needs username")
        return HTTPBasicAuth(cfg.username, _env(cfg.password_env, "password"))
    if cfg.method == "bearer":
        return BearerAuth(_env(cfg.token_env, "bearer token"))
    if cfg.method in ("client_credentials", "smart_backend"):
        return OAuthClientAuth(cfg, fhir_base_url, http)
    raise AuthError(f"auth: unknown method {cfg.method!r}")
