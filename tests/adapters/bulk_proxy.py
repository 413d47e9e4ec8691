"""A reverse proxy in front of the test FHIR server for what its Bulk Data side lacks.

Everything is forwarded to the real server (tests/fhir_server) with the client's ``Host``
header, so the URLs the server writes into ``Content-Location`` and manifests point back at
the proxy. On top of that the proxy

- adds the Bulk Data 2.0 ``deleted`` array to manifests of exports asked with ``_since``: one
  NDJSON file per resource type of transaction Bundles whose entries are ``DELETE Type/id``,
  built from the server's own type-level ``_history`` DELETE entries (so the deletions are
  the server's real ones) between ``_since`` and the export's ``transactionTime``;
- can cut a file download the way no framing shows: ``200`` without ``Content-Length``,
  the first bytes of the real body, then the connection closed (``Connection: close``).

Used only by tests/adapters/test_fhir_bulk.py.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import requests

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                        "upgrade", "proxy-authorization", "proxy-authenticate", "content-length"})
DEFAULT_DELETED_TYPES = ("Patient", "Encounter", "Procedure", "Condition",
                         "QuestionnaireResponse")
ADMIN_TOKEN = "test-admin-token"  # always valid on the test server (see fixture.py)


@dataclass
class _Cut:
    pattern: re.Pattern[str]
    remaining: int
    partial_bytes: int | None
    lines: int | None


class BulkProxy:
    """``with BulkProxy(fhir.base_url) as proxy: ... proxy.base_url ...``"""

    def __init__(self, upstream: str,
                 deleted_types: tuple[str, ...] = DEFAULT_DELETED_TYPES,
                 entries_per_bundle: int = 2) -> None:
        self.upstream = upstream.rstrip("/")
        self.deleted_types = deleted_types
        self.entries_per_bundle = entries_per_bundle
        self.files: dict[str, bytes] = {}  # path -> NDJSON served by the proxy itself
        self.cuts: list[_Cut] = []
        self.log: list[dict[str, Any]] = []
        self.http = requests.Session()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> BulkProxy:
        self.thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()

    def cut_without_length(self, path: str, *, partial_bytes: int | None = None,
                           lines: int | None = None, times: int = 1) -> None:
        """The next ``times`` GETs matching ``path`` get a 200 with no ``Content-Length``
        holding the first ``partial_bytes`` bytes (or the first ``lines`` whole lines)."""
        self.cuts.append(_Cut(re.compile(path), times, partial_bytes, lines))

    def _take_cut(self, path: str) -> _Cut | None:
        with self.lock:
            for cut in self.cuts:
                if cut.remaining > 0 and cut.pattern.search(path):
                    cut.remaining -= 1
                    return cut
        return None

    # -- deleted files
    def add_deleted(self, manifest: dict[str, Any], job: str, host: str) -> None:
        query = parse_qs(urlsplit(str(manifest.get("request", ""))).query)
        since = (query.get("_since") or [""])[0]
        if not since:
            return  # the IG fills ``deleted`` only for exports asked with _since
        types = (query.get("_type") or [",".join(self.deleted_types)])[0].split(",")
        until = str(manifest.get("transactionTime"))
        deleted = []
        for rtype in types:
            refs = self._deleted_since(rtype, since, until)
            if not refs:
                continue
            step = self.entries_per_bundle
            lines = [orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"request": {"method": "DELETE", "url": ref}} for ref in refs[i:i + step]]})
                for i in range(0, len(refs), step)]
            path = f"/bulk-deleted/{job}/{rtype}-deleted.ndjson"
            self.files[path] = b"\n".join(lines) + b"\n"
            deleted.append({"type": "Bundle", "url": f"http://{host}{path}",
                            "count": len(lines)})
        manifest["deleted"] = deleted

    def _deleted_since(self, rtype: str, since: str, until: str) -> list[str]:
        resp = self.http.get(f"{self.upstream}/{rtype}/_history",
                             params={"_since": since, "_count": "1000"}, timeout=30,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        resp.raise_for_status()
        refs = []
        for entry in resp.json().get("entry") or []:
            request = entry.get("request") or {}
            when = (entry.get("response") or {}).get("lastModified", "")
            if request.get("method") == "DELETE" and when <= until:
                refs.append(str(request["url"]))
        return sorted(refs)


def _handler(proxy: BulkProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request log below is what tests read

        def do_GET(self) -> None:
            self.forward()

        def do_POST(self) -> None:
            self.forward()

        def do_DELETE(self) -> None:
            self.forward()

        def forward(self) -> None:
            entry: dict[str, Any] = {"method": self.command, "url": self.path,
                                     "range": self.headers.get("Range"), "status": None,
                                     "fault": None}
            proxy.log.append(entry)
            path = urlsplit(self.path).path
            if path in proxy.files:
                self.serve_file(proxy.files[path], entry)
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            try:
                resp = proxy.http.request(self.command, proxy.upstream + self.path,
                                          headers=headers, data=body, timeout=30,
                                          allow_redirects=False)
            except requests.RequestException:
                self.close_connection = True  # the upstream cut us: cut the client too
                return
            content = resp.content
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            if path.startswith("/bulk-status/") and resp.status_code == 200:
                manifest = resp.json()
                proxy.add_deleted(manifest, path.rsplit("/", 1)[-1], self.headers["Host"])
                content = orjson.dumps(manifest)
            cut = proxy._take_cut(path) if self.command == "GET" and resp.ok else None
            entry["status"] = resp.status_code
            if cut is not None:
                entry["fault"] = "cut_without_length"
                if cut.lines is not None:
                    keep = len(b"".join(content.splitlines(keepends=True)[:cut.lines]))
                else:
                    keep = min(cut.partial_bytes or len(content) // 2, len(content) - 1)
                self.send_response(resp.status_code)
                for k, v in out.items():
                    self.send_header(k, v)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(content[:keep])
                self.close_connection = True
                return
            self.reply(resp.status_code, content, out)

        def serve_file(self, data: bytes, entry: dict[str, Any]) -> None:
            m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            headers = {"Content-Type": "application/fhir+ndjson", "Accept-Ranges": "bytes"}
            if m is None:
                status, body = 200, data
            elif int(m.group(1)) >= len(data):
                status, body = 416, b""
                headers["Content-Range"] = f"bytes */{len(data)}"
            else:
                start = int(m.group(1))
                status, body = 206, data[start:]
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            entry["status"] = status
            self.reply(status, body, headers)

        def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
