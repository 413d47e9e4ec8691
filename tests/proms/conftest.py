"""Shared helpers for the PROM tests: the shipped instruments and small QR builders."""

from __future__ import annotations

from typing import Any

import pytest

from mappings.proms import InstrumentRegistry, load_instruments

LOINC = "http://loinc.org"
ORDINAL = "http://hl7.org/fhir/StructureDefinition/ordinalValue"
ITEM_WEIGHT = "http://hl7.org/fhir/StructureDefinition/itemWeight"


@pytest.fixture(scope="session")
def registry() -> InstrumentRegistry:
    return load_instruments()


def response(
    items: list[dict[str, Any]],
    questionnaire: str | None = None,
    status: str = "completed",
    **extra: Any,
) -> dict[str, Any]:
    qr: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "id": "qr-1",
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-01-15T10:30:00Z",
        "item": items,
        **extra,
    }
    if questionnaire is not None:
        qr["questionnaire"] = questionnaire
    return qr


def coded(
    link_id: str,
    code: str,
    ordinal: float | None = None,
    *,
    system: str = LOINC,
    extension_url: str = ORDINAL,
) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if ordinal is not None:
        coding["extension"] = [{"url": extension_url, "valueDecimal": ordinal}]
    return {"linkId": link_id, "answer": [{"valueCoding": coding}]}


def integer(link_id: str, value: int) -> dict[str, Any]:
    return {"linkId": link_id, "answer": [{"valueInteger": value}]}
