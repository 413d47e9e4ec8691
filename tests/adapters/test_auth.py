"""Auth methods against the test server's token endpoint and bearer enforcement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapters.auth import AuthConfig, AuthError, OAuthClientAuth, make_auth
from adapters.base import SourceContext
from adapters.fhir_rest import FhirRestConfig, FhirRestSource
from adapters.http import FhirHttpError, HttpConfig
from tests.adapters.harness import run_until_done
from tests.adapters.spine_data import keys, spine_cohort
from tests.fhir_server.fixture import FhirTestServer

HTTP = HttpConfig(timeout=(5, 10), retries=2, backoff_factor=0.01)


def _keypair(alg: str) -> Any:
    if alg == "RS384":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1())


def _write_pem(key: Any, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


def _public_jwk(key: Any, alg: str, kid: str) -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if alg == "RS384" else jwt.algorithms.ECAlgorithm
    jwk = json.loads(algo.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def smart_client(fhir: FhirTestServer, tmp_path: Path, alg: str, *,
                 register_key: Any = None, jku: str | None = None) -> AuthConfig:
    """Generate a key, register its public JWK with the server, return the source's config."""
    key = _keypair(alg)
    kid = f"test-{alg.lower()}"
    registered = register_key or key
    fhir.register_client("registry-backend",
                         jwks={"keys": [_public_jwk(registered, alg, kid)]}, jku=jku)
    return AuthConfig(method="smart_backend", client_id="registry-backend",
                      private_key_file=_write_pem(key, tmp_path / f"{kid}.pem"), key_id=kid,
                      jku=jku, scope="system/Procedure.rs system/Patient.rs")


def rest(fhir: FhirTestServer, auth: AuthConfig) -> FhirRestSource:
    return FhirRestSource("auth-test", FhirRestConfig(
        base_url=fhir.base_url, page_size=4, auth=auth, http=HTTP, fetch_references=False))


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_smart_backend_services(fhir: FhirTestServer, tmp_path: Path, alg: str) -> None:
    data = spine_cohort(2)
    fhir.seed(data)
    auth = smart_client(fhir, tmp_path, alg, jku="https://registry.example/jwks.json")
    fhir.set_auth(required=True, token_lifetime=3600)

    done = run_until_done(rest(fhir, auth))

    assert set(done.resource_keys()) == keys(data)
    log = fhir.requests()
    assert [r["status"] for r in log if r["url"] == "/auth/token"] == [200]  # cached
    assert all(r["status"] == 200 for r in log)


def test_client_assertion_claims(fhir: FhirTestServer, tmp_path: Path) -> None:
    cfg = smart_client(fhir, tmp_path, "ES384", jku="https://registry.example/jwks.json")
    auth = OAuthClientAuth(cfg, fhir.base_url, HTTP)
    assertion = auth.client_assertion()
    header = jwt.get_unverified_header(assertion)
    claims = jwt.decode(assertion, options={"verify_signature": False})
    assert header["alg"] == "ES384" and header["kid"] == "test-es384"
    assert header["jku"] == "https://registry.example/jwks.json"
    assert claims["iss"] == claims["sub"] == "registry-backend"
    assert claims["aud"] == fhir.token_url  # discovered from .well-known/smart-configuration
    assert 0 < claims["exp"] - __import__("time").time() <= 300
    assert auth.client_assertion() != assertion  # fresh jti each time


def test_wrong_key_is_rejected_with_oauth_error(fhir: FhirTestServer, tmp_path: Path) -> None:
    auth = smart_client(fhir, tmp_path, "RS384", register_key=_keypair("RS384"))
    fhir.set_auth(required=True)
    with pytest.raises(AuthError, match="invalid_client: signature does not verify"):
        list(rest(fhir, auth).read(SourceContext()))


def test_key_algorithm_mismatch(tmp_path: Path) -> None:
    pem = _write_pem(_keypair("ES384"), tmp_path / "k.pem")
    with pytest.raises(AuthError, match="does not match"):
        make_auth(AuthConfig(method="smart_backend", client_id="x", private_key_file=pem,
                             algorithm="RS384", token_url="http://127.0.0.1:1/t"),
                  "http://127.0.0.1:1", HTTP)


@pytest.mark.parametrize("in_body", [False, True])
def test_client_credentials_secret(fhir: FhirTestServer, monkeypatch: pytest.MonkeyPatch,
                                   in_body: bool) -> None:
    fhir.seed(spine_cohort(1))
    fhir.register_client("registry", client_secret="s3cret")
    fhir.set_auth(required=True)
    monkeypatch.setenv("REG_SECRET", "s3cret")
    auth = AuthConfig(method="client_credentials", client_id="registry",
                      client_secret_env="REG_SECRET", secret_in_body=in_body)
    done = run_until_done(rest(fhir, auth))
    assert len(done.records) == 6


def test_token_cached_and_refreshed_before_expiry(fhir: FhirTestServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fhir.register_client("registry", client_secret="s3cret")
    fhir.set_auth(required=True, token_lifetime=30)
    monkeypatch.setenv("REG_SECRET", "s3cret")
    auth = OAuthClientAuth(AuthConfig(method="client_credentials", client_id="registry",
                                      client_secret_env="REG_SECRET",
                                      refresh_margin_seconds=10), fhir.base_url, HTTP)
    now = [1000.0]
    auth.clock = lambda: now[0]
    session = requests.Session()

    first = auth.token()
    now[0] += 19  # 11 s left: more than the 10 s margin, the cached token is used
    assert session.get(f"{fhir.base_url}/Patient", auth=auth, timeout=5).status_code == 200
    assert auth.token() == first
    now[0] += 2  # 9 s left: renewed before the server would refuse it
    second = auth.token()
    assert second != first
    log = fhir.requests()
    assert sum(r["url"] == "/auth/token" for r in log) == 2
    assert 401 not in [r["status"] for r in log]


def test_short_lived_token_renewed_at_half_life(fhir: FhirTestServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fhir.register_client("registry", client_secret="s3cret")
    fhir.set_auth(required=True, token_lifetime=20)  # shorter than the 60 s margin
    monkeypatch.setenv("REG_SECRET", "s3cret")
    auth = OAuthClientAuth(AuthConfig(method="client_credentials", client_id="registry",
                                      client_secret_env="REG_SECRET"), fhir.base_url, HTTP)
    now = [0.0]
    auth.clock = lambda: now[0]
    first = auth.token()
    now[0] = 9
    assert auth.token() == first
    now[0] = 11
    assert auth.token() != first


def test_bad_secret_fails_clearly(fhir: FhirTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    fhir.register_client("registry", client_secret="s3cret")
    fhir.set_auth(required=True)
    monkeypatch.setenv("REG_SECRET", "wrong")
    auth = AuthConfig(method="client_credentials", client_id="registry",
                      client_secret_env="REG_SECRET", token_url=fhir.token_url)
    with pytest.raises(AuthError, match=r"HTTP 401: invalid_client") as info:
        list(rest(fhir, auth).read(SourceContext()))
    assert "wrong" not in str(info.value)


def test_basic_and_static_bearer(fhir: FhirTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    fhir.seed(spine_cohort(1))
    fhir.set_auth(required=True, static_tokens=["static-abc"],
                  basic=[{"user": "reg", "password": "pw"}])
    monkeypatch.setenv("REG_PW", "pw")
    monkeypatch.setenv("REG_TOKEN", "static-abc")
    for auth in (AuthConfig(method="basic", username="reg", password_env="REG_PW"),
                 AuthConfig(method="bearer", token_env="REG_TOKEN")):
        assert len(run_until_done(rest(fhir, auth)).records) == 6
    monkeypatch.setenv("REG_TOKEN", "not-valid")
    with pytest.raises(FhirHttpError, match="HTTP 401 from /Patient: error/login"):
        list(rest(fhir, AuthConfig(method="bearer", token_env="REG_TOKEN")).read(SourceContext()))


def test_missing_env_var_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_SECRET", raising=False)
    with pytest.raises(AuthError, match="NOPE_SECRET"):
        make_auth(AuthConfig(method="client_credentials", client_id="x",
                             client_secret_env="NOPE_SECRET"), "http://127.0.0.1:1", HTTP)


def test_enforcement_without_credentials_is_401(fhir: FhirTestServer) -> None:
    fhir.set_auth(required=True)
    resp = requests.get(f"{fhir.base_url}/Patient", timeout=5)
    assert resp.status_code == 401 and "Bearer" in resp.headers["WWW-Authenticate"]
