"""The schema of a PROM instrument definition (``mappings/instruments/*.yaml``) and its loader.

Instrument definitions are data so that registry staff can add a site's questionnaire URL or
linkId alias, or change a rule such as ``max_missing``, without touching code. This module only
validates and merges them; reading answers lives in ``prom_fhir`` and scoring in
``prom_scoring``.

A YAML file holds one instrument (a mapping) or several (``instruments: [...]``). Site
overrides are merged on top of the shipped files (see ``apply_site_overrides``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

LOINC_SYSTEM = "http://loinc.org"


class InstrumentDefinitionError(ValueError):
    """An instrument file or site override is invalid; the message names the file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnswerOption(_Strict):
    """One coded answer whose meaning (and therefore score) is fixed by its code."""

    code: str
    value: float
    display: str | None = None
    system: str | None = None


class ItemDef(_Strict):
    """One question of an instrument and how to read its answer.

    ``value`` is always in the instrument's canonical direction. Answers whose score is
    relative to the form (an ordinal extension, a numeric code, valueInteger) are flipped when
    they arrive under one of ``reversed_link_ids`` or from a form listing the item in
    ``reversed_ordinals``; coded answers found in the answer list are never flipped because
    their meaning does not depend on the form.
    """

    id: str
    text: str | None = None
    link_ids: list[str] = Field(default_factory=list)
    reversed_link_ids: list[str] = Field(default_factory=list)
    loinc: str | None = None
    min: float
    max: float
    integer: bool = True
    answer_list: str | None = None
    answer_map: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _range(self) -> ItemDef:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class QuestionnaireRef(_Strict):
    """A Questionnaire canonical URL (``url`` or ``url|version``) that identifies the instrument.

    ``link_ids`` teaches a vendor form whose linkIds say nothing ("1", "2", ...): form linkId ->
    item id (or total output). They apply only to responses to this questionnaire, so one
    site's numbering never leaks into another form.
    """

    url: str
    reversed_ordinals: list[str] = Field(default_factory=list)
    link_ids: dict[str, str] = Field(default_factory=dict)


class TotalDef(_Strict):
    """A total the hospital's form computes itself (e.g. ``odi-score``).

    It is not an answer: it is kept beside the answers as ``<output>_reported`` and compared
    with the score computed here; a difference larger than ``tolerance`` is a warning (forms
    round, and some prorate missing items differently).
    """

    output: str
    link_ids: list[str] = Field(default_factory=list)
    codes: list[str] = Field(default_factory=list)
    tolerance: float = Field(default=0.5, ge=0)


class PanelCode(_Strict):
    """A panel code (LOINC unless ``system`` says otherwise) for the whole questionnaire."""

    code: str
    system: str = LOINC_SYSTEM
    reversed_ordinals: list[str] = Field(default_factory=list)


class Recognition(_Strict):
    questionnaires: list[QuestionnaireRef] = Field(default_factory=list)
    panel_codes: list[PanelCode] = Field(default_factory=list)
    # Fewer matched items than this and a linkId/item-code match does not count; default is
    # half the items (at least one), so a stray "pain" linkId never makes a PROMIS-10.
    min_item_matches: int | None = Field(default=None, ge=1)
    # linkIds / codes that belong to the form but are not scored items (sender totals,
    # metadata such as an assessment date); they are skipped without an issue.
    ignore_link_ids: list[str] = Field(default_factory=list)
    ignore_codes: list[str] = Field(default_factory=list)
    totals: list[TotalDef] = Field(default_factory=list)


class _Step(_Strict):
    output: str
    report: bool = True
    round: int | None = None


class SumStep(_Step):
    kind: Literal["sum"]
    items: list[str]
    max_missing: int = Field(default=0, ge=0)


class ScaledSumStep(_Step):
    """sum / (item_max * answered) * scale: the ODI/NDI percentage with a shrinking denominator."""

    kind: Literal["scaled_sum"]
    items: list[str]
    item_max: float = Field(gt=0)
    scale: float = 100.0
    max_missing: int = Field(default=0, ge=0)


class LookupStep(_Step):
    kind: Literal["lookup"]
    source: str
    table: dict[int, float]


class RecodeStep(_Step):
    """A per-item recode: a value map (e.g. Global07 0-10 -> 1-5) or a reversal (min+max-v)."""

    kind: Literal["recode"]
    item: str
    map: dict[int, float] | None = None
    reverse: bool = False
    report: bool = False

    @model_validator(mode="after")
    def _one_rule(self) -> RecodeStep:
        if (self.map is None) == (not self.reverse):
            raise ValueError("a recode needs exactly one of 'map' or 'reverse: true'")
        return self


class DecrementsStep(_Step):
    """Index = start - sum of per-dimension level decrements (EQ-5D-5L value sets)."""

    kind: Literal["value_set_decrements"]
    value_set: str
    items: list[str]
    start: float = 1.0
    decrements: dict[str, dict[int, float]]


class ItemStep(_Step):
    """A single-item score (NRS, EQ VAS)."""

    kind: Literal["item"]
    item: str


ScoreStep = Annotated[
    SumStep | ScaledSumStep | LookupStep | RecodeStep | DecrementsStep | ItemStep,
    Field(discriminator="kind"),
]


class InstrumentDef(_Strict):
    id: str
    name: str
    version: str
    regions: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    on_multiple_answers: Literal["reject", "highest"] = "reject"
    recognition: Recognition = Field(default_factory=Recognition)
    answer_lists: dict[str, list[AnswerOption]] = Field(default_factory=dict)
    items: list[ItemDef]
    scoring: list[ScoreStep]

    @model_validator(mode="after")
    def _references(self) -> InstrumentDef:
        """Every name a step or form refers to must exist before it is used."""
        item_ids = [item.id for item in self.items]
        _unique(item_ids, "items")
        known = set(item_ids)
        for item in self.items:
            if item.answer_list is not None and item.answer_list not in self.answer_lists:
                raise ValueError(f"item {item.id!r}: unknown answer_list {item.answer_list!r}")
        for index, step in enumerate(self.scoring):
            where = f"scoring[{index}] ({step.output})"
            for name in _step_inputs(step):
                if name not in known:
                    raise ValueError(f"{where}: unknown item or output {name!r}")
            if isinstance(step, RecodeStep) and step.reverse and step.item not in item_ids:
                raise ValueError(f"{where}: only items (with a declared range) can be reversed")
            if isinstance(step, DecrementsStep):
                extra = set(step.decrements) - set(step.items)
                if extra:
                    raise ValueError(f"{where}: decrements for unlisted items {sorted(extra)}")
            if step.output in known:
                raise ValueError(f"{where}: output name {step.output!r} is already used")
            known.add(step.output)
        outputs = {step.output for step in self.scoring}
        for total in self.recognition.totals:
            if total.output not in outputs:
                raise ValueError(f"recognition.totals: unknown score output {total.output!r}")
        targets = set(item_ids) | outputs
        for ref in self.recognition.questionnaires:
            for link_id, target in ref.link_ids.items():
                if target not in targets:
                    raise ValueError(
                        f"recognition: {ref.url} linkId {link_id!r} names unknown item {target!r}"
                    )
        refs: list[list[str]] = [q.reversed_ordinals for q in self.recognition.questionnaires]
        refs += [p.reversed_ordinals for p in self.recognition.panel_codes]
        for names in refs:
            for name in names:
                if name not in item_ids:
                    raise ValueError(f"recognition: reversed_ordinals names unknown item {name!r}")
        return self

    @property
    def min_item_matches(self) -> int:
        configured = self.recognition.min_item_matches
        return configured if configured is not None else max(1, math.ceil(len(self.items) / 2))


def _step_inputs(step: ScoreStep) -> list[str]:
    if isinstance(step, LookupStep):
        return [step.source]
    if isinstance(step, RecodeStep | ItemStep):
        return [step.item]
    return list(step.items)


def _unique(names: Iterable[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{where}: duplicate id {name!r}")
        seen.add(name)


# --- loading ------------------------------------------------------------------------------


def read_definition_files(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """Raw instrument mappings with the file each came from, in file-name order."""
    if not directory.is_dir():
        raise InstrumentDefinitionError(f"{directory}: no such directory")
    paths = sorted(directory.glob("*.yaml"))
    if not paths:
        raise InstrumentDefinitionError(f"{directory}: no instrument files (*.yaml)")
    found: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise InstrumentDefinitionError(f"{path.name}: not valid YAML: {exc}") from exc
        if isinstance(data, dict) and "instruments" in data:
            entries = data["instruments"]
            if not isinstance(entries, list):
                raise InstrumentDefinitionError(f"{path.name}: instruments: must be a list")
            for index, entry in enumerate(entries):
                found.append((f"{path.name}: instruments[{index}]", _as_mapping(entry, path)))
        else:
            found.append((path.name, _as_mapping(data, path)))
    return found


def _as_mapping(data: object, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InstrumentDefinitionError(f"{path.name}: an instrument must be a mapping")
    return data


def validate_definition(raw: Mapping[str, Any], where: str) -> InstrumentDef:
    try:
        return InstrumentDef.model_validate(dict(raw))
    except ValidationError as exc:
        raise InstrumentDefinitionError(_describe(exc, where)) from exc


def _describe(exc: ValidationError, where: str) -> str:
    parts = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        parts.append(f"{where}: {key}: {error['msg']}")
    return "; ".join(parts)


# --- site overrides ---------------------------------------------------------------------------


def apply_site_overrides(
    raw: dict[str, Any], overrides: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """Merge one instrument's site overrides into its raw definition (the input is not changed).

    ``items`` and ``scoring`` are keyed by item id / step output so a site can write
    ``items: {odi1: {link_ids: [Q1]}}`` or ``scoring: {odi: {max_missing: 2}}``. Elsewhere
    mappings merge recursively, lists are extended (a site adds URLs and aliases, it does not
    silently drop the shipped ones) and scalars are replaced.
    """
    merged = copy.deepcopy(raw)
    for key, patch in overrides.items():
        if key in ("items", "scoring"):
            id_key = "id" if key == "items" else "output"
            if not isinstance(patch, Mapping):
                raise InstrumentDefinitionError(f"{where}: {key}: must map {id_key}s to changes")
            entries = {entry.get(id_key): entry for entry in merged.get(key, [])}
            for name, change in patch.items():
                if name not in entries:
                    raise InstrumentDefinitionError(f"{where}: {key}.{name}: no such {id_key}")
                if not isinstance(change, Mapping):
                    raise InstrumentDefinitionError(f"{where}: {key}.{name}: must be a mapping")
                _deep_merge(entries[name], change)
        elif isinstance(patch, Mapping) and isinstance(merged.get(key), dict):
            _deep_merge(merged[key], patch)
        elif isinstance(patch, list) and isinstance(merged.get(key), list):
            merged[key] = _extend(merged[key], patch)
        else:
            merged[key] = copy.deepcopy(patch)
    return merged


def _deep_merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        current = target.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            _deep_merge(current, value)
        elif isinstance(current, list) and isinstance(value, list):
            target[key] = _extend(current, value)
        else:
            target[key] = copy.deepcopy(value)


def _extend(current: list[Any], extra: list[Any]) -> list[Any]:
    result = list(current)
    for value in extra:
        if value not in result:
            result.append(copy.deepcopy(value))
    return result
