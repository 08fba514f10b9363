"""How a config key is declared: once, on its dataclass field, with its kind, default, environment
variable and reload class. Parse, render, the environment and the reload read that declaration.

    tag_ttl: float = setting(DURATION, default=60.0, env=True, reload="live")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Literal, TypeVar, dataclass_transform

from mirror.config.values import Table

# live: applied in place on SIGHUP. restart: a change is named in the reload's log line as
# needing a restart. start: read at start-up only, and a change is not named either (as before
# the keys were declared; naming them would change what a reload says).
Reload = Literal["live", "restart", "start"]

T = TypeVar("T")


def _same(value: Any) -> object:
    return value


def _alone(key: str) -> tuple[str, ...]:
    return (key,)


@dataclass(frozen=True)
class Value:
    """A key with a value in its table: how it is read, and how `mirror config` writes it (None: left out)."""

    read: Callable[[Table, str, Any], Any]  # (table, key, default) → the value
    show: Callable[[Any], object] = _same
    keys: Callable[[str], tuple[str, ...]] = _alone  # the TOML keys it reads (a secret's `_file` too)
    secret: bool = False  # never in a repr


@dataclass(frozen=True)
class Section:
    """A table of its own (`[server]`), its keys declared on `of`'s fields; optional: None when absent."""

    of: type
    optional: bool = False


@dataclass(frozen=True)
class Sections:
    """An array of tables (`[[prefetch]]`); a bare string entry sets `shorthand` (mirrors = ["http://…"])."""

    of: type
    usage: str  # what the key must be, for the error when it is not a list
    shorthand: str | None = None


@dataclass(frozen=True)
class Named:
    """Tables named by the key below them (`[upstreams."docker.io"]`), the name in the field `name`."""

    of: type
    env: str  # one of them in the environment's names: MIRROR_<ENV>_<NAME>_<KEY>


@dataclass(frozen=True)
class FromEnvironment:
    """Not in the file: read from the process environment, shown by `mirror config` as comments."""


Kind = Value | Section | Sections | Named | FromEnvironment


@dataclass(frozen=True)
class Setting:
    kind: Kind
    reload: Reload
    env: bool  # MIRROR_<TABLE>_<KEY> sets it (each of kind.keys)
    key: str | None  # the TOML key, when it is not the field's name


def setting(
    kind: Kind,
    *,
    reload: Reload,
    env: bool = False,
    key: str | None = None,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A config key's field: its declaration in the metadata; secrets are kept out of the repr."""
    secret = isinstance(kind, Value) and kind.secret
    metadata = {"setting": Setting(kind, reload, env, key)}
    return field(default=default, default_factory=default_factory, repr=not secret, metadata=metadata)


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(setting, field))
def settings(cls: type[T]) -> type[T]:
    """A config table: frozen, and built by keyword only, so that a field added cannot shift the others."""
    return dataclass(frozen=True, kw_only=True)(cls)


@dataclass(frozen=True)
class Key:
    """One TOML key of a table, and the fields it sets (`listen` sets host and port)."""

    name: str
    fields: tuple[str, ...]
    setting: Setting
    default: Any  # the fields' defaults (a tuple for several); None when the key is required

    def value(self, instance: object) -> Any:
        values = tuple(getattr(instance, name) for name in self.fields)
        return values if len(values) > 1 else values[0]

    def values(self, value: Any) -> Iterator[tuple[str, Any]]:
        """(field, value) for what the key read."""
        return zip(self.fields, value, strict=True) if len(self.fields) > 1 else iter([(self.fields[0], value)])


def keys_of(cls: type) -> list[Key]:
    """The declared keys of a config table, in declaration order (what `mirror config` prints in)."""
    grouped: dict[str, list[Field[Any]]] = {}
    for item in fields(cls):
        declared = item.metadata.get("setting")
        if declared is not None:
            grouped.setdefault(declared.key or item.name, []).append(item)
    return [
        Key(name, tuple(item.name for item in items), items[0].metadata["setting"], _default(items))
        for name, items in grouped.items()
    ]


def _default(items: list[Field[Any]]) -> Any:
    defaults = [item.default_factory() if item.default_factory is not MISSING else item.default for item in items]
    defaults = [None if value is MISSING else value for value in defaults]
    return tuple(defaults) if len(defaults) > 1 else defaults[0]


def restart_keys(old: object, new: object, path: str = "") -> list[str]:
    """The keys whose change needs a restart, as the reload names them (`server.listen`,
    `upstreams."x".url`), in declaration order. Named tables are compared by their names only:
    each upstream compares its own keys (`Upstream.reconfigure`)."""
    changed = []
    for key in keys_of(type(old)):
        before, after = key.value(old), key.value(new)
        dotted = f"{path}.{key.name}" if path else key.name
        kind = key.setting.kind
        if isinstance(kind, Section) and before is not None and after is not None:
            changed += restart_keys(before, after, dotted)
        elif key.setting.reload == "restart" and _fixed(kind, before) != _fixed(kind, after):
            changed.append(dotted)
    return changed


def _fixed(kind: Kind, value: Any) -> object:
    """A value as far as a restart is concerned: a mirror's login may change in place, its address not."""
    if isinstance(kind, Sections):
        restart = [key for key in keys_of(kind.of) if key.setting.reload == "restart"]
        return [[key.value(entry) for key in restart] for entry in value]
    if isinstance(kind, Named):
        return sorted(value)
    return value
