"""Configuration: ``config.yaml`` validated into typed settings.

Secrets never sit in the file: a value may be ``${ENV_VAR}`` (required) or
``${ENV_VAR:-default}``, and secret keys also accept ``<key>_file`` pointing at a file.
Validation errors name the key path (``sources[1].base_url``) and what is wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    Field,
    GetCoreSchemaHandler,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from registry_adapter.feeds import feed_type_named, feed_type_names
from registry_adapter.feeds.base import ConfigError, FeedSettings, StrictSettings
from registry_adapter.plugins import SETTINGS, plugins

DEFAULT_CONFIG = "config.yaml"
ENV_CONFIG = "REGISTRY_ADAPTER_CONFIG"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SiteConfig(StrictSettings):
    id: str = Field(min_length=1, description="Site identifier; part of every pseudonym.")
    timezone: str = Field(description="IANA zone, e.g. America/Chicago.")
    pseudonym_key: str | None = None
    pseudonym_key_file: Path | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _one_key(self) -> SiteConfig:
        if not self.pseudonym_key and not self.pseudonym_key_file:
            raise ValueError("set pseudonym_key (from ${ENV_VAR}) or pseudonym_key_file")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def key_bytes(self) -> bytes:
        """The pseudonym key; a missing key file is created once, readable by the owner only."""
        if self.pseudonym_key:
            return self.pseudonym_key.encode()
        assert self.pseudonym_key_file is not None
        path = self.pseudonym_key_file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return path.read_text().strip().encode()


class DatabaseConfig(StrictSettings):
    url: str = "sqlite:///var/registry.db"
    # The password apart from the URL, exactly as it is: in the URL, "@ : / %" must be
    # %-encoded; here they need not be. Used when the URL itself carries no password.
    password: str | None = None
    password_file: Path | None = None

    def password_value(self) -> str | None:
        if self.password:
            return self.password
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"database.password_file: cannot read {self.password_file}: {reason}") from None


class LoggingConfig(StrictSettings):
    format: Literal["auto", "console", "json"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class TimepointWindow(StrictSettings):
    """A PROM time point: due ``due_days`` after the anchor, accepted from start to end."""

    anchor: Literal["surgery", "discharge"]
    due_days: int
    window_start_days: int
    window_end_days: int

    @model_validator(mode="after")
    def _ordered(self) -> TimepointWindow:
        if not self.window_start_days <= self.due_days <= self.window_end_days:
            raise ValueError("need window_start_days <= due_days <= window_end_days")
        return self


def _default_timepoints() -> dict[str, TimepointWindow]:
    # Defaults from shared/reference/spine-registry.md ("PROM time points and windows").
    return {
        "baseline": TimepointWindow(anchor="surgery", due_days=0, window_start_days=-90, window_end_days=0),
        "90d": TimepointWindow(anchor="discharge", due_days=90, window_start_days=60, window_end_days=180),
        "1y": TimepointWindow(anchor="surgery", due_days=365, window_start_days=300, window_end_days=456),
    }


class PromConfig(StrictSettings):
    timepoints: dict[str, TimepointWindow] = Field(default_factory=_default_timepoints)
    # Extra recognition per instrument id: canonical URLs and linkId aliases used by this site.
    instruments: dict[str, dict[str, Any]] = Field(default_factory=dict)


class MappingConfig(StrictSettings):
    # Folders that replace the bundled mappings / code maps (copy the bundled ones to start).
    directory: Path | None = None
    codemaps: Path | None = None
    validation: Literal["strict", "warn", "off"] = "warn"


@functools.cache
def _source_adapter(*names: str) -> TypeAdapter[Any]:
    """A validator of a configured source told apart by ``type`` among these feed types."""
    models = [feed.settings for feed in (feed_type_named(n) for n in names) if feed is not None]
    if len(models) == 1:
        return TypeAdapter(models[0])
    union = functools.reduce(operator.or_, models)
    return TypeAdapter(Annotated[union, Field(discriminator="type")])  # type: ignore[arg-type]


def _validate_source(value: Any) -> Any:
    """A configured source: the union of every registered feed type's settings model, told
    apart by ``type`` (registry_adapter.feeds).

    Only the module of the source's own type is imported: the feed modules import their
    adapters (HTTP, HL7 v2, ...), and most commands read a config whose sources they never use.
    Anything that does not validate against its own type is validated against the whole union
    again, so the error is exactly the union's (the same locations, the expected tags listed).
    """
    if isinstance(value, FeedSettings):
        return value
    tag = value.get("type") if isinstance(value, dict) else None
    if isinstance(tag, str) and tag in feed_type_names():
        try:
            return _source_adapter(tag).validate_python(value)
        except ValidationError:
            pass
    return _source_adapter(*feed_type_names()).validate_python(value)


class _LazySource:
    """The pydantic type of ``Settings.sources`` items (see ``_validate_source``)."""

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_plain_validator_function(_validate_source)


def _sections_model() -> type[BaseModel]:
    """Top-level sections owned by other packages (``reminders``, ``scheduler``, ``review``):
    each package registers its model, and a missing section takes the model's defaults."""
    fields: dict[str, Any] = {}
    for plugin in plugins(SETTINGS):
        model = plugin.load()
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"entry point {plugin.name} = {plugin.value} is not a pydantic model")
        fields[plugin.name] = (model, Field(default_factory=model))
    return create_model("Sections", __base__=StrictSettings, **fields)


if TYPE_CHECKING:
    SourceConfig = FeedSettings
    Sections = BaseModel
else:
    SourceConfig = _LazySource
    Sections = _sections_model()

M = TypeVar("M", bound=BaseModel)
# scheduler.lock_ttl_seconds when no scheduler section is installed (its default there too).
DEFAULT_LEASE_TTL_SECONDS = 90.0


# (sections model, section model) → the section's name: ``Settings.section`` is called per
# planned time point, and the answer never changes for a sections model.
_SECTION_NAMES: dict[tuple[type[BaseModel], type[BaseModel]], str] = {}


class Settings(StrictSettings):
    site: SiteConfig
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    mappings: MappingConfig = Field(default_factory=MappingConfig)
    proms: PromConfig = Field(default_factory=PromConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    batch_size: int = Field(default=500, ge=1, le=50_000)
    # Processes that map staged records (registry_adapter/mapping_pool.py): N - 1 mapping
    # children plus the calling process, which writes. 1: map in the calling process; auto: 2
    # on a host with two or more cores.
    mapping_workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = 1
    # The sections other packages own, written at the top level of config.yaml.
    sections: Sections = Field(default_factory=Sections)

    @model_validator(mode="before")
    @classmethod
    def _gather_sections(cls, data: Any) -> Any:
        if isinstance(data, dict):
            names = set(Sections.model_fields)
            # Written at the top level in config.yaml; already nested in a model_dump().
            nested = data.get("sections")
            gathered = dict(nested) if isinstance(nested, dict) else {}
            gathered.update({k: data[k] for k in names & set(data)})
            data = {k: v for k, v in data.items() if k not in names} | {"sections": gathered}
        return data

    @model_validator(mode="after")
    def _unique_sources(self) -> Settings:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique: {', '.join(dupes)}")
        return self

    def _section_name(self, model: type[BaseModel]) -> str:
        name = _SECTION_NAMES.get((type(self.sections), model))
        if name is not None:
            return name
        for name in type(self.sections).model_fields:
            if type(getattr(self.sections, name)) is model:
                _SECTION_NAMES[(type(self.sections), model)] = name
                return name
        raise LookupError(f"no settings section is read by {model.__name__} (is its entry point installed?)")

    def section(self, model: type[M]) -> M:
        """The section of config.yaml that ``model`` reads (``settings.section(RemindersSettings)``)."""
        value: M = getattr(self.sections, self._section_name(model))
        return value

    def lease_ttl_seconds(self) -> float:
        """How long a lease (a sync's or a job's) lives without a heartbeat.

        The key, ``scheduler.lock_ttl_seconds``, belongs to the scheduler's section; syncs
        started here hold the same kind of lease, so they read it too (by name: the scheduler
        sits above this package).
        """
        scheduler = getattr(self.sections, "scheduler", None)
        return float(scheduler.lock_ttl_seconds) if scheduler is not None else DEFAULT_LEASE_TTL_SECONDS

    def with_section(self, value: BaseModel) -> Settings:
        """A copy with one section replaced (tests, and callers that adjust a section)."""
        name = self._section_name(type(value))
        return self.model_copy(update={"sections": self.sections.model_copy(update={name: value})})

    def source(self, name: str) -> SourceConfig:
        for src in self.sources:
            if src.name == name:
                return src
        known = ", ".join(s.name for s in self.sources) or "none configured"
        raise ConfigError(f"no source named {name!r} (known: {known})")


def _interpolate(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{path}: environment variable {name} is not set")

    return _ENV_REF.sub(repl, value)


def _resolve_secret_files(data: Any, path: str, base: Path | None) -> Any:
    """``<name>_secret_file: path`` is read into ``<name>_secret`` (relative to the config file)."""
    if isinstance(data, list):
        return [_resolve_secret_files(v, f"{path}[{i}]", base) for i, v in enumerate(data)]
    if not isinstance(data, dict):
        return data
    out = {k: _resolve_secret_files(v, f"{path}.{k}" if path else k, base) for k, v in data.items()}
    for key in [k for k in out if isinstance(k, str) and k.endswith("_secret_file")]:
        target = key.removesuffix("_file")
        file = Path(str(out.pop(key))).expanduser()
        if base is not None and not file.is_absolute():
            file = base / file
        try:
            out[target] = file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{path}.{key}: cannot read {file}: {exc.strerror}") from exc
    return out


# Discriminator tags (feed types) and our nesting ("settings" of an adapter's source, "sections")
# are not keys the user wrote.
_NOT_KEYS = frozenset({*feed_type_names(), "settings", "sections"})


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _NOT_KEYS or str(part).startswith("function-"):
            continue  # discriminator tags and our nesting are not keys the user wrote
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_settings(data: Any, *, base_dir: Path | None = None) -> Settings:
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a YAML mapping of keys to values")
    data = _resolve_secret_files(_interpolate(data, ""), "", base_dir)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {_where(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    return _relative_to(settings, base_dir) if base_dir else settings


def _path_strings(sources: list[FeedSettings]) -> dict[type, frozenset[str]]:
    """Path settings of the adapters' dataclasses, which keep paths as ``str``: each feed type
    names its own (``FeedType.path_strings``); only the configured sources' types are read."""
    feeds = (feed_type_named(t) for t in sorted({s.type for s in sources}))
    return {cls: fields for feed in feeds if feed is not None for cls, fields in feed.path_strings.items()}


def _relative_to(settings: Settings, base: Path) -> Settings:
    """Relative paths in a config file mean relative to that file, as users expect.

    Every ``Path`` field of every section is resolved, so a new setting cannot forget to, and
    so are the string path fields of the adapters' dataclasses named in ``_path_strings``;
    a relative SQLite database file is resolved the same way.
    """

    path_strings = _path_strings(settings.sources)

    def fix(value: Any) -> Any:
        if isinstance(value, Path):
            return value if value.is_absolute() else base / value
        if isinstance(value, BaseModel):
            changed = {k: fix(v) for k, v in value.__dict__.items()}
            return value.model_copy(update={k: v for k, v in changed.items() if v is not value.__dict__[k]})
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            paths = path_strings.get(type(value), frozenset())
            update: dict[str, Any] = {}
            for f in dataclasses.fields(value):
                old = getattr(value, f.name)
                new = (
                    str(fix(Path(old).expanduser())) if f.name in paths and isinstance(old, str) else fix(old)
                )
                if new is not old and new != old:
                    update[f.name] = new
            return dataclasses.replace(value, **update) if update else value
        if isinstance(value, list):
            fixed = [fix(v) for v in value]
            return fixed if any(a is not b for a, b in zip(fixed, value, strict=True)) else value
        return value

    settings = fix(settings)
    db = settings.database
    if db.url.startswith("sqlite:///") and not db.url.startswith("sqlite:////"):
        rel = db.url.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            settings = settings.model_copy(
                update={"database": db.model_copy(update={"url": f"sqlite:///{base / rel}"})}
            )
    return settings


def load_settings(path: Path | None = None) -> Settings:
    """Load from ``path``, else ``$REGISTRY_ADAPTER_CONFIG``, else ``./config.yaml``."""
    path = path or Path(os.environ.get(ENV_CONFIG, DEFAULT_CONFIG))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"configuration file {path} not found (copy config.example.yaml to config.yaml, "
            f"or pass --config / set {ENV_CONFIG})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse_settings(data, base_dir=path.resolve().parent)
