"""Environment variables over the file: MIRROR_<TABLE>_<KEY> and MIRROR_UPSTREAM_<HOST>_<KEY>."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mirror.config.model import Config
from mirror.config.settings import Named, Section, Value, keys_of
from mirror.registry.reference import DOCKER_HUB, DOCKER_HUB_URL

# With no upstream in the file, the default one's variables apply to its table.
DEFAULT_UPSTREAMS = {DOCKER_HUB: {"url": DOCKER_HUB_URL}}


def env_name(*parts: str) -> str:
    return "MIRROR_" + "_".join(re.sub(r"[^A-Za-z0-9]", "_", part).upper() for part in parts)


def env_keys(cls: type) -> tuple[str, ...]:
    """The keys of a table that environment variables may set, as `model.py` declares them."""
    names: list[str] = []
    for key in keys_of(cls):
        kind = key.setting.kind
        if key.setting.env and isinstance(kind, Value):
            names += kind.keys(key.name)
    return tuple(names)


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The config data with environment variables laid over it (they win over the file)."""
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for key in keys_of(Config):
        kind = key.setting.kind
        if isinstance(kind, Section):
            for name in env_keys(kind.of):
                value = env.get(env_name(key.name, name))
                if value is not None:
                    data.setdefault(key.name, {})[name] = value
        elif isinstance(kind, Named):
            _apply_to_named(data, key.name, kind, env)
    return data


def _apply_to_named(data: dict[str, Any], name: str, kind: Named, env: Mapping[str, str]) -> None:
    """MIRROR_UPSTREAM_<HOST>_<KEY>: the host's dots, dashes and colons as underscores."""
    tables = data.get(name)
    if not isinstance(tables, dict):
        tables = DEFAULT_UPSTREAMS
    tables = {host: dict(table) if isinstance(table, dict) else table for host, table in tables.items()}
    for host, table in tables.items():
        for key in env_keys(kind.of):
            value = env.get(env_name(kind.env, host, key))
            if value is not None and isinstance(table, dict):
                table[key] = value
    if name in data or tables != DEFAULT_UPSTREAMS:
        data[name] = tables


def variables(upstreams: list[str]) -> set[str]:
    """Every variable that sets a key, for these upstreams."""
    known = set()
    for key in keys_of(Config):
        kind = key.setting.kind
        if isinstance(kind, Section):
            known |= {env_name(key.name, name) for name in env_keys(kind.of)}
        elif isinstance(kind, Named):
            known |= {env_name(kind.env, host, name) for host in upstreams for name in env_keys(kind.of)}
    return known


# MIRROR_* variables that are not settings: the CLI's admin login, the image build's CA, the tests'.
OTHER_VARIABLES = frozenset({"MIRROR_ADMIN_CREDENTIALS", "MIRROR_CONFIG", "MIRROR_IMAGE_CA", "MIRROR_E2E"})
OTHER_PREFIXES = ("MIRROR_SOAK_", "MIRROR_BENCH_")


def unknown_variables(env: Mapping[str, str], upstreams: list[str]) -> list[str]:
    """One line for each MIRROR_* variable that sets nothing (a typo is silently ignored otherwise),
    naming the nearest setting."""
    known = variables(upstreams)
    lines = []
    for name in sorted(env):
        if not name.startswith("MIRROR_") or name in known or name in OTHER_VARIABLES:
            continue
        if name.startswith(OTHER_PREFIXES):
            continue
        import difflib  # only for a variable that sets nothing: not at every start-up

        nearest = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f" (did you mean {nearest[0]}?)" if nearest else ""
        lines.append(f"{name} is not a setting and is ignored{hint}")
    return lines


CREDENTIALS = ("$CREDENTIALS_DIRECTORY/", "${CREDENTIALS_DIRECTORY}/")
# Where systemd keeps the running unit's credentials: what root's commands read when they are
# not run by the unit (CREDENTIALS_DIRECTORY=/etc/mirror points them at the originals instead).
UNIT_CREDENTIALS = "/run/credentials/mirror.service"


def with_credentials_directory(data: Any, env: Mapping[str, str]) -> Any:
    """Paths written `$CREDENTIALS_DIRECTORY/NAME`, with the directory systemd's `LoadCredential=`
    made (readable by the service's user, whatever owns the files it copied) put in."""
    if isinstance(data, dict):
        return {key: with_credentials_directory(value, env) for key, value in data.items()}
    if isinstance(data, list):
        return [with_credentials_directory(value, env) for value in data]
    if isinstance(data, str) and data.startswith(CREDENTIALS):
        directory = env.get("CREDENTIALS_DIRECTORY") or UNIT_CREDENTIALS
        return f"{directory.rstrip('/')}/{data.split('/', 1)[1]}"
    return data
