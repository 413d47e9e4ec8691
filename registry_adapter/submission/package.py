"""The submission package: pseudonymised CSV files that follow the data dictionary, and a
manifest with each file's row count and SHA-256, zipped.

Only coded and numeric values go in: the registry pseudonym instead of the MRN, keyed hashes
instead of case and response ids, dates of birth as configured, and no names, addresses,
telephone numbers, e-mail addresses or free text, which never leave the site.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from registry_adapter.submission.dictionary import DataDictionary, as_csv

MANIFEST = "manifest.json"


def keyed_id(key: bytes, kind: str, value: str) -> str:
    """What the registry knows a case or response by: stable, not reversible without the key."""
    return hmac.new(key, f"{kind}\x1f{value}".encode(), hashlib.sha256).hexdigest()[:24]


@dataclass
class CaseRecord:
    """A case's rows in each file (values already in the dictionary's text form)."""

    case_id: str
    case_key: str
    rows: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    action: str = "new"
    # The staged record of the case's anchor procedure (where its review errors live).
    anchor_staging_id: int | None = None

    def content_hash(self) -> str:
        """Digest of everything sent about the case except how it is sent (new or changed)."""
        body = {
            f: [{k: v for k, v in r.items() if k != "record_action"} for r in rows]
            for f, rows in sorted(self.rows.items())
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Withdrawal:
    case_id: str
    case_key: str
    reason: str


@dataclass(frozen=True)
class Package:
    name: str
    data: bytes
    manifest: dict[str, Any]

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _csv(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\r\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: as_csv(row.get(c)) for c in columns})
    return buf.getvalue().encode("utf-8")


def package_name(site_id: str, period: str, generated_at: datetime, data: bytes) -> str:
    """Site, period, time and the start of the package's SHA-256: two packages made in the same
    second (a withdrawal right after a run) never share a name, so none overwrites another."""
    safe_site = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in site_id)
    digest = hashlib.sha256(data).hexdigest()[:10]
    return f"{safe_site}_{period}_{generated_at.strftime('%Y%m%dT%H%M%SZ')}_{digest}.zip"


def build_package(
    dictionary: DataDictionary,
    *,
    site_id: str,
    period: str,
    records: Sequence[CaseRecord],
    withdrawals: Sequence[Withdrawal],
    generated_at: datetime,
) -> Package:
    """Zip one CSV per dictionary file (header only when empty) and the manifest."""
    by_file: dict[str, list[dict[str, str]]] = {name: [] for name in dictionary.files}
    for record in records:
        for file, rows in record.rows.items():
            by_file[file].extend(rows)
    by_file["withdrawals.csv"] = [{"case_key": w.case_key, "reason": w.reason} for w in withdrawals]
    stamp = generated_at.timetuple()[:6]
    files: dict[str, dict[str, Any]] = {}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in dictionary.files:
            content = _csv(dictionary.columns(name), by_file[name])
            files[name] = {
                "rows": len(by_file[name]),
                "bytes": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            }
            zf.writestr(zipfile.ZipInfo(name, date_time=stamp), content, compress_type=zipfile.ZIP_DEFLATED)
        manifest = {
            "site_id": site_id,
            "period": period,
            "data_dictionary_version": dictionary.version,
            "generated_at": generated_at.isoformat().replace("+00:00", "Z"),
            "cases": len(records),
            "withdrawals": len(withdrawals),
            "files": files,
        }
        zf.writestr(
            zipfile.ZipInfo(MANIFEST, date_time=stamp),
            json.dumps(manifest, indent=2, sort_keys=True).encode(),
            compress_type=zipfile.ZIP_DEFLATED,
        )
    data = buf.getvalue()
    return Package(package_name(site_id, period, generated_at, data), data, manifest)


def verify_package(data: bytes) -> dict[str, Any]:
    """Open a package and check every file against its manifest hash; returns the manifest.

    Raises ``ValueError`` naming the file that does not match (a truncated or altered copy).
    """
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        manifest: dict[str, Any] = json.loads(zf.read(MANIFEST))
        for name, meta in manifest["files"].items():
            if hashlib.sha256(zf.read(name)).hexdigest() != meta["sha256"]:
                raise ValueError(f"{name} does not match the manifest's SHA-256")
    return manifest
