"""What a feed hands to the store: a received FHIR resource, or input that could not become one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JSONDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Record:
    """One FHIR R4 resource as received.

    ``origin`` says where it came from without PHI (a file and line, a page URL's path, a
    message control id) so an error about it can be traced back by hospital IT.
    ``raw`` is the exact payload when the source has it, so staging keeps what was sent and not
    our re-serialisation of it; when ``None`` the pipeline serialises ``resource``.
    """

    resource: JSONDict
    origin: str
    raw: bytes | None = None
    content_type: str = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class RecordError:
    """Input that could not become a resource (malformed JSON, broken framing, ...).

    It is staged as a failed record so nothing received is lost. ``field`` names the JSON
    element or v2 segment/field when known. Messages never quote patient data.
    """

    origin: str
    code: str
    message: str
    field: str | None = None
    raw: bytes | None = None
    resource_type: str | None = None
    resource_id: str | None = None
