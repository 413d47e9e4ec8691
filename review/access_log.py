"""The web server's access log, as structlog events without query strings.

uvicorn's own access log writes the full request target, and ``/cases?q=<MRN>`` would put a
medical record number in the log. This middleware logs one ``http.request`` event per
request with the path only (query values can be patient data; paths carry ids only), so
uvicorn runs with ``access_log=False``.

Reminder links (``/r/{token}``) are opened by patients: neither the token (it names their
reminder) nor their address is logged.
"""

from __future__ import annotations

import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("review.access")
PATIENT_LINKS = "/r/"


class AccessLog:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            path = str(scope.get("path", ""))
            patient = path.startswith(PATIENT_LINKS)
            client = None if patient else scope.get("client")
            log.info(
                "http.request",
                method=scope.get("method"),
                path=PATIENT_LINKS + "[token]" if patient else path,
                query="[redacted]" if scope.get("query_string") else None,
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 1),
                client=client[0] if client else None,
            )
