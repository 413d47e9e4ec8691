"""Every error code the adapter emits has its words in the catalogue (registry_adapter/error_catalogue.yaml).

The emitted codes are found in the source itself: string literals shaped like an error code
(``<domain>.<name>`` for the domains below) that are not log event names, audit actions or
template names, plus the codes of the custom rules in the shipped mappings. A new code
without a catalogue entry fails here, naming the file and line that emits it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from registry_adapter.error_catalogue import CATALOGUE, FIXERS, CatalogueError, catalogue, info, parse

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("adapters", "mappings", "registry_adapter", "registry_store", "scheduler", "review")
ERROR_DOMAINS = ("intake", "codemap", "mapping", "case", "prom", "hl7", "validation")
# Not ".html": template names (case.html) look like codes.
CODE = re.compile(rf"^({'|'.join(ERROR_DOMAINS)})\.(?!html$)[a-z0-9_]+$")
# structlog calls: their first argument is an event name, not an error code.
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "msg"}


def _is_action(node: ast.AST) -> bool:
    """``x.action`` or ``TABLE.c.action``: an audit entry's action, not an error code."""
    return isinstance(node, ast.Attribute) and node.attr == "action"


def _constants(node: ast.AST) -> list[int]:
    return [id(n) for n in ast.walk(node) if isinstance(n, ast.Constant)]


def _not_codes(tree: ast.AST) -> set[int]:
    """Ids of the string nodes that are log events or audit actions."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(_is_action(n) for n in (node.left, *node.comparators)):
            for n in node.comparators:
                skip.update(_constants(n))
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in LOG_METHODS and node.args:
            skip.add(id(node.args[0]))
        if isinstance(func, ast.Attribute) and func.attr == "in_" and _is_action(func.value):
            for arg in node.args:
                skip.update(_constants(arg))  # AUDIT_LOG.c.action.in_([...])
        skip.update(id(kw.value) for kw in node.keywords if kw.arg in ("action", "event"))
    return skip


def emitted_codes() -> dict[str, str]:
    """code → first place (file:line) that emits it."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            skip = _not_codes(tree)
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and CODE.match(node.value)
                    and id(node) not in skip
                ):
                    found.setdefault(node.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    for view in sorted((ROOT / "mappings" / "views").glob("*.yaml")):
        data = yaml.safe_load(view.read_text(encoding="utf-8"))
        for rule in (data.get("registry") or {}).get("rules") or []:
            if isinstance(rule, dict) and rule.get("code"):
                found.setdefault(str(rule["code"]), str(view.relative_to(ROOT)))
    return found


def test_the_scan_finds_the_codes_it_must() -> None:
    codes = emitted_codes()
    # One of each kind: raised in Python, passed by keyword, and a mapping's custom rule.
    expected = {"codemap.unmapped_code", "hl7.bad_date", "prom.unknown_instrument", "patient.no_mrn"}
    assert expected <= set(codes)
    # Log events and audit actions are not error codes.
    assert "hl7.mllp_listening" not in codes and "codemap.add_code" not in codes


def test_every_emitted_code_is_in_the_catalogue() -> None:
    missing = {code: where for code, where in emitted_codes().items() if info(code) is None}
    assert not missing, "codes without a catalogue entry (add them to error_catalogue.yaml): " + ", ".join(
        f"{code} ({where})" for code, where in sorted(missing.items())
    )


def test_entries_are_complete_sentences_for_people() -> None:
    for entry in catalogue().values():
        assert entry.title and entry.title[0].isupper() and not entry.title.endswith(".")
        assert entry.explanation.endswith(".") and entry.next_step.endswith(".")
        assert entry.fixes in FIXERS


def test_a_broken_catalogue_is_named_by_code_and_field() -> None:
    with pytest.raises(CatalogueError, match=r"x\.y\.fixes: must be one of coordinator"):
        entry = {"title": "T", "explanation": "E.", "fixes": "nobody", "next_step": "N.", "reprocess": False}
        parse({"x.y": entry})
    with pytest.raises(CatalogueError, match=r"x\.y: missing next_step, reprocess"):
        parse({"x.y": {"title": "T", "explanation": "E.", "fixes": "it"}})
    assert CATALOGUE.exists()
