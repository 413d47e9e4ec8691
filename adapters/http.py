"""HTTP plumbing shared by the FHIR adapters: one configured ``requests.Session`` per source.

Retries are urllib3's ``Retry`` (exponential backoff with jitter, ``Retry-After`` honoured on
429/503) mounted on the session, so every call gets them. urllib3 only retries until the
response headers arrive; a connection cut while the *body* is read surfaces later, from
``requests``, so :func:`get_with_body_retry` replays such reads with the same ``Retry``
policy (its ``increment``/``sleep``) rather than a second hand-written backoff.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

log = structlog.get_logger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# POST is included because the adapters only POST token requests, which are safe to repeat;
# $export kick-off uses GET.
RETRY_METHODS = frozenset({"GET", "HEAD", "DELETE", "POST"})
# What requests raises when the connection dies while the body is read (urllib3's
# IncompleteRead/ProtocolError wrapped); errors before the headers are urllib3's to retry.
BODY_READ_ERRORS = (requests.exceptions.ChunkedEncodingError,)


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Transport settings of one source.

    ``verify``: ``True`` (system CAs), ``False`` (never in production) or a CA bundle path.
    ``timeout``: (connect, read) seconds. ``retries``: attempts after the first, per request.
    """

    timeout: tuple[float, float] = (10.0, 120.0)
    verify: bool | str = True
    retries: int = 5
    backoff_factor: float = 0.5
    backoff_max: float = 60.0
    backoff_jitter: float = 0.5
    retry_after_max: int = 900
    pool_maxsize: int = 4
    user_agent: str = "spine-registry-adapter"


class FhirHttpError(Exception):
    """A FHIR server answered with an error status.

    The message carries the status, the URL *path* (queries can hold identifiers) and the
    OperationOutcome's issue severities/codes and diagnostics text, never request data.
    """

    def __init__(self, status: int, path: str, issues: list[dict[str, str]]) -> None:
        self.status = status
        self.path = path
        self.issues = issues
        detail = "; ".join(
            f"{i.get('severity', '?')}/{i.get('code', '?')}"
            + (f": {i['diagnostics']}" if i.get("diagnostics") else "")
            for i in issues
        ) or "no OperationOutcome"
        super().__init__(f"HTTP {status} from {path}: {detail}")


def make_retry(cfg: HttpConfig) -> Retry:
    return Retry(
        total=cfg.retries,
        connect=cfg.retries,
        read=cfg.retries,
        status=cfg.retries,
        other=cfg.retries,
        allowed_methods=RETRY_METHODS,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=cfg.backoff_factor,
        backoff_max=cfg.backoff_max,
        backoff_jitter=cfg.backoff_jitter,
        respect_retry_after_header=True,
        retry_after_max=cfg.retry_after_max,
        # Hand the final 429/503 to the caller, which turns its OperationOutcome into an error.
        raise_on_status=False,
    )


class _Session(requests.Session):
    """A configured CA bundle (or ``verify: false``) wins over ``REQUESTS_CA_BUNDLE``.

    Plain requests lets the environment variable replace ``Session.verify`` (psf/requests
    #3829), so a site's CA file would silently be ignored on hosts that set it. With
    ``verify: true`` the environment still applies, as operators expect.
    """

    def merge_environment_settings(self, url: str | bytes | None, proxies: Any, stream: Any,
                                   verify: Any, cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


def make_session(cfg: HttpConfig) -> requests.Session:
    """A session with pooled keep-alive connections, TLS verification and retries."""
    session = _Session()
    adapter = HTTPAdapter(max_retries=make_retry(cfg), pool_maxsize=cfg.pool_maxsize)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.verify = cfg.verify
    session.headers["User-Agent"] = cfg.user_agent
    return session


def url_path(url: str) -> str:
    """The path of a URL, for logs and origins: queries may carry identifiers."""
    return urlsplit(url).path or "/"


def operation_outcome_issues(body: Any) -> list[dict[str, str]]:
    """Severity, code, detail codes and diagnostics (trimmed) of an OperationOutcome."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "OperationOutcome":
        return []
    issues: list[dict[str, str]] = []
    for issue in body.get("issue") or []:
        if not isinstance(issue, Mapping):
            continue
        details = issue.get("details") or {}
        text = issue.get("diagnostics") or details.get("text") or ""
        codes = ",".join(str(c.get("code")) for c in details.get("coding") or [] if c.get("code"))
        item = {"severity": str(issue.get("severity", "")), "code": str(issue.get("code", ""))}
        if codes:
            item["details"] = codes
        if text:
            # Servers' diagnostics are about the request, not patients; trimmed all the same.
            item["diagnostics"] = str(text)[:300]
        issues.append(item)
    return issues


def raise_for_fhir(resp: requests.Response) -> None:
    """Raise :class:`FhirHttpError` for a 4xx/5xx answer, with its OperationOutcome."""
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = None
    raise FhirHttpError(resp.status_code, url_path(resp.url or ""), operation_outcome_issues(body))


def get_with_body_retry(session: requests.Session, url: str, cfg: HttpConfig,
                        **kwargs: Any) -> requests.Response:
    """GET and read the whole body, retrying a connection cut mid-body like any other error."""
    retry = make_retry(cfg)
    while True:
        try:
            resp = session.get(url, timeout=cfg.timeout, **kwargs)
            _ = resp.content  # reading the body is where a cut connection shows up
            return resp
        except BODY_READ_ERRORS as exc:
            try:
                retry = retry.increment(method="GET", url=url_path(url), error=exc)
            except MaxRetryError:
                raise exc from None
            log.warning("http.body_retry", path=url_path(url), error=type(exc).__name__,
                        attempt=len(retry.history))
            retry.sleep()
