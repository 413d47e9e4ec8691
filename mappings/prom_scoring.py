"""Scoring of PROM answers by the declared steps of an instrument definition.

Each step kind is one generic rule (``sum``, ``scaled_sum``, ``lookup``, ``recode``,
``value_set_decrements``, ``item``); the instrument YAML says which items and tables it uses.
Steps run in order and write their output into the same namespace as the items, so a later
step can use an earlier one (PROMIS: recode Global07, sum, then look the raw sum up).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mappings.prom_definitions import (
    DecrementsStep,
    InstrumentDef,
    ItemDef,
    ItemStep,
    LookupStep,
    RecodeStep,
    ScaledSumStep,
    ScoreStep,
    SumStep,
)

Number = float | int


@dataclass(frozen=True, slots=True)
class ScoreIssue:
    """Something wrong with a response or its score.

    ``code`` is stable (``prom.*``) so issues can be grouped by cause. ``item`` is the linkId
    (from a QuestionnaireResponse) or the item id; messages carry answer codes and numbers at
    most, never free text a patient typed.
    """

    code: str
    item: str | None
    message: str
    severity: Literal["error", "warning"] = "error"


@dataclass(frozen=True, slots=True)
class PromScore:
    instrument: str
    scores: dict[str, float | None]
    answered: int
    issues: list[ScoreIssue] = field(default_factory=list)


def check_value(
    item: ItemDef, value: Number, where: str
) -> tuple[Number | None, ScoreIssue | None]:
    """The value as int/float if the item allows it, else None and an out-of-range issue."""
    if not (item.min <= value <= item.max) or (item.integer and float(value) != int(value)):
        kind = "an integer " if item.integer else ""
        message = (
            f"{item.id}: answer {value:g} is outside the allowed {kind}range "
            f"{item.min:g}-{item.max:g}"
        )
        return None, ScoreIssue("prom.value_out_of_range", where, message)
    return (int(value) if item.integer else float(value)), None


def compute_scores(definition: InstrumentDef, answers: Mapping[str, Number | None]) -> PromScore:
    issues: list[ScoreIssue] = []
    items = {item.id: item for item in definition.items}
    values: dict[str, Number | None] = {item_id: None for item_id in items}
    for name, value in answers.items():
        if name not in items:
            issues.append(
                ScoreIssue("prom.unknown_item", name, f"{definition.id} has no item {name!r}")
            )
            continue
        if value is not None:
            values[name], issue = check_value(items[name], value, name)
            if issue is not None:
                issues.append(issue)
    answered = sum(1 for item_id in items if values[item_id] is not None)
    reported = [step.output for step in definition.scoring if step.report]
    if answered == 0:
        issues.append(ScoreIssue("prom.no_answers", None, f"{definition.id}: no item answered"))
        return PromScore(definition.id, dict.fromkeys(reported), 0, issues)
    for step in definition.scoring:
        result = _run_step(step, values, items, issues)
        if result is not None and step.round is not None:
            result = round(result, step.round)
        values[step.output] = result
    scores = {name: _as_float(values[name]) for name in reported}
    return PromScore(definition.id, scores, answered, issues)


def _as_float(value: Number | None) -> float | None:
    return None if value is None else float(value)


def _run_step(
    step: ScoreStep,
    values: dict[str, Number | None],
    items: Mapping[str, ItemDef],
    issues: list[ScoreIssue],
) -> float | None:
    if isinstance(step, ItemStep):
        value = values[step.item]
        return None if value is None else float(value)
    if isinstance(step, RecodeStep):
        return _recode(step, values[step.item], items.get(step.item), issues)
    if isinstance(step, LookupStep):
        return _lookup(step, values[step.source], issues)
    present = [values[name] for name in step.items if values[name] is not None]
    unanswered = [name for name in step.items if values[name] is None]
    missing = len(unanswered)
    allowed = 0 if isinstance(step, DecrementsStep) else step.max_missing
    if missing > allowed:
        issues.append(
            ScoreIssue(
                "prom.too_many_missing",
                None,
                f"{step.output}: {missing} of {len(step.items)} items unanswered "
                f"({', '.join(unanswered)}), at most {allowed} allowed",
            )
        )
        return None
    total = float(sum(v for v in present if v is not None))
    if isinstance(step, SumStep):
        return total
    if isinstance(step, ScaledSumStep):
        return total / (step.item_max * len(present)) * step.scale
    return _decrements(step, values)


def _recode(
    step: RecodeStep, value: Number | None, item: ItemDef | None, issues: list[ScoreIssue]
) -> float | None:
    if value is None:
        return None
    if step.reverse:
        if item is None:
            # Validation only allows reversing items (outputs have no declared range).
            raise ValueError(f"{step.output}: reverse needs an item with a range")
        return item.min + item.max - float(value)
    assert step.map is not None
    key = int(value)
    if key != value or key not in step.map:
        issues.append(
            ScoreIssue("prom.no_recode", step.item, f"{step.output}: no recode for {value:g}")
        )
        return None
    return step.map[key]


def _lookup(step: LookupStep, value: Number | None, issues: list[ScoreIssue]) -> float | None:
    if value is None:
        return None
    key = int(value)
    if key != value or key not in step.table:
        issues.append(
            ScoreIssue("prom.no_lookup", None, f"{step.output}: no table entry for {value:g}")
        )
        return None
    return step.table[key]


def _decrements(step: DecrementsStep, values: Mapping[str, Number | None]) -> float:
    index = step.start
    for name in step.items:
        level = values[name]
        assert level is not None
        # Level 1 ("no problems") is absent from the tables: it has no decrement.
        index -= step.decrements.get(name, {}).get(int(level), 0.0)
    return index
