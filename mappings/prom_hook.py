"""The ``prom_score`` mapping hook: recognise a QuestionnaireResponse, score it, say what is wrong.

What staff see is grouped so that one problem is one cause: the issues of one response are
folded per code (ten unreadable answers make one error naming the ten items), and a cause's
offending value is the instrument, so a cause never mixes ODI and NDI responses.

A response that is recognised but cannot be scored is still stored (the patient answered: its
time point is complete and no reminder goes out) with a ``prom.not_scorable`` error for review
that says what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mappings.convert import SiteContext
from mappings.engine import register_hook
from mappings.prom_fhir import ResponseIndex
from mappings.prom_scoring import ScoreIssue
from mappings.proms import Instrument
from registry_types.issues import Issue

# Reported for review, yet the response is stored: it completes its time point.
NOT_SCORABLE = "prom.not_scorable"
_SHOWN_LINK_IDS = 20
_SETTING = "proms.instruments"


@register_hook("prom_score", review_only={NOT_SCORABLE})
def prom_score(resource: Mapping[str, Any], row: dict[str, Any], ctx: SiteContext) -> list[Issue]:
    """Recognise the instrument and score it by its published rules (mappings/instruments)."""
    registry = ctx.instruments
    if registry is None:
        return [Issue("prom.no_instruments", "no PROM instrument definitions are loaded")]
    qr = dict(resource)
    index = ResponseIndex.of(qr)  # one walk of the items, shared by every step below
    instrument = registry.recognise(qr, index)
    if instrument is None:
        return [unknown_instrument(qr, index)]
    answers, extract_issues = instrument.extract_answers(qr, index)
    result = instrument.score(answers)
    reported = instrument.reported_totals(qr, index)
    row["instrument"] = instrument.id
    row["answers"] = {k: v for k, v in answers.items() if v is not None}
    # The form's own totals are kept beside the answers for comparison, never as the score.
    row["answers"].update({f"{output}_reported": value for output, value in reported.items()})
    row["scores"] = dict(result.scores)
    row["answered"] = result.answered
    mismatches = instrument.total_mismatches(reported, result.scores)
    issues = fold_issues(instrument, [*extract_issues, *result.issues, *mismatches])
    if all(v is None for v in result.scores.values()):
        issues.append(not_scorable(instrument, [*extract_issues, *result.issues]))
    return issues


def unknown_instrument(qr: Mapping[str, Any], index: ResponseIndex | None = None) -> Issue:
    """The error for a form no instrument claims: which setting teaches it, and what it sent."""
    url = qr.get("questionnaire")
    canonical = url[:200] if isinstance(url, str) else ""
    index = index if index is not None else ResponseIndex.of(qr)
    seen = sorted({link_id for link_id, _item in index.items})
    shown = ", ".join(link_id[:40] for link_id in seen[:_SHOWN_LINK_IDS])
    if len(seen) > _SHOWN_LINK_IDS:
        shown += f" and {len(seen) - _SHOWN_LINK_IDS} more"
    return Issue(
        "prom.unknown_instrument",
        f"questionnaire {canonical or '(none given)'} is not a known PROM instrument; "
        f"linkIds seen: {shown or '(none)'}. To teach the adapter this form, add its URL and "
        f"linkIds under {_SETTING} in the config "
        f"({_SETTING}.<instrument>.recognition.questionnaires: "
        "[{url: ..., link_ids: {<form linkId>: <item id>}}]), then reprocess.",
        field="questionnaire",
        value=canonical or None,
    )


def fold_issues(instrument: Instrument, issues: Iterable[ScoreIssue]) -> list[Issue]:
    """One review issue per code in a response, naming every item it concerns.

    They are warnings: the response is stored either way; when they leave it without a score,
    ``not_scorable`` is the error that says so.
    """
    groups: dict[str, list[ScoreIssue]] = {}
    for issue in issues:
        groups.setdefault(issue.code, []).append(issue)
    folded = []
    for code, members in groups.items():
        items = [m.item for m in members if m.item]
        messages = [_without_prefix(instrument, m.message) for m in members]
        text = messages[0] if len(members) == 1 else f"{len(members)} items: " + "; ".join(messages)
        folded.append(
            Issue(
                code,
                f"{instrument.id}: {text}",
                field=f"item:{','.join(items)}" if items else "item",
                # The cause is the problem on this instrument, whichever items it hit.
                value=instrument.id,
                rule=f"prom:{instrument.id}",
                severity="warning",
            )
        )
    return folded


def not_scorable(instrument: Instrument, issues: Iterable[ScoreIssue]) -> Issue:
    """Why no score came out, in the words of the scoring and reading issues."""
    reasons = [
        _without_prefix(instrument, i.message)
        for i in issues
        if i.code in ("prom.too_many_missing", "prom.no_answers", "prom.not_completed")
    ]
    unreadable = sorted({i.item for i in issues if i.item and i.code != "prom.unknown_item"})
    if unreadable:
        reasons.append(f"answers not read for {', '.join(unreadable)}")
    return Issue(
        NOT_SCORABLE,
        f"{instrument.id}: the response is stored and completes its time point, but no score "
        f"could be computed: {'; '.join(reasons) or 'no item could be scored'}",
        field="item",
        value=instrument.id,
        rule=f"prom:{instrument.id}",
    )


def _without_prefix(instrument: Instrument, message: str) -> str:
    prefix = f"{instrument.id}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
