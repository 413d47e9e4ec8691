"""PROM instruments: recognise a QuestionnaireResponse, read its answers, score it.

The instruments themselves are YAML files in ``mappings/instruments/`` (schema in
``prom_definitions``); a site adds its own questionnaire URLs and linkId aliases through
``site_overrides`` without editing them::

    registry = load_instruments(site_overrides={
        "odi": {"recognition": {"questionnaires": [{"url": "https://ehr.example/Q/odi"}]},
                "items": {"odi1": {"link_ids": ["ODI_PAIN"]}}},
    })
    instrument = registry.recognise(qr)
    answers, issues = instrument.extract_answers(qr)
    result = instrument.score(answers)      # result.scores == {"odi": 32.0}

Recognition tries, in order: the questionnaire canonical URL (with or without ``|version``),
a panel code (LOINC in the canonical URL or on a contained Questionnaire), item codes (LOINC
in linkIds, ``item.definition`` or the contained Questionnaire's items), and finally linkIds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

from mappings.prom_definitions import (
    InstrumentDef,
    InstrumentDefinitionError,
    ItemDef,
    PanelCode,
    QuestionnaireRef,
    TotalDef,
    apply_site_overrides,
    read_definition_files,
    validate_definition,
)
from mappings.prom_fhir import (
    NUMBER_TYPES,
    ResponseIndex,
    answer_codes_for,
    build_response,
    link_id_key,
    read_answer,
    split_canonical,
)
from mappings.prom_scoring import Number, PromScore, ScoreIssue, check_value, compute_scores

__all__ = [
    "Instrument",
    "InstrumentDefinitionError",
    "InstrumentRegistry",
    "PromScore",
    "ScoreIssue",
    "build_questionnaire_response",
    "load_instruments",
]

DEFAULT_DIRECTORY = Path(__file__).with_name("instruments")
_SCORABLE_STATUSES = frozenset({"completed", "amended"})
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
T = TypeVar("T")


class Instrument:
    """One PROM instrument built from its validated definition."""

    def __init__(self, definition: InstrumentDef) -> None:
        self.definition = definition
        self._aliases: dict[str, tuple[ItemDef, bool]] = {}
        self._codes: dict[str, ItemDef] = {}
        self._items = {item.id: item for item in definition.items}
        self._item_ids = tuple(self._items)
        for item in definition.items:
            # linkIds are compared ignoring case, "-", "_" and spaces (see link_id_key).
            for link_id in item.link_ids:
                self._aliases[link_id_key(link_id)] = (item, False)
            for link_id in item.reversed_link_ids:
                self._aliases[link_id_key(link_id)] = (item, True)
            if item.loinc:
                self._codes[item.loinc] = item
        self._answer_codes = {
            item.id: answer_codes_for(definition, item) for item in definition.items
        }
        recognition = definition.recognition
        self._ignored_link_ids = {link_id_key(link_id) for link_id in recognition.ignore_link_ids}
        self._ignored_codes = set(recognition.ignore_codes)
        self._totals = {t.output: t for t in recognition.totals}
        self._total_link_ids = {
            link_id_key(link_id): total for total in recognition.totals for link_id in total.link_ids
        }
        self._total_codes = {code: total for total in recognition.totals for code in total.codes}
        # Per questionnaire URL: a feed sends the same few URLs on every response.
        self._refs: dict[str | None, QuestionnaireRef | None] = {}
        self._forms: dict[str | None, dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"Instrument({self.id!r})"

    @property
    def id(self) -> str:
        return self.definition.id

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def version(self) -> str:
        return self.definition.version

    @property
    def regions(self) -> list[str]:
        return list(self.definition.regions)

    @property
    def item_ids(self) -> list[str]:
        return [item.id for item in self.definition.items]

    @property
    def score_names(self) -> list[str]:
        """The keys of ``PromScore.scores`` for this instrument, in order."""
        return [step.output for step in self.definition.scoring if step.report]

    @property
    def questionnaire_urls(self) -> list[str]:
        return [ref.url for ref in self.definition.recognition.questionnaires]

    # --- recognition ---------------------------------------------------------------------

    def questionnaire_ref(self, url: str | None) -> QuestionnaireRef | None:
        try:
            return self._refs[url]
        except KeyError:
            pass
        ref = self._questionnaire_ref(url)
        _remember(self._refs, url, ref)
        return ref

    def _questionnaire_ref(self, url: str | None) -> QuestionnaireRef | None:
        if not url:
            return None
        base, _ = split_canonical(url)
        for ref in self.definition.recognition.questionnaires:
            ref_base, ref_version = split_canonical(ref.url)
            if (url == ref.url) if ref_version is not None else (base == ref_base):
                return ref
        return None

    def panel_code(self, codes: Iterable[str]) -> PanelCode | None:
        present = set(codes)
        for panel in self.definition.recognition.panel_codes:
            if panel.code in present:
                return panel
        return None

    def form_link_ids(self, url: str | None) -> dict[str, str]:
        """linkId key -> item id or total output, as taught for this questionnaire URL
        (shared between calls: do not change it)."""
        form = self._forms.get(url)
        if form is None:
            ref = self.questionnaire_ref(url)
            form = {link_id_key(k): v for k, v in ref.link_ids.items()} if ref else {}
            _remember(self._forms, url, form)
        return form

    def item_for(
        self, link_id: str, codes: Iterable[str] = (), form: Mapping[str, str] | None = None
    ) -> tuple[ItemDef, bool] | None:
        """The item a response linkId answers, and whether its ordinals arrive reversed."""
        key = link_id_key(link_id)
        taught = (form or {}).get(key)
        if taught is not None and taught in self._items:
            return self._items[taught], False
        found = self._aliases.get(key)
        if found is not None:
            return found
        for code in codes:
            item = self._codes.get(code)
            if item is not None:
                return item, False
        return None

    def count_matched_items(self, index: ResponseIndex, *, by_code: bool) -> int:
        """How many of this instrument's items the response answers (by item code or linkId)."""
        matched: set[str] = set()
        for link_id, codes in index.item_codes.items():
            if by_code:
                item = next((self._codes[c] for c in codes if c in self._codes), None)
            else:
                found = self._aliases.get(link_id_key(link_id))
                item = found[0] if found else None
            if item is not None:
                matched.add(item.id)
        return len(matched)

    def total_for(
        self, link_id: str, codes: Iterable[str] = (), form: Mapping[str, str] | None = None
    ) -> TotalDef | None:
        """The score output a linkId carries when it is the form's own total, else None."""
        key = link_id_key(link_id)
        taught = (form or {}).get(key)
        if taught is not None and taught in self._totals:
            return self._totals[taught]
        found = self._total_link_ids.get(key)
        if found is not None:
            return found
        return next((self._total_codes[c] for c in codes if c in self._total_codes), None)

    def reported_totals(
        self, qr: Mapping[str, Any], index: ResponseIndex | None = None
    ) -> dict[str, float]:
        """Score output -> the total the hospital's form wrote (e.g. ``{"odi": 36.0}``).

        ``index`` is ``ResponseIndex.of(qr)`` when the caller already has it.
        """
        index = index if index is not None else ResponseIndex.of(qr)
        reported: dict[str, float] = {}
        if not self._totals:
            return reported  # no linkId or code can be a total of this instrument
        form = self.form_link_ids(index.questionnaire)
        for link_id, qr_item in index.items:
            total = self.total_for(link_id, index.item_codes.get(link_id, frozenset()), form)
            if total is None or total.output in reported:
                continue
            for answer in qr_item.get("answer") or []:
                value = _plain_number(answer)
                if value is not None:
                    reported[total.output] = value
                    break
        return reported

    def total_mismatches(
        self, reported: Mapping[str, float], scores: Mapping[str, float | None]
    ) -> list[ScoreIssue]:
        """A warning for each reported total that the computed score does not confirm."""
        issues = []
        for output, value in reported.items():
            computed = scores.get(output)
            if computed is not None and abs(computed - value) > self._totals[output].tolerance:
                issues.append(
                    ScoreIssue(
                        "prom.total_mismatch",
                        output,
                        f"{self.id}: the form's own {output} total {value:g} differs from the "
                        f"computed {computed:g}",
                        "warning",
                    )
                )
        return issues

    # --- answers -------------------------------------------------------------------------

    def extract_answers(
        self, qr: Mapping[str, Any], index: ResponseIndex | None = None
    ) -> tuple[dict[str, Number | None], list[ScoreIssue]]:
        """Item id -> value (canonical direction) for every item, None when unanswered.

        ``index`` is ``ResponseIndex.of(qr)`` when the caller already has it.
        """
        index = index if index is not None else ResponseIndex.of(qr)
        issues: list[ScoreIssue] = []
        status = qr.get("status")
        if not isinstance(status, str) or status not in _SCORABLE_STATUSES:
            issues.append(
                ScoreIssue(
                    "prom.not_completed",
                    None,
                    f"{self.id}: response status "
                    f"{status if isinstance(status, str) else '(not a code)'!r} "
                    "is not completed or amended",
                    "warning",
                )
            )
        reversed_items = self._form_reversed_items(index)
        form = self.form_link_ids(index.questionnaire)
        values: dict[str, Number | None] = dict.fromkeys(self._item_ids)
        seen: dict[str, str] = {}
        for link_id, qr_item in index.items:
            answers = [a for a in qr_item.get("answer") or [] if isinstance(a, dict)]
            codes = index.item_codes.get(link_id, frozenset())
            found = self.item_for(link_id, codes, form)
            if found is None:
                if self.total_for(link_id, codes, form) is not None:
                    continue  # the form's own total: compared with the score, not an answer
                if answers and not self._ignored(link_id, codes):
                    issues.append(
                        ScoreIssue(
                            "prom.unknown_item",
                            link_id,
                            f"{self.id}: linkId {link_id!r} is not an item of this instrument",
                            "warning",
                        )
                    )
                continue
            item, reversed_alias = found
            if not answers:
                continue
            if item.id in seen:
                issues.append(
                    ScoreIssue(
                        "prom.duplicate_item",
                        link_id,
                        f"{self.id}: {item.id} answered twice (also as {seen[item.id]!r}); "
                        "first answer kept",
                    )
                )
                continue
            seen[item.id] = link_id
            reverse = reversed_alias or item.id in reversed_items
            values[item.id] = self._read_item(item, answers, link_id, reverse, issues)
        return values, issues

    def _form_reversed_items(self, index: ResponseIndex) -> set[str]:
        reversed_items: set[str] = set()
        ref = self.questionnaire_ref(index.questionnaire)
        if ref is not None:
            reversed_items.update(ref.reversed_ordinals)
        panel = self.panel_code(index.panel_codes)
        if panel is not None:
            reversed_items.update(panel.reversed_ordinals)
        return reversed_items

    def _ignored(self, link_id: str, codes: Iterable[str]) -> bool:
        return link_id_key(link_id) in self._ignored_link_ids or bool(
            self._ignored_codes & set(codes)
        )

    def _read_item(
        self,
        item: ItemDef,
        answers: list[dict[str, Any]],
        link_id: str,
        reverse: bool,
        issues: list[ScoreIssue],
    ) -> Number | None:
        values: list[Number] = []
        for answer in answers:
            raw = read_answer(answer, item, self._answer_codes[item.id])
            if raw.value is None:
                issues.append(ScoreIssue("prom.unreadable_answer", link_id, raw.problem or ""))
                return None
            # Check the value as sent (so the issue quotes it), then turn it the right way.
            checked, issue = check_value(item, raw.value, link_id)
            if issue is not None:
                issues.append(issue)
                return None
            assert checked is not None
            if raw.form_relative and reverse:
                checked = type(checked)(item.min + item.max - checked)
            values.append(checked)
        if len(values) > 1:
            if self.definition.on_multiple_answers == "highest":
                return max(values)
            issues.append(
                ScoreIssue(
                    "prom.multiple_answers",
                    link_id,
                    f"{self.id}: {item.id} has {len(values)} answers; one expected",
                )
            )
            return None
        return values[0]

    def score(self, answers: Mapping[str, Number | None]) -> PromScore:
        return compute_scores(self.definition, answers)


_REMEMBERED = 256  # distinct questionnaire URLs kept per instrument (a feed has a handful)


def _remember(cache: dict[str | None, T], url: str | None, value: T) -> None:
    """Keep ``value`` for ``url``; a feed with ever-new URLs empties the cache, never grows it."""
    if len(cache) >= _REMEMBERED:
        cache.clear()
    cache[url] = value


def _plain_number(answer: object) -> float | None:
    """A number written as valueDecimal / valueInteger / valueQuantity / numeric valueString."""
    if not isinstance(answer, dict):
        return None
    for key in ("valueDecimal", "valueInteger"):
        value = answer.get(key)
        if isinstance(value, NUMBER_TYPES) and not isinstance(value, bool):
            return float(value)
    quantity = answer.get("valueQuantity")
    if isinstance(quantity, dict):
        value = quantity.get("value")
        if isinstance(value, NUMBER_TYPES) and not isinstance(value, bool):
            return float(value)
    text = answer.get("valueString")
    if isinstance(text, str):
        try:
            number = float(text.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


class InstrumentRegistry:
    """The loaded instruments, and recognition of a response against them."""

    def __init__(self, instruments: Iterable[Instrument]) -> None:
        self._by_id: dict[str, Instrument] = {}
        for instrument in instruments:
            if instrument.id in self._by_id:
                raise InstrumentDefinitionError(f"instrument id {instrument.id!r} is defined twice")
            self._by_id[instrument.id] = instrument

    def __iter__(self) -> Iterator[Instrument]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, instrument_id: object) -> bool:
        return instrument_id in self._by_id

    def __getitem__(self, instrument_id: str) -> Instrument:
        return self._by_id[instrument_id]

    def get(self, instrument_id: str) -> Instrument | None:
        return self._by_id.get(instrument_id)

    def recognise(
        self, qr: Mapping[str, Any], index: ResponseIndex | None = None
    ) -> Instrument | None:
        """The instrument a response answers, or None; see ``recognise_all`` for mixed forms."""
        found = self.recognise_all(qr, index)
        return found[0] if found else None

    def recognise_all(
        self, qr: Mapping[str, Any], index: ResponseIndex | None = None
    ) -> list[Instrument]:
        """Every instrument the response answers, best first, from the first rule that matches.

        A site form may combine several instruments (ODI + back/leg NRS) under one URL; it is
        then configured with the same URL on each of them. ``index`` is ``ResponseIndex.of(qr)``
        when the caller already has it.
        """
        index = index if index is not None else ResponseIndex.of(qr)
        by_url = [i for i in self if i.questionnaire_ref(index.questionnaire) is not None]
        if by_url:
            return by_url
        by_panel = [i for i in self if i.panel_code(index.panel_codes) is not None]
        if by_panel:
            return by_panel
        for by_code in (True, False):
            ranked = []
            for instrument in self:
                matched = instrument.count_matched_items(index, by_code=by_code)
                if matched >= instrument.definition.min_item_matches:
                    share = matched / len(instrument.definition.items)
                    ranked.append((share, matched, instrument))
            if ranked:
                ranked.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
                return [instrument for _, _, instrument in ranked]
        return []


def load_instruments(
    directory: Path | None = None, site_overrides: Mapping[str, Any] | None = None
) -> InstrumentRegistry:
    """Load and validate every ``*.yaml`` instrument in ``directory`` (default: shipped ones).

    ``site_overrides`` maps instrument id -> changes (see
    ``prom_definitions.apply_site_overrides``). Raises ``InstrumentDefinitionError`` naming
    the file (or ``site_overrides.<id>``) and the key at fault.
    """
    pending = dict(site_overrides or {})
    instruments = []
    for where, raw in read_definition_files(directory or DEFAULT_DIRECTORY):
        instrument_id = raw.get("id")
        if isinstance(instrument_id, str) and instrument_id in pending:
            patch = pending.pop(instrument_id)
            if not isinstance(patch, Mapping):
                raise InstrumentDefinitionError(
                    f"site_overrides.{instrument_id}: must be a mapping"
                )
            origin = f"site_overrides.{instrument_id}"
            raw = apply_site_overrides(raw, patch, origin)
            where = f"{where} + {origin}"
        instruments.append(Instrument(validate_definition(raw, where)))
    for instrument_id in pending:
        raise InstrumentDefinitionError(f"site_overrides.{instrument_id}: no such instrument")
    return InstrumentRegistry(instruments)


def build_questionnaire_response(
    instrument: Instrument,
    answers: Mapping[str, Number | None],
    *,
    qr_id: str,
    patient_ref: str,
    authored: str | datetime | date,
    questionnaire_url: str | None = None,
    status: str = "completed",
    group_link_id: str | None = None,
) -> dict[str, Any]:
    """An R4 QuestionnaireResponse answering ``instrument`` with ``answers`` (item id -> value).

    Uses the first configured questionnaire URL unless one is given, each item's first linkId,
    a LOINC ``valueCoding`` with an ``ordinalValue`` where the item has an answer list, else
    valueInteger/valueDecimal. ``group_link_id`` nests the items in one group (as many EHR
    forms do). Unanswered items (None) are left out.
    """
    if not _FHIR_ID.fullmatch(qr_id):
        raise ValueError(f"qr_id {qr_id!r} is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})")
    for name in answers:
        if name not in instrument.item_ids:
            raise KeyError(f"{instrument.id} has no item {name!r}")
    url = questionnaire_url or (instrument.questionnaire_urls or [f"urn:prom:{instrument.id}"])[0]
    ref = instrument.questionnaire_ref(url)
    return build_response(
        instrument.definition,
        answers,
        qr_id=qr_id,
        patient_ref=patient_ref,
        authored=authored,
        questionnaire_url=url,
        reversed_items=frozenset(ref.reversed_ordinals if ref else ()),
        status=status,
        group_link_id=group_link_id,
    )
