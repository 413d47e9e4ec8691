"""Reading PROM answers out of FHIR R4 QuestionnaireResponse JSON, and writing them back.

Works on plain dicts (as received), not on fhir.resources models: the adapter stages raw JSON
and a vendor's extra elements must not stop a PROM from being scored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from mappings.prom_definitions import LOINC_SYSTEM, InstrumentDef, ItemDef

ORDINAL_VALUE_URL = "http://hl7.org/fhir/StructureDefinition/ordinalValue"
ITEM_WEIGHT_URL = "http://hl7.org/fhir/StructureDefinition/itemWeight"
_ORDINAL_URLS = (ORDINAL_VALUE_URL, ITEM_WEIGHT_URL)
_LOINC_CODE = re.compile(r"^\d{1,7}-\d$")
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")
_LINK_ID_NOISE = re.compile(r"[-_\s]+")
_SPACES = re.compile(r"\s+")
_TOKEN_SEPARATORS = re.compile(r"[/#|:]")
_NO_CODES: frozenset[str] = frozenset()
# A tuple, not ``int | float``: that expression builds a new union object at every call.
NUMBER_TYPES = (int, float)

JSON = dict[str, Any]


# --- walking a response ----------------------------------------------------------------------


def walk_items(items: list[Any] | None) -> Iterator[JSON]:
    """Every item of a response, depth first: groups (item.item) and items under answers."""
    return iter(flat_items(items))


def flat_items(items: list[Any] | None) -> list[JSON]:
    """``walk_items`` as a list, built in one pass (no generator per item)."""
    out: list[JSON] = []
    _flatten(items, out)
    return out


def _flatten(items: Any, out: list[JSON]) -> None:
    # ``items or []`` as the generator had it: a truthy non-list fails here the same way.
    for item in items or []:
        if not isinstance(item, dict):
            continue
        out.append(item)
        sub = item.get("item")
        if sub:
            _flatten(sub, out)
        for answer in item.get("answer") or []:
            if isinstance(answer, dict):
                sub = answer.get("item")
                if sub:
                    _flatten(sub, out)


@lru_cache(maxsize=4096)
def link_id_key(link_id: str) -> str:
    """How linkIds are compared: hospitals write ``self-care``, ``Self_Care`` and ``SELF CARE``.

    Cached: a feed repeats the same few dozen linkIds on every response.
    """
    return _LINK_ID_NOISE.sub("", link_id).casefold()


def answer_text_key(text: str) -> str:
    """How answer texts are compared: case, spacing and a closing full stop do not matter."""
    return _SPACES.sub(" ", text).strip().rstrip(".").strip().casefold()


def split_canonical(url: str) -> tuple[str, str | None]:
    base, sep, version = url.partition("|")
    return base, (version if sep else None)


def loinc_tokens(text: str | None) -> frozenset[str]:
    """LOINC-shaped path segments of a URL or linkId ("/61577-3", "http://loinc.org/q/85524-7")."""
    if not text:
        return _NO_CODES
    return _loinc_tokens(text)


@lru_cache(maxsize=4096)
def _loinc_tokens(text: str) -> frozenset[str]:
    # Cached: linkIds and questionnaire URLs repeat on every response of a form.
    return frozenset(part for part in _TOKEN_SEPARATORS.split(text) if _LOINC_CODE.match(part))


@dataclass(frozen=True, slots=True)
class ResponseIndex:
    """What a response says about its questionnaire: URL, panel codes, per-item codes.

    Built once per response (one walk of its items) and shared by recognition, answer reading
    and the form's totals, which each used to walk the response again.
    """

    questionnaire: str | None
    panel_codes: frozenset[str]
    item_codes: Mapping[str, frozenset[str]]  # linkId -> codes (contained Q, linkId, definition)
    # Every item that has a string linkId, in ``walk_items`` order, with that linkId.
    items: tuple[tuple[str, JSON], ...] = ()

    @classmethod
    def of(cls, qr: Mapping[str, Any]) -> ResponseIndex:
        url = qr.get("questionnaire") if isinstance(qr.get("questionnaire"), str) else None
        panel = set(loinc_tokens(split_canonical(url)[0])) if url else set()
        contained_items: dict[str, set[str]] = {}
        for resource in qr.get("contained") or []:
            if not isinstance(resource, dict) or resource.get("resourceType") != "Questionnaire":
                continue
            panel |= _codes(resource.get("code"))
            for q_item in walk_items(resource.get("item")):
                link_id = q_item.get("linkId")
                if isinstance(link_id, str):
                    contained_items.setdefault(link_id, set()).update(_codes(q_item.get("code")))
        item_codes: dict[str, frozenset[str]] = {}
        items: list[tuple[str, JSON]] = []
        for item in flat_items(qr.get("item")):
            link_id = item.get("linkId")
            if not isinstance(link_id, str):
                continue
            items.append((link_id, item))
            codes = loinc_tokens(link_id)
            contained = contained_items.get(link_id)
            definition = item.get("definition")
            if contained or isinstance(definition, str):
                # The rare case (a contained Questionnaire, item.definition): a union.
                codes = frozenset(
                    (contained or set())
                    | codes
                    | loinc_tokens(definition if isinstance(definition, str) else None)
                )
            item_codes[link_id] = codes
        return cls(url, frozenset(panel), item_codes, tuple(items))


def _codes(codings: object) -> set[str]:
    if not isinstance(codings, list):
        return set()
    return {
        c["code"]
        for c in codings
        if isinstance(c, dict)
        and isinstance(c.get("code"), str)
        and c.get("system", LOINC_SYSTEM) == LOINC_SYSTEM
    }


# --- reading one answer ----------------------------------------------------------------------


class RawAnswer(NamedTuple):
    """A number read from an answer; ``form_relative`` if its direction depends on the form.

    A named tuple: one is made per answer, and a frozen dataclass costs several times more.
    """

    value: float | None
    form_relative: bool
    problem: str | None = None  # why it could not be read: answer codes / types, never text


def read_answer(
    answer: Mapping[str, Any], item: ItemDef, answer_codes: Mapping[str, float]
) -> RawAnswer:
    """The numeric value of one ``QuestionnaireResponse.item.answer``.

    Order: a code (or string) whose meaning the instrument declares; then the
    ``ordinalValue``/``itemWeight`` extension; then a numeric code; then valueInteger /
    valueDecimal / valueQuantity / a numeric valueString.
    """
    coding = answer.get("valueCoding")
    if isinstance(coding, dict):
        code = coding.get("code")
        if isinstance(code, str) and code in answer_codes:
            return RawAnswer(answer_codes[code], form_relative=False)
        # ordinalValue belongs on the Coding; some senders put it on the answer element.
        ordinal = _ordinal(coding)
        if ordinal is None:
            ordinal = _ordinal(answer)
        if ordinal is not None:
            return RawAnswer(ordinal, form_relative=True)
        if isinstance(code, str) and _NUMBER.match(code.strip()):
            return RawAnswer(float(code), form_relative=True)
        return RawAnswer(None, True, f"answer code {code!r} has no score for {item.id}")
    for key in ("valueInteger", "valueDecimal"):
        value = answer.get(key)
        if isinstance(value, NUMBER_TYPES) and not isinstance(value, bool):
            return RawAnswer(float(value), form_relative=True)
    quantity = answer.get("valueQuantity")
    if isinstance(quantity, dict) and isinstance(quantity.get("value"), NUMBER_TYPES):
        return RawAnswer(float(quantity["value"]), form_relative=True)
    text = answer.get("valueString")
    if isinstance(text, str):
        known = answer_codes.get(text, answer_codes.get(answer_text_key(text)))
        if known is not None:
            return RawAnswer(known, form_relative=False)
        if _NUMBER.match(text.strip()):
            return RawAnswer(float(text), form_relative=True)
        # The text itself may be something the patient typed: do not quote it.
        return RawAnswer(None, True, f"text answer not in the answer map of {item.id}")
    kinds = sorted(key for key in answer if key.startswith("value")) or ["no value"]
    return RawAnswer(None, True, f"unsupported answer type {', '.join(kinds)} for {item.id}")


def _ordinal(element: Mapping[str, Any]) -> float | None:
    for extension in element.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") in _ORDINAL_URLS:
            for key in ("valueDecimal", "valueInteger"):
                value = extension.get(key)
                if isinstance(value, NUMBER_TYPES) and not isinstance(value, bool):
                    return float(value)
    return None


def answer_codes_for(definition: InstrumentDef, item: ItemDef) -> dict[str, float]:
    """Declared code/string -> value for one item (its answer list plus its answer_map)."""
    codes: dict[str, float] = {}
    if item.answer_list is not None:
        codes.update(
            {option.code: option.value for option in definition.answer_lists[item.answer_list]}
        )
    codes.update(item.answer_map)
    # Answer texts (the PACIO ODI layout answers with the statement itself) match loosely.
    codes.update({answer_text_key(text): value for text, value in item.answer_map.items()})
    return codes


# --- writing a response ----------------------------------------------------------------------


def build_response(
    definition: InstrumentDef,
    answers: Mapping[str, float | int | None],
    *,
    qr_id: str,
    patient_ref: str,
    authored: str | datetime | date,
    questionnaire_url: str,
    reversed_items: frozenset[str],
    status: str = "completed",
    group_link_id: str | None = None,
) -> JSON:
    items: list[JSON] = []
    for item in definition.items:
        value = answers.get(item.id)
        if value is None:
            continue
        entry: JSON = {"linkId": item.link_ids[0] if item.link_ids else item.id}
        if item.text:
            entry["text"] = item.text
        entry["answer"] = [_answer(definition, item, value, item.id in reversed_items)]
        items.append(entry)
    if group_link_id is not None:
        items = [{"linkId": group_link_id, "item": items}]
    when = authored.isoformat() if isinstance(authored, date | datetime) else authored
    return {
        "resourceType": "QuestionnaireResponse",
        "id": qr_id,
        "questionnaire": questionnaire_url,
        "status": status,
        "subject": {"reference": patient_ref},
        "authored": when,
        "item": items,
    }


def _answer(definition: InstrumentDef, item: ItemDef, value: float | int, reversed_: bool) -> JSON:
    # The form's own ordinal runs the other way on forms that reverse this item.
    form_value = item.min + item.max - value if reversed_ else value
    if item.answer_list is not None:
        for option in definition.answer_lists[item.answer_list]:
            if option.value == value:
                coding: JSON = {"system": option.system or LOINC_SYSTEM, "code": option.code}
                if option.display:
                    coding["display"] = option.display
                coding["extension"] = [{"url": ORDINAL_VALUE_URL, "valueDecimal": form_value}]
                return {"valueCoding": coding}
    if item.integer:
        return {"valueInteger": int(form_value)}
    return {"valueDecimal": float(form_value)}
