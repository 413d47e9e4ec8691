"""The registry of feed types: each maps a source ``type`` to its settings model and factory.

A feed type is one module (``registry_adapter/feeds/<type>.py`` or any installed package)
that defines its settings model (a ``FeedSettings`` with ``type: Literal["<type>"]``) and a
``FeedType``, declared as an entry point in the ``spine_registry_adapter.feeds`` group. The
configuration (``Settings.sources``), ``build_source`` (``sync`` and the nightly job), the
listener and ``doctor`` all look feed types up here; nothing else lists them. The README's
"Contributing: architecture" section walks through adding one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from registry_adapter.feeds.base import ConfigError, FeedSettings
from registry_adapter.plugins import FEEDS, Plugin, plugins

if TYPE_CHECKING:
    from adapters.base import Source
    from registry_adapter.app import App


@dataclass(frozen=True)
class FeedType:
    """One kind of source.

    ``build`` makes the ``Source`` that ``sync`` pulls from; None for a feed the hospital
    pushes to us (the MLLP listener), which ``listen`` serves instead.
    """

    name: str  # the ``type:`` of its sources in config.yaml
    settings: type[FeedSettings]
    build: Callable[[Any, App], Source] | None = None
    description: str = ""
    # String fields of the adapter's settings dataclasses that hold paths, resolved against the
    # config file's folder like every ``Path`` setting: {dataclass: field names}.
    path_strings: Mapping[type, frozenset[str]] = field(default_factory=dict)

    @property
    def pulled(self) -> bool:
        return self.build is not None


@cache
def feed_types() -> dict[str, FeedType]:
    """Every registered feed type, by name (the ``type:`` of its sources)."""
    return {name: _load(plugin) for name, plugin in _feed_plugins().items()}


@cache
def feed_type_names() -> tuple[str, ...]:
    """The names of the registered feed types, without importing their modules."""
    return tuple(_feed_plugins())


@cache
def feed_type_named(name: str) -> FeedType | None:
    """One feed type by name, importing only its module (each imports its adapter, which can
    be costly: a command reading a config with only ``files`` sources needs no HTTP stack)."""
    plugin = _feed_plugins().get(name)
    return _load(plugin) if plugin is not None else None


@cache
def _feed_plugins() -> dict[str, Plugin]:
    return {plugin.name: plugin for plugin in plugins(FEEDS, required=True)}


def _load(plugin: Plugin) -> FeedType:
    feed = plugin.load()
    if not isinstance(feed, FeedType):
        raise TypeError(f"entry point {plugin.name} = {plugin.value} is not a FeedType")
    if feed.name != plugin.name:
        raise TypeError(f"entry point {plugin.name} = {plugin.value} declares type {feed.name!r}")
    return feed


def feed_type(cfg: FeedSettings) -> FeedType:
    feed = feed_type_named(cfg.type)
    if feed is None:
        raise KeyError(cfg.type)
    return feed


def is_pulled(cfg: FeedSettings) -> bool:
    """Whether ``sync`` pulls this source (else the hospital pushes to it: ``listen``)."""
    return feed_type(cfg).pulled


def build_source(cfg: FeedSettings, app: App) -> Source:
    """The ``Source`` for a configured pull feed."""
    feed = feed_type(cfg)
    if feed.build is None:
        raise ConfigError(
            f"source {cfg.name}: type {cfg.type!r} is pulled by `sync`; it is not (see `listen`)"
        )
    return feed.build(cfg, app)
