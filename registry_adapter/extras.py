"""Optional features and the pip extra each needs.

``pip install spine-registry-adapter`` gives the whole command line; the review web UI needs
the ``web`` extra. A command of a feature whose extra is missing stays listed, and running it
fails with one line naming the extra, instead of the CLI failing to start.
"""

from __future__ import annotations

import click

DISTRIBUTION = "spine-registry-adapter"

# Top-level modules of each extra's dependencies (import names, not project names).
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "web": frozenset({"starlette", "uvicorn", "argon2", "multipart", "python_multipart"}),
}


class MissingExtra(click.ClickException):
    def __init__(self, feature: str, extra: str):
        super().__init__(f"{feature} needs the '{extra}' extra: pip install '{DISTRIBUTION}[{extra}]'")


def extra_for(exc: ModuleNotFoundError) -> str | None:
    """The extra that provides the module ``exc`` says is missing, if any."""
    top = (exc.name or "").split(".")[0]
    return next((extra for extra, modules in EXTRA_MODULES.items() if top in modules), None)


def unavailable_command(name: str, extra: str) -> click.Command:
    """A stand-in for command ``name`` of a feature whose extra is not installed."""

    def fail() -> None:
        raise MissingExtra(f"`registry-adapter {name}`", extra)

    return click.Command(
        name,
        callback=fail,
        help=f"(needs the '{extra}' extra: pip install '{DISTRIBUTION}[{extra}]')",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
