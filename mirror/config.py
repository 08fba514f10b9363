"""Configuration: frozen dataclasses loaded once from TOML and validated."""

from __future__ import annotations

import math
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from mirror.proxyenv import ProxyEnvironment, ProxyURLError, mask_url, parse_proxy_url

DEFAULT_LISTEN = "0.0.0.0:5000"
DEFAULT_CACHE_DIR = "mirror-cache"
DOCKER_HUB = "docker.io"
DOCKER_HUB_URL = "https://registry-1.docker.io"


class ConfigError(Exception):
    """A config problem, named by its key so the operator can find it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 5000
    default_upstream: str = DOCKER_HUB
    log_level: str = "info"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    head_timeout: float = 30.0  # a client must send its request line and headers within this


@dataclass(frozen=True)
class CacheConfig:
    directory: Path = Path(DEFAULT_CACHE_DIR)
    tag_ttl: float = 60.0
    max_size: int | None = None
    max_age: float | None = None


@dataclass(frozen=True)
class AuthConfig:
    htpasswd: Path | None = None  # registry clients must log in (bcrypt htpasswd)
    admin_htpasswd: Path | None = None  # for /stats, /metrics, /api/* and the dashboard


@dataclass(frozen=True)
class PrefetchConfig:
    """An image kept warm in the background: re-resolved every `refresh`, new digests fetched."""

    image: str
    platforms: tuple[str, ...] | None = ("linux/amd64",)  # None: every platform
    refresh: float = 3600.0


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    proxy: str | None = field(default=None, repr=False)  # None: the environment's; "": direct
    ca_file: Path | None = None  # trusted besides the system store
    client_cert: Path | None = None  # for upstreams that require mutual TLS
    client_key: Path | None = None

    def __repr__(self) -> str:
        secret = "'***'" if self.password is not None else "None"
        proxy = None if self.proxy is None else mask_url(self.proxy)
        return (
            f"UpstreamConfig(name={self.name!r}, url={self.url!r}, username={self.username!r}, "
            f"password={secret}, connect_timeout={self.connect_timeout}, read_timeout={self.read_timeout}, "
            f"proxy={proxy!r}, ca_file={self.ca_file!r}, client_cert={self.client_cert!r}, "
            f"client_key={self.client_key!r})"
        )


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    cache: CacheConfig = CacheConfig()
    log: LogConfig = LogConfig()
    auth: AuthConfig = AuthConfig()
    prefetch: tuple[PrefetchConfig, ...] = ()
    upstreams: dict[str, UpstreamConfig] = field(
        default_factory=lambda: {DOCKER_HUB: UpstreamConfig(DOCKER_HUB, DOCKER_HUB_URL)}
    )
    proxy_env: ProxyEnvironment = field(default_factory=ProxyEnvironment)  # HTTPS_PROXY, HTTP_PROXY, NO_PROXY

    @property
    def listen(self) -> str:
        return f"{self.server.host}:{self.server.port}"


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object, key: str) -> float:
    """Seconds from a number or a string like '90s', '5m', '1h30m', '250ms'."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a duration like '60s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value and _DURATION_RE.sub("", value.replace(" ", "")) == "":
        seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_RE.findall(value.replace(" ", "")))
    else:
        raise ConfigError(key, f"expected a duration like '60s', '5m' or '1h', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(key, f"must be a finite duration of zero or more, got {value!r}")
    return seconds


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)", re.IGNORECASE)


def parse_size(value: object, key: str) -> int:
    """Bytes from a number or a string like '200GiB', '512MB', '10G' (G = 10^9, GiB = 2^30)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or (match.group(3) and not match.group(2)):
        raise ConfigError(key, f"expected a size like '200GiB' or '512MB', got {value!r}")
    number, prefix, binary = float(match.group(1)), match.group(2).upper(), match.group(3)
    size = int(number * (1024 if binary else 1000) ** " KMGTP".index(prefix or " "))
    if size <= 0:
        raise ConfigError(key, f"must be more than zero, got {value!r}")
    return size


def parse_listen(value: object, key: str) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected 'HOST:PORT', got {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"expected 'HOST:PORT' with a port from 1 to 65535, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _Table:
    """Reads one TOML table, remembering its path for error messages and rejecting unknown keys."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a table, got {data!r}")
        self.data: dict[str, Any] = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ConfigError(self.key(name), f"expected {expected}, got {value!r}")
        return value

    def raw(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def table(self, name: str) -> _Table:
        self.used.add(name)
        return _Table(self.data.get(name, {}), self.key(name))

    def finish(self) -> None:
        for name in self.data:
            if name not in self.used:
                raise ConfigError(self.key(name), "unknown key")


def _prefetch(root: _Table) -> tuple[PrefetchConfig, ...]:
    entries = root.raw("prefetch", [])
    if not isinstance(entries, list):
        raise ConfigError("prefetch", "expected a list of [[prefetch]] tables")
    found = []
    for number, data in enumerate(entries):
        table = _Table(data, f"prefetch[{number}]")
        image = table.get("image", str)
        if not image:
            raise ConfigError(table.key("image"), "missing: the image to keep warm, e.g. 'alpine:3.19'")
        platforms = table.get("platforms", list, ["linux/amd64"])
        if not all(isinstance(p, str) and re.fullmatch(r"[a-z0-9]+/[a-z0-9]+(/[a-z0-9]+)?|all", p) for p in platforms):
            raise ConfigError(
                table.key("platforms"), f"expected platforms like 'linux/arm64' or 'all', got {platforms!r}"
            )
        refresh = parse_duration(table.raw("refresh", "1h"), table.key("refresh"))
        if refresh <= 0:
            raise ConfigError(table.key("refresh"), "must be more than zero")
        table.finish()
        found.append(PrefetchConfig(image, None if "all" in platforms else tuple(platforms), refresh))
    return tuple(found)


def _file(table: _Table, name: str) -> Path | None:
    """An optional path key whose file must exist and be readable."""
    value = table.get(name, str)
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(table.key(name), f"no such file: {value}")
    return path


def _secret(table: _Table, name: str) -> str | None:
    """`name`, or the first line of the file `<name>_file` names (kept out of the config file)."""
    value = table.get(name, str)
    path = _file(table, f"{name}_file")
    if path is None:
        return value  # type: ignore[no-any-return]  # _Table.get checked it is a str
    if value is not None:
        raise ConfigError(table.key(f"{name}_file"), f"give {name} or {name}_file, not both")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(table.key(f"{name}_file"), f"cannot read {path}: {exc}") from exc
    if not lines or not lines[0]:
        raise ConfigError(table.key(f"{name}_file"), f"{path} is empty")
    return lines[0]


def _proxy(table: _Table) -> str | None:
    """The upstream's `proxy` URL, with `proxy_password_file`'s password put into it."""
    proxy = table.get("proxy", str)
    password = _secret(table, "proxy_password") if "proxy_password_file" in table.data else None
    if proxy is None or proxy == "":
        if password is not None:
            raise ConfigError(table.key("proxy_password_file"), "needs a proxy URL with a user name")
        return proxy  # type: ignore[no-any-return]  # _Table.get checked it is a str
    try:
        proxy = parse_proxy_url(proxy)
    except ProxyURLError as exc:
        raise ConfigError(table.key("proxy"), str(exc)) from exc
    if password is not None:
        parts = urlsplit(proxy)
        if not parts.username or parts.password is not None:
            raise ConfigError(table.key("proxy_password_file"), "needs a proxy URL with a user name and no password")
        host = parts.netloc.rpartition("@")[2]
        proxy = parts._replace(netloc=f"{parts.username}:{quote(password, safe='')}@{host}").geturl()
    return proxy


def _check_pem(kind: str, path: Path, key: Path | None = None) -> str | None:
    """Why a CA or certificate file cannot be used, or None when it loads."""
    context = ssl.create_default_context()
    try:
        if kind == "ca":
            context.load_verify_locations(cafile=str(path))
        else:
            context.load_cert_chain(str(path), str(key) if key else None)
    except (ssl.SSLError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


def _upstream(name: str, table: _Table) -> UpstreamConfig:
    url = table.get("url", str)
    if url is None:
        raise ConfigError(table.key("url"), "missing: the upstream registry's base URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(table.key("url"), f"expected an http:// or https:// URL, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
        raise ConfigError(table.key("url"), "give only scheme, host and port; credentials go in username/password")
    username = table.get("username", str)
    password = _secret(table, "password")
    if (username is None) != (password is None):
        raise ConfigError(table.key("password" if username else "username"), "username and password go together")
    ca_file, client_cert, client_key = (_file(table, name) for name in ("ca_file", "client_cert", "client_key"))
    if client_key is not None and client_cert is None:
        raise ConfigError(table.key("client_cert"), "client_key needs client_cert")
    for key, kind, path in (("ca_file", "ca", ca_file), ("client_cert", "cert", client_cert)):
        problem = None if path is None else _check_pem(kind, path, client_key)
        if problem is not None:
            raise ConfigError(table.key(key), f"cannot load {path}: {problem}")
    upstream = UpstreamConfig(
        name=name,
        url=url.rstrip("/"),
        username=username,
        password=password,
        connect_timeout=parse_duration(table.raw("connect_timeout", 10), table.key("connect_timeout")),
        read_timeout=parse_duration(table.raw("read_timeout", 60), table.key("read_timeout")),
        proxy=_proxy(table),
        ca_file=ca_file,
        client_cert=client_cert,
        client_key=client_key,
    )
    table.finish()
    return upstream


def from_dict(data: dict[str, Any], proxy_env: ProxyEnvironment | None = None) -> Config:
    root = _Table(data, "")
    server_table = root.table("server")
    host, port = parse_listen(server_table.raw("listen", DEFAULT_LISTEN), server_table.key("listen"))
    default_upstream = server_table.get("default_upstream", str, DOCKER_HUB)
    log_level = server_table.get("log_level", str, "info").lower()
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise ConfigError(server_table.key("log_level"), f"expected debug, info, warning or error, got {log_level!r}")
    tls_cert, tls_key = (_file(server_table, name) for name in ("tls_cert", "tls_key"))
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError(server_table.key("tls_key" if tls_cert else "tls_cert"), "tls_cert and tls_key go together")
    head_timeout = parse_duration(server_table.raw("head_timeout", 30), server_table.key("head_timeout"))
    if head_timeout <= 0:
        raise ConfigError(server_table.key("head_timeout"), "must be more than zero")
    server_table.finish()

    auth_table = root.table("auth")
    auth = AuthConfig(_file(auth_table, "htpasswd"), _file(auth_table, "admin_htpasswd"))
    auth_table.finish()

    cache_table = root.table("cache")
    directory = Path(cache_table.get("directory", str, DEFAULT_CACHE_DIR))
    tag_ttl = parse_duration(cache_table.raw("tag_ttl", 60), cache_table.key("tag_ttl"))
    max_size = cache_table.raw("max_size")
    max_size = None if max_size is None else parse_size(max_size, cache_table.key("max_size"))
    max_age = cache_table.raw("max_age")
    max_age = None if max_age is None else parse_duration(max_age, cache_table.key("max_age"))
    if max_age == 0:
        raise ConfigError(cache_table.key("max_age"), "must be more than zero; leave it out to keep content forever")
    cache_table.finish()

    log_table = root.table("log")
    log_format = log_table.get("format", str, "text")
    if log_format not in ("text", "json"):
        raise ConfigError(log_table.key("format"), f"expected 'text' or 'json', got {log_format!r}")
    log_table.finish()

    upstreams_table = root.table("upstreams")
    upstreams = {
        name: _upstream(name, upstreams_table.table(name)) for name in upstreams_table.data
    } or Config().upstreams
    for name in upstreams:
        if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", name):
            raise ConfigError(f"upstreams.{name}", "the table name must be a registry host, like 'docker.io'")
    upstreams_table.finish()
    prefetch = _prefetch(root)
    if default_upstream not in upstreams:
        raise ConfigError(server_table.key("default_upstream"), f"{default_upstream!r} is not a configured upstream")
    root.finish()
    return Config(
        server=ServerConfig(host, port, default_upstream, log_level, tls_cert, tls_key, head_timeout),
        cache=CacheConfig(directory, tag_ttl, max_size, max_age),
        log=LogConfig(log_format),
        auth=auth,
        prefetch=prefetch,
        upstreams=upstreams,
        proxy_env=_proxy_env(proxy_env or ProxyEnvironment()),
    )


def _proxy_env(env: ProxyEnvironment) -> ProxyEnvironment:
    for name, value in (("HTTP_PROXY", env.http_proxy), ("HTTPS_PROXY", env.https_proxy)):
        if value is not None:
            try:
                parse_proxy_url(value)
            except ProxyURLError as exc:
                raise ConfigError(name, str(exc)) from exc
    return env


# Keys that environment variables may set: MIRROR_<TABLE>_<KEY>, and for an upstream
# MIRROR_UPSTREAM_<HOST>_<KEY> with the host's dots, dashes and colons as underscores.
ENV_KEYS = {
    "server": ("listen", "default_upstream", "log_level", "tls_cert", "tls_key", "head_timeout"),
    "auth": ("htpasswd", "admin_htpasswd"),
    "cache": ("directory", "tag_ttl", "max_size", "max_age"),
    "log": ("format",),
}
UPSTREAM_ENV_KEYS = (
    "url",
    "username",
    "password",
    "password_file",
    "connect_timeout",
    "read_timeout",
    "proxy",
    "proxy_password_file",
    "ca_file",
    "client_cert",
    "client_key",
)


def env_name(*parts: str) -> str:
    return "MIRROR_" + "_".join(re.sub(r"[^A-Za-z0-9]", "_", part).upper() for part in parts)


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The config data with environment variables laid over it (they win over the file)."""
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for table, keys in ENV_KEYS.items():
        for key in keys:
            value = env.get(env_name(table, key))
            if value is not None:
                data.setdefault(table, {})[key] = value
    upstreams = data.get("upstreams")
    if not isinstance(upstreams, dict):
        upstreams = {DOCKER_HUB: {"url": DOCKER_HUB_URL}}
    upstreams = {name: dict(table) if isinstance(table, dict) else table for name, table in upstreams.items()}
    for name, table in upstreams.items():
        for key in UPSTREAM_ENV_KEYS:
            value = env.get(env_name("upstream", name, key))
            if value is not None and isinstance(table, dict):
                table[key] = value
    if "upstreams" in data or upstreams != {DOCKER_HUB: {"url": DOCKER_HUB_URL}}:
        data["upstreams"] = upstreams
    return data


def load(
    path: Path | None,
    *,
    listen: str | None = None,
    cache_dir: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load the config file (or the defaults), then environment variables, then command-line flags."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"invalid TOML: {exc}") from exc
    config = from_dict(apply_env(data, env or {}), ProxyEnvironment.read(env or {}))
    if listen is not None:
        host, port = parse_listen(listen, "--listen")
        config = replace(config, server=replace(config.server, host=host, port=port))
    if cache_dir is not None:
        config = replace(config, cache=replace(config.cache, directory=Path(cache_dir)))
    return config


def render(config: Config) -> str:
    """The effective config as TOML, secrets masked: what `mirror config` prints."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, tuple):
            return "[" + ", ".join(value(item) for item in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def table(name: str, items: dict[str, object]) -> str:
        lines = [f"{key} = {value(v)}" for key, v in items.items() if v is not None]
        return f"[{name}]\n" + "\n".join(lines) + "\n"

    server = config.server
    parts = [
        table(
            "server",
            {
                "listen": config.listen,
                "default_upstream": server.default_upstream,
                "log_level": server.log_level,
                "tls_cert": server.tls_cert,
                "tls_key": server.tls_key,
                "head_timeout": server.head_timeout,
            },
        ),
        table(
            "cache",
            {
                "directory": config.cache.directory,
                "tag_ttl": config.cache.tag_ttl,
                "max_size": config.cache.max_size,
                "max_age": config.cache.max_age,
            },
        ),
        table("log", {"format": config.log.format}),
        table("auth", {"htpasswd": config.auth.htpasswd, "admin_htpasswd": config.auth.admin_htpasswd}),
    ]
    for name, upstream in config.upstreams.items():
        parts.append(
            table(
                f'upstreams."{name}"',
                {
                    "url": upstream.url,
                    "username": upstream.username,
                    "password": "***" if upstream.password is not None else None,
                    "connect_timeout": upstream.connect_timeout,
                    "read_timeout": upstream.read_timeout,
                    "proxy": None if upstream.proxy is None else mask_url(upstream.proxy),
                    "ca_file": upstream.ca_file,
                    "client_cert": upstream.client_cert,
                    "client_key": upstream.client_key,
                },
            )
        )
    shown = config.proxy_env.masked()
    if shown:
        lines = [f"# {name}={value}" for name, value in shown.items()]
        parts.append("# From the environment; upstreams without `proxy` follow these:\n" + "\n".join(lines) + "\n")
    for entry in config.prefetch:
        platforms = entry.platforms if entry.platforms is not None else ("all",)
        parts.append(table("[prefetch]", {"image": entry.image, "platforms": platforms, "refresh": entry.refresh}))
    return "\n".join(parts)
