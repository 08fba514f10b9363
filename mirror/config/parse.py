"""From TOML data to a validated Config: every key read as `model.py` declares it, every error
naming its key; then the checks that need more than one key, each a named function."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from mirror.config.model import (
    AccessRule,
    CacheConfig,
    Config,
    FleetConfig,
    MirrorConfig,
    NamespaceCredential,
    PinConfig,
    PrefetchConfig,
    ServerConfig,
    UpstreamConfig,
)
from mirror.config.proxies import ProxyEnvironment, ProxyURLError, parse_proxy_url
from mirror.config.settings import Key, Named, Section, Sections, Value, keys_of
from mirror.config.values import ConfigError, Table, check_pem

T = TypeVar("T")


def from_dict(data: dict[str, Any], proxy_env: ProxyEnvironment | None = None) -> Config:
    config = read(Config, Table(data, ""), proxy_env=proxy_env or ProxyEnvironment())
    checked_proxy_env(config.proxy_env)
    return config


def read(cls: type[T], table: Table, **given: Any) -> T:
    """One table as `cls` declares it (`given`: the fields that are not in it), checked, with no key left over."""
    values = dict(given)
    for key in keys_of(cls):
        if key.fields[0] not in given:
            values.update(key.values(_read_key(key, table)))
    made = cls(**values)
    for check in CHECKS.get(cls, ()):
        check(table, made)
    table.finish()
    return made


def _read_key(key: Key, table: Table) -> Any:
    kind = key.setting.kind
    if isinstance(kind, Value):
        return kind.read(table, key.name, key.default)
    if isinstance(kind, Section):
        section = table.table(key.name)
        return None if kind.optional and not section.data else read(kind.of, section)
    if isinstance(kind, Sections):
        return tuple(read(kind.of, entry) for entry in _array_of_tables(table, key.name, kind.usage, kind.shorthand))
    if isinstance(kind, Named):
        return _named(kind, table.table(key.name)) or key.default
    raise AssertionError(f"{key.name} is not in the file ({kind!r}): read() is given it")


def _array_of_tables(table: Table, name: str, usage: str, shorthand: str | None = None) -> list[Table]:
    """`[[<table>.<name>]]` as Tables, each named for its errors (`pin[0].image`)."""
    entries = table.raw(name, [])
    if not isinstance(entries, list):
        raise ConfigError(table.key(name), f"expected {usage}")
    return [
        Table({shorthand: entry} if shorthand and isinstance(entry, str) else entry, f"{table.key(name)}[{number}]")
        for number, entry in enumerate(entries)
    ]


def _named(kind: Named, table: Table) -> dict[str, Any]:
    """`[upstreams."<host>"]`: one table per registry host."""
    found: dict[str, Any] = {name: read(kind.of, table.table(name), name=name) for name in table.data}
    for name in found:
        if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", name):
            raise ConfigError(f"{table.path}.{name}", "the table name must be a registry host, like 'docker.io'")
    table.finish()
    return found


def checked_proxy_env(env: ProxyEnvironment) -> ProxyEnvironment:
    for name, value in (("HTTP_PROXY", env.http_proxy), ("HTTPS_PROXY", env.https_proxy)):
        if value is not None:
            try:
                parse_proxy_url(value)
            except ProxyURLError as exc:
                raise ConfigError(name, str(exc)) from exc
    return env


# The checks that need more than one key (or the table around it), by table.


def _tls_pair(table: Table, server: ServerConfig) -> None:
    if (server.tls_cert is None) != (server.tls_key is None):
        raise ConfigError(table.key("tls_key" if server.tls_cert else "tls_cert"), "tls_cert and tls_key go together")


def _ages_above_zero(table: Table, cache: CacheConfig) -> None:
    if cache.max_age == 0:
        raise ConfigError(table.key("max_age"), "must be more than zero; leave it out to keep content forever")
    if cache.tag_max_age == 0:
        raise ConfigError(table.key("tag_max_age"), "must be more than zero; leave it out to follow max_age")


def _rule_repositories(table: Table, rule: AccessRule) -> None:
    if not rule.repositories or not all("/" in pattern for pattern in rule.repositories):
        raise ConfigError(
            table.key("repositories"), "expected patterns that start with the registry, like 'docker.io/library/*'"
        )


def _prefetch_image(table: Table, prefetch: PrefetchConfig) -> None:
    if not prefetch.image:
        raise ConfigError(table.key("image"), "missing: the image to keep warm, e.g. 'alpine:3.19'")


def _pin_image(table: Table, pin: PinConfig) -> None:
    if not pin.image:
        raise ConfigError(table.key("image"), "missing: the image to keep for good, e.g. 'alpine:3.19'")


def _tls_and_login(table: Table, login: UpstreamConfig | MirrorConfig) -> None:
    """username and password together; client_key with client_cert; the CA and certificate load."""
    if (login.username is None) != (login.password is None):
        raise ConfigError(table.key("password" if login.username else "username"), "username and password go together")
    if login.client_key is not None and login.client_cert is None:
        raise ConfigError(table.key("client_cert"), "client_key needs client_cert")
    for key, kind, path in (("ca_file", "ca", login.ca_file), ("client_cert", "cert", login.client_cert)):
        problem = None if path is None else check_pem(kind, path, login.client_key)
        if problem is not None:
            raise ConfigError(table.key(key), f"cannot load {path}: {problem}")


def _mirrors_to_ask(table: Table, upstream: UpstreamConfig) -> None:
    if upstream.mirrors_only and not upstream.mirrors:
        raise ConfigError(table.key("mirrors_only"), "needs mirrors to ask instead of url")


def _login_for_namespaces(table: Table, login: NamespaceCredential) -> None:
    if not login.repositories:
        raise ConfigError(table.key("repositories"), "expected the repository patterns this login is for")
    if login.username is None or login.password is None:  # required, but absent reads as None
        key = "username" if login.username is None else "password"
        raise ConfigError(table.key(key), "username and password go together")


def _fleet_secret(table: Table, fleet: FleetConfig) -> None:
    if not fleet.secret or len(fleet.secret) < 16:
        raise ConfigError(table.key("secret"), "expected a shared secret of 16 characters or more (or secret_file)")


def _lease_outlives_heartbeats(table: Table, fleet: FleetConfig) -> None:
    if fleet.heartbeat <= 0 or fleet.lease_ttl < 3 * fleet.heartbeat:
        raise ConfigError(table.key("lease_ttl"), "expected heartbeat > 0 and lease_ttl at least three heartbeats")


def _default_upstream_configured(table: Table, config: Config) -> None:
    if config.server.default_upstream not in config.upstreams:
        key = f"{table.key('server')}.default_upstream"
        raise ConfigError(key, f"{config.server.default_upstream!r} is not a configured upstream")


CHECKS: dict[type, tuple[Callable[[Table, Any], None], ...]] = {
    ServerConfig: (_tls_pair,),
    CacheConfig: (_ages_above_zero,),
    AccessRule: (_rule_repositories,),
    PrefetchConfig: (_prefetch_image,),
    PinConfig: (_pin_image,),
    MirrorConfig: (_tls_and_login,),
    UpstreamConfig: (_tls_and_login, _mirrors_to_ask),
    NamespaceCredential: (_login_for_namespaces,),
    FleetConfig: (_fleet_secret, _lease_outlives_heartbeats),
    Config: (_default_upstream_configured,),
}
