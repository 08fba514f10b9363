"""The kinds of config key: how each is read from its TOML table, and how `mirror config` shows it.

A reader gets the table, the key and the key's declared default, and returns the value or raises
a ConfigError naming the key. What needs two keys at once is a check in `parse.py`, not here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from mirror.config.proxies import ProxyURLError, mask_url, parse_proxy_url
from mirror.config.settings import Value
from mirror.config.values import (
    ConfigError,
    Table,
    bool_key,
    file_key,
    format_rate,
    listen_address,
    parse_count,
    parse_duration,
    parse_listen,
    parse_rate,
    parse_size,
    secret_key,
)
from mirror.registry.errors import RegistryError
from mirror.registry.mediatypes import is_platform
from mirror.registry.patterns import PatternError, compile_pattern, compile_tag_glob
from mirror.registry.reference import NAME_RE, parse_digest

if TYPE_CHECKING:
    from mirror.signatures.policy import Policy

_ABSENT = object()


def _parsed(parse: Callable[[object, str], Any]) -> Callable[[Table, str, Any], Any]:
    """A reader that parses the key when it is given, and is the default when it is not (None, from
    Python data, is not given either where the key may be left out)."""

    def read(table: Table, key: str, default: Any) -> Any:
        value = table.raw(key, _ABSENT)
        absent = value is _ABSENT or (value is None and default is None)
        return default if absent else parse(value, table.key(key))

    return read


def _positive(value: object, key: str) -> float:
    seconds = parse_duration(value, key)
    if seconds <= 0:
        raise ConfigError(key, "must be more than zero")
    return seconds


def _or_none(value: Any) -> object:
    """An empty list or text is left out of `mirror config`: the key's absence says the same."""
    return value or None


def _with_file(key: str) -> tuple[str, ...]:
    return (key, f"{key}_file")


def _with_password_file(key: str) -> tuple[str, ...]:
    return (key, f"{key}_password_file")


def _masked(value: str | None) -> object:
    return None if value is None else mask_url(value)


TEXT = Value(lambda table, key, default: table.get(key, str, default))
BOOL = Value(lambda table, key, default: bool_key(table, key, default))
COUNT = Value(_parsed(parse_count))
SIZE = Value(_parsed(parse_size))
RATE = Value(_parsed(parse_rate), show=lambda bits: None if bits is None else format_rate(bits))
DURATION = Value(_parsed(parse_duration))
POSITIVE_DURATION = Value(_parsed(_positive))
FILE = Value(lambda table, key, default: file_key(table, key))  # a file that must exist and be readable
SECRET = Value(
    lambda table, key, default: secret_key(table, key),
    show=lambda value: None if value is None else "***",
    keys=_with_file,
    secret=True,
)


def _path(table: Table, key: str, default: Any) -> Path | None:
    value = table.get(key, str)
    return default if value is None else Path(value)


def _path_or_none(table: Table, key: str, default: Any) -> Path | None:
    value = table.get(key, str)
    return Path(value) if value else None


PATH = Value(_path)  # not checked: the mirror makes it
PATH_OR_NONE = Value(_path_or_none)  # "" is none, as leaving it out is


def _listen(table: Table, key: str, default: Any) -> tuple[str, int]:
    """host and port, from `listen`; its default is the two fields' defaults."""
    value = table.raw(key, _ABSENT)
    host, port = default if value is _ABSENT else parse_listen(value, table.key(key))
    return host, port


LISTEN = Value(_listen, show=lambda address: listen_address(*address))


def choice(values: tuple[str, ...], said: str, *, lower: bool = False) -> Value:
    """Text that must be one of `values` (`said`: how the error lists them)."""

    def read(table: Table, key: str, default: Any) -> str:
        value: str = table.get(key, str, default)
        value = value.lower() if lower else value
        if value not in values:
            raise ConfigError(table.key(key), f"expected {said}, got {value!r}")
        return value

    return Value(read)


LOG_LEVEL = choice(("critical", "error", "warning", "info", "debug"), "debug, info, warning or error", lower=True)
LOG_FORMAT = choice(("text", "json"), "'text' or 'json'")
SIGNATURE_MODE = choice(("enforce", "audit"), "'enforce' or 'audit'")


def _policy(table: Table, key: str, default: Any) -> Policy:
    """containers-policy.json(5), read and checked whole: the policy the mirror enforces (one reading)."""
    from mirror.signatures.policy import PolicyError, load_policy  # only with [signatures]

    path = table.get(key, str)
    if path is None:
        raise ConfigError(table.key(key), "missing: the containers-policy.json(5) file to enforce")
    try:
        return load_policy(Path(path))
    except PolicyError as exc:
        raise ConfigError(table.key(key), str(exc)) from None


POLICY = Value(_policy, show=lambda policy: policy.source)


def _registry_url(table: Table, key: str, default: Any) -> str:
    """An upstream's or a mirror's base URL: `/v2/` is below it, so it may have a path (Artifactory, Nexus)."""
    url = table.get(key, str)
    if url is None:
        raise ConfigError(table.key(key), "missing: the registry's base URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(table.key(key), f"expected an http:// or https:// URL, got {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(table.key(key), "give scheme, host, port and path only; credentials go in username/password")
    path = parts.path.rstrip("/")
    if path.endswith("/v2"):
        raise ConfigError(table.key(key), f"leave out the /v2 at the end: the mirror adds it (got {url!r})")
    return str(parts._replace(path=path).geturl())


REGISTRY_URL = Value(_registry_url)


def _proxy(table: Table, key: str, default: Any) -> str | None:
    """The upstream's `proxy` URL, with `proxy_password_file`'s password put into it."""
    proxy = table.get(key, str)
    password = secret_key(table, f"{key}_password") if f"{key}_password_file" in table.data else None
    if proxy is None or proxy == "":
        if password is not None:
            raise ConfigError(table.key(f"{key}_password_file"), "needs a proxy URL with a user name")
        return proxy  # type: ignore[no-any-return]  # Table.get checked it is a str
    try:
        proxy = parse_proxy_url(proxy)
    except ProxyURLError as exc:
        raise ConfigError(table.key(key), str(exc)) from exc
    if password is not None:
        parts = urlsplit(proxy)
        if not parts.username or parts.password is not None:
            raise ConfigError(table.key(f"{key}_password_file"), "needs a proxy URL with a user name and no password")
        host = parts.netloc.rpartition("@")[2]
        proxy = parts._replace(netloc=f"{parts.username}:{quote(password, safe='')}@{host}").geturl()
    return proxy


PROXY = Value(_proxy, show=_masked, keys=_with_password_file, secret=True)  # None: the environment's; "": direct


def _redis(table: Table, key: str, default: Any) -> str:
    """The Redis URL, with `redis_password_file`'s password put into it."""
    redis = table.get(key, str)
    if not redis or urlsplit(redis).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(table.key(key), f"expected redis://host:6379/0, got {redis!r}")
    password = secret_key(table, f"{key}_password") if f"{key}_password_file" in table.data else None
    if password is not None:
        parts = urlsplit(redis)
        if parts.password is not None or parts.scheme == "unix":
            raise ConfigError(table.key(f"{key}_password_file"), "needs a redis:// URL without a password in it")
        user = quote(parts.username or "", safe="")
        host = parts.netloc.rpartition("@")[2]
        redis = parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}").geturl()
    return redis  # type: ignore[no-any-return]  # Table.get checked it is a str


REDIS = Value(_redis, show=_masked, keys=_with_password_file, secret=True)


def _peer_url(table: Table, key: str, default: Any) -> str:
    url = table.get(key, str)
    if not url or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ConfigError(table.key(key), "expected how the other replicas reach this one: http://host:port")
    return url.rstrip("/")  # type: ignore[no-any-return]  # Table.get checked it is a str


PEER_URL = Value(_peer_url)


def _strings(check: Callable[[object], bool], problem: str) -> Value:
    """A list whose every entry passes `check`; `problem` says what was expected, with {entry!r}."""

    def read(table: Table, key: str, default: Any) -> tuple[Any, ...]:
        entries = table.get(key, list, [])
        for entry in entries:
            if not check(entry):
                raise ConfigError(table.key(key), problem.format(entry=entry))
        return tuple(entries)

    return Value(read, show=_or_none)


def _patterns(table: Table, key: str, default: Any) -> tuple[str, ...]:
    """A list of repository patterns (`library/*`, `myorg/**`), each checked."""
    patterns = table.get(key, list, [])
    for pattern in patterns:
        try:
            compile_pattern(pattern if isinstance(pattern, str) else "")
        except PatternError as exc:
            raise ConfigError(table.key(key), str(exc)) from None
    return tuple(patterns)


PATTERNS = Value(_patterns, show=_or_none)


def _parses(parse: Callable[[str], object], refusal: type[Exception]) -> Callable[[object], bool]:
    """Whether an entry is text that `parse` takes (it raises `refusal` for what it does not)."""

    def parses(entry: object) -> bool:
        try:
            parse(entry if isinstance(entry, str) else "")
        except refusal:
            return False
        return True

    return parses


TAG_GLOBS = _strings(_parses(compile_tag_glob, PatternError), "expected tag globs like 'v*' or '*.*.*', got {entry!r}")
DIGESTS = _strings(_parses(parse_digest, RegistryError), "expected digests like 'sha256:<64 hex>', got {entry!r}")
PEERS = _strings(  # networks, hosts or *.domains
    lambda entry: isinstance(entry, str) and re.fullmatch(r"(\*\.)?[A-Za-z0-9.:/\[\]-]+", entry) is not None,
    "expected networks, hosts or *.domains, got {entry!r}",
)


def _is_host(host: object) -> bool:
    return isinstance(host, str) and bool(host) and re.fullmatch(r"[a-z0-9.:\[\]-]+", host) is not None


def _hosts(table: Table, key: str, default: Any) -> tuple[str, ...]:
    """Host names (`cdn.corp.example`, `10.1.2.3`), each checked: no scheme, port or path."""
    hosts = _strings(_is_host, "expected host names like 'cdn.corp.example', got {entry!r}").read(table, key, default)
    return tuple(host.strip("[]") for host in hosts)


HOSTS = Value(_hosts, show=_or_none)


def _repository_prefix(table: Table, key: str, default: Any) -> str:
    """Repository path components put in front of every name (a Harbor proxy project)."""
    prefix = table.get(key, str, default).strip("/")
    if prefix and not NAME_RE.fullmatch(prefix):
        raise ConfigError(table.key(key), f"expected repository path components, got {prefix!r}")
    return prefix  # type: ignore[no-any-return]  # Table.get checked it is a str


REPOSITORY_PREFIX = Value(_repository_prefix, show=_or_none)


def _platforms(table: Table, key: str, default: Any) -> tuple[str, ...] | None:
    """Platforms like 'linux/arm64'; 'all' (None) for every one."""
    platforms = table.get(key, list, list(default))
    if not all(p == "all" or is_platform(p) for p in platforms):
        raise ConfigError(table.key(key), f"expected platforms like 'linux/arm64' or 'all', got {platforms!r}")
    return None if "all" in platforms else tuple(platforms)


PLATFORMS = Value(_platforms, show=lambda platforms: ("all",) if platforms is None else platforms)


def _users(table: Table, key: str, default: Any) -> tuple[str, ...]:
    users = table.get(key, list)
    if not users or not all(isinstance(user, str) and user for user in users):
        raise ConfigError(table.key(key), 'expected user names from htpasswd, or "*" for everyone')
    return tuple(users)


USERS = Value(_users)  # from htpasswd or temporary logins; "*": everyone, anonymous too
