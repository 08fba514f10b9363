"""The effective config as TOML, secrets masked: what `mirror config` prints, key by declared key."""

from __future__ import annotations

import hashlib

from mirror.config.model import Config
from mirror.config.proxies import ProxyEnvironment
from mirror.config.settings import FromEnvironment, Named, Section, Sections, Value, keys_of


def config_hash(config: Config) -> str:
    """Which config is in force (mirror_info, `mirror config --check`): its rendering, secrets masked, hashed."""
    return hashlib.sha256(render(config).encode()).hexdigest()[:12]


def render(config: Config) -> str:
    """The effective config as TOML, secrets masked: what `mirror config` prints."""
    return "\n".join(_tables(config, ""))


def _tables(instance: object, path: str, header: str | None = None) -> list[str]:
    """An instance's table (headed `header`; none at the top), then the tables below it, in declaration order."""
    items: dict[str, object] = {}
    below: list[str] = []
    for key in keys_of(type(instance)):
        kind, value = key.setting.kind, key.value(instance)
        dotted = f"{path}.{key.name}" if path else key.name
        if isinstance(kind, Value):
            items[key.name] = kind.show(value)
        elif isinstance(kind, Section) and value is not None:
            below += _tables(value, dotted, dotted)
        elif isinstance(kind, Sections):
            for entry in value:
                below += _tables(entry, dotted, f"[{dotted}]")
        elif isinstance(kind, Named):
            for name, entry in value.items():
                below += _tables(entry, f'{dotted}."{name}"', f'{dotted}."{name}"')
        elif isinstance(kind, FromEnvironment) and isinstance(value, ProxyEnvironment) and value.masked():
            lines = [f"# {name}={shown}" for name, shown in value.masked().items()]
            below.append("# From the environment; upstreams without `proxy` follow these:\n" + "\n".join(lines) + "\n")
    return ([] if header is None else [_table(header, items)]) + below


def _table(name: str, items: dict[str, object]) -> str:
    lines = [f"{key} = {_value(v)}" for key, v in items.items() if v is not None]
    return f"[{name}]\n" + "\n".join(lines) + "\n"


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(_value(item) for item in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
