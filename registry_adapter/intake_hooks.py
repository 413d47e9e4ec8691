"""What runs after new data is stored (a sync, an import, a re-process), for packages above
this one: the scheduler plans reminders here, so the reminder pages are never silently empty
after a sync run from the command line.

A hook, not an import: ``registry_adapter`` sits below ``scheduler`` and must not import it
(tests/architecture). ``scheduler.replan`` registers itself when it is imported, which the
command line does when it loads the scheduler's commands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from registry_adapter.app import App

log = structlog.get_logger(__name__)

AfterIntake = Callable[[App, str], Any]
_HOOKS: list[AfterIntake] = []


def on_intake(hook: AfterIntake) -> AfterIntake:
    """Register ``hook(app, reason)`` to run after each intake; registering twice is once."""
    if hook not in _HOOKS:
        _HOOKS.append(hook)
    return hook


def after_intake(app: App, reason: str) -> None:
    """Run the hooks; one that fails is logged (its type only) and never fails the intake,
    whose data is committed by now."""
    for hook in list(_HOOKS):
        try:
            hook(app, reason)
        except Exception as exc:
            log.error("intake.hook_failed", hook=getattr(hook, "__qualname__", "?"), error=type(exc).__name__)
