"""From TOML data to a validated Config: every key checked, every error naming its key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from mirror.config.model import (
    DEFAULT_CACHE_DIR,
    DEFAULT_LISTEN,
    AccessRule,
    AuthConfig,
    CacheConfig,
    Config,
    ConfigError,
    FleetConfig,
    LogConfig,
    MirrorConfig,
    NamespaceCredential,
    PrefetchConfig,
    ServerConfig,
    UpstreamConfig,
)
from mirror.config.proxies import ProxyEnvironment, ProxyURLError, parse_proxy_url
from mirror.config.values import (
    Table,
    bool_key,
    check_pem,
    file_key,
    parse_count,
    parse_duration,
    parse_listen,
    parse_rate,
    parse_size,
    secret_key,
)
from mirror.registry.errors import RegistryError
from mirror.registry.patterns import PatternError, compile_pattern
from mirror.registry.reference import DOCKER_HUB, parse_digest


def _array_of_tables(table: Table, name: str, usage: str) -> list[Table]:
    """`[[<table>.<name>]]` as Tables, each named for its errors (`pin[0].image`)."""
    entries = table.raw(name, [])
    if not isinstance(entries, list):
        raise ConfigError(table.key(name), f"expected {usage}")
    return [Table(entry, f"{table.key(name)}[{number}]") for number, entry in enumerate(entries)]


def _prefetch(root: Table) -> tuple[PrefetchConfig, ...]:
    found = []
    for table in _array_of_tables(root, "prefetch", "a list of [[prefetch]] tables"):
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


def _fleet(table: Table) -> FleetConfig | None:
    """`[fleet]`: redis (and redis_password_file), peer_url, secret or secret_file, peers; absent: on its own."""
    if not table.data:
        return None
    redis = table.get("redis", str)
    if not redis or urlsplit(redis).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(table.key("redis"), f"expected redis://host:6379/0, got {redis!r}")
    redis_password = secret_key(table, "redis_password") if "redis_password_file" in table.data else None
    if redis_password is not None:
        parts = urlsplit(redis)
        if parts.password is not None or parts.scheme == "unix":
            raise ConfigError(table.key("redis_password_file"), "needs a redis:// URL without a password in it")
        user = quote(parts.username or "", safe="")
        host = parts.netloc.rpartition("@")[2]
        redis = parts._replace(netloc=f"{user}:{quote(redis_password, safe='')}@{host}").geturl()
    peer_url = table.get("peer_url", str)
    if not peer_url or urlsplit(peer_url).scheme not in ("http", "https") or not urlsplit(peer_url).hostname:
        raise ConfigError(table.key("peer_url"), "expected how the other replicas reach this one: http://host:port")
    secret = secret_key(table, "secret")
    if not secret or len(secret) < 16:
        raise ConfigError(table.key("secret"), "expected a shared secret of 16 characters or more (or secret_file)")
    heartbeat = parse_duration(table.raw("heartbeat", "2s"), table.key("heartbeat"))
    lease_ttl = parse_duration(table.raw("lease_ttl", "10s"), table.key("lease_ttl"))
    if heartbeat <= 0 or lease_ttl < 3 * heartbeat:
        raise ConfigError(table.key("lease_ttl"), "expected heartbeat > 0 and lease_ttl at least three heartbeats")
    peers = table.get("peers", list, [])
    for entry in peers:
        if not isinstance(entry, str) or not re.fullmatch(r"(\*\.)?[A-Za-z0-9.:/\[\]-]+", entry):
            raise ConfigError(table.key("peers"), f"expected networks, hosts or *.domains, got {entry!r}")
    table.finish()
    return FleetConfig(redis, peer_url.rstrip("/"), secret, heartbeat, lease_ttl, tuple(peers))


def _pins(root: Table) -> tuple[str, ...]:
    images = []
    for table in _array_of_tables(root, "pin", 'a list of [[pin]] tables with image = "…"'):
        image = table.get("image", str)
        if not image:
            raise ConfigError(table.key("image"), "missing: the image to keep for good, e.g. 'alpine:3.19'")
        table.finish()
        images.append(image)
    return tuple(images)


def proxy_key(table: Table) -> str | None:
    """The upstream's `proxy` URL, with `proxy_password_file`'s password put into it."""
    proxy = table.get("proxy", str)
    password = secret_key(table, "proxy_password") if "proxy_password_file" in table.data else None
    if proxy is None or proxy == "":
        if password is not None:
            raise ConfigError(table.key("proxy_password_file"), "needs a proxy URL with a user name")
        return proxy  # type: ignore[no-any-return]  # Table.get checked it is a str
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


def _registry_url(table: Table) -> str:
    """An upstream's or a mirror's base URL: `/v2/` is below it, so it may have a path (Artifactory, Nexus)."""
    url = table.get("url", str)
    if url is None:
        raise ConfigError(table.key("url"), "missing: the registry's base URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(table.key("url"), f"expected an http:// or https:// URL, got {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            table.key("url"), "give scheme, host, port and path only; credentials go in username/password"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/v2"):
        raise ConfigError(table.key("url"), f"leave out the /v2 at the end: the mirror adds it (got {url!r})")
    return str(parts._replace(path=path).geturl())


def _tls_and_login(table: Table) -> tuple[str | None, str | None, Path | None, Path | None, Path | None]:
    """username, password, ca_file, client_cert, client_key: checked together."""
    username = table.get("username", str)
    password = secret_key(table, "password")
    if (username is None) != (password is None):
        raise ConfigError(table.key("password" if username else "username"), "username and password go together")
    ca_file, client_cert, client_key = (file_key(table, name) for name in ("ca_file", "client_cert", "client_key"))
    if client_key is not None and client_cert is None:
        raise ConfigError(table.key("client_cert"), "client_key needs client_cert")
    for key, kind, path in (("ca_file", "ca", ca_file), ("client_cert", "cert", client_cert)):
        problem = None if path is None else check_pem(kind, path, client_key)
        if problem is not None:
            raise ConfigError(table.key(key), f"cannot load {path}: {problem}")
    return username, password, ca_file, client_cert, client_key


def _mirrors(table: Table) -> tuple[MirrorConfig, ...]:
    """`mirrors`: URLs, or tables with a url and their own login and TLS (`[[upstreams."x".mirrors]]`)."""
    entries = table.raw("mirrors", [])
    if not isinstance(entries, list):
        raise ConfigError(table.key("mirrors"), "expected a list of mirror URLs or [[mirrors]] tables")
    found = []
    for number, entry in enumerate(entries):
        mirror = Table({"url": entry} if isinstance(entry, str) else entry, f"{table.key('mirrors')}[{number}]")
        url = _registry_url(mirror)
        found.append(MirrorConfig(url, *_tls_and_login(mirror)))
        mirror.finish()
    return tuple(found)


def _repository_prefix(table: Table) -> str:
    prefix = table.get("repository_prefix", str, "").strip("/")
    if prefix and not re.fullmatch(
        r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*", prefix
    ):
        raise ConfigError(table.key("repository_prefix"), f"expected repository path components, got {prefix!r}")
    return prefix  # type: ignore[no-any-return]  # Table.get checked it is a str


def _patterns(table: Table, key: str) -> tuple[str, ...]:
    """A list of repository patterns (`library/*`, `myorg/**`), each checked."""
    patterns = table.get(key, list, [])
    for pattern in patterns:
        try:
            compile_pattern(pattern if isinstance(pattern, str) else "")
        except PatternError as exc:
            raise ConfigError(table.key(key), str(exc)) from None
    return tuple(patterns)


def _digests(table: Table, key: str) -> tuple[str, ...]:
    digests = table.get(key, list, [])
    for digest in digests:
        try:
            parse_digest(digest if isinstance(digest, str) else "")
        except RegistryError:
            raise ConfigError(table.key(key), f"expected digests like 'sha256:<64 hex>', got {digest!r}") from None
    return tuple(digests)


def _rules(table: Table) -> tuple[AccessRule, ...]:
    rules = []
    for rule in _array_of_tables(table, "rules", "a list of [[auth.rules]] tables"):
        users = rule.get("users", list)
        if not users or not all(isinstance(user, str) and user for user in users):
            raise ConfigError(rule.key("users"), 'expected user names from htpasswd, or "*" for everyone')
        repositories = _patterns(rule, "repositories")
        if not repositories or not all("/" in pattern for pattern in repositories):
            raise ConfigError(
                rule.key("repositories"), "expected patterns that start with the registry, like 'docker.io/library/*'"
            )
        rule.finish()
        rules.append(AccessRule(tuple(users), repositories))
    return tuple(rules)


def _credentials(table: Table) -> tuple[NamespaceCredential, ...]:
    """`[[upstreams."x".credentials]]`: repositories, username, password or password_file."""
    found = []
    for login in _array_of_tables(table, "credentials", "a list of [[credentials]] tables"):
        repositories = _patterns(login, "repositories")
        if not repositories:
            raise ConfigError(login.key("repositories"), "expected the repository patterns this login is for")
        username = login.get("username", str)
        password = secret_key(login, "password")
        if username is None or password is None:
            raise ConfigError(
                login.key("username" if username is None else "password"), "username and password go together"
            )
        login.finish()
        found.append(NamespaceCredential(repositories, username, password))
    return tuple(found)


def _upstream(name: str, table: Table) -> UpstreamConfig:
    url = _registry_url(table)
    username, password, ca_file, client_cert, client_key = _tls_and_login(table)
    bandwidth = table.raw("max_bandwidth")
    mirrors = _mirrors(table)
    mirrors_only = bool_key(table, "mirrors_only")
    if mirrors_only and not mirrors:
        raise ConfigError(table.key("mirrors_only"), "needs mirrors to ask instead of url")
    upstream = UpstreamConfig(
        name=name,
        url=url,
        username=username,
        password=password,
        connect_timeout=parse_duration(table.raw("connect_timeout", 10), table.key("connect_timeout")),
        read_timeout=parse_duration(table.raw("read_timeout", 60), table.key("read_timeout")),
        proxy=proxy_key(table),
        ca_file=ca_file,
        client_cert=client_cert,
        client_key=client_key,
        max_connections=parse_count(table.raw("max_connections", 32), table.key("max_connections")),
        max_connections_per_blob=parse_count(
            table.raw("max_connections_per_blob", 8), table.key("max_connections_per_blob")
        ),
        parallel_threshold=parse_size(table.raw("parallel_threshold", "64MiB"), table.key("parallel_threshold")),
        max_bandwidth=None if bandwidth is None else parse_rate(bandwidth, table.key("max_bandwidth")),
        repository_prefix=_repository_prefix(table),
        mirrors=mirrors,
        mirrors_only=mirrors_only,
        offline=bool_key(table, "offline"),
        allow=_patterns(table, "allow"),
        deny=_patterns(table, "deny"),
        block=_digests(table, "block"),
        keep_deleted_tags=bool_key(table, "keep_deleted_tags"),
        credentials=_credentials(table),
        redirect_hosts=_hosts(table, "redirect_hosts"),
    )
    table.finish()
    return upstream


def _hosts(table: Table, key: str) -> tuple[str, ...]:
    """Host names (`cdn.corp.example`, `10.1.2.3`), each checked: no scheme, port or path."""
    hosts = table.get(key, list, [])
    for host in hosts:
        if not isinstance(host, str) or not host or not re.fullmatch(r"[a-z0-9.:\[\]-]+", host) or "//" in host:
            raise ConfigError(table.key(key), f"expected host names like 'cdn.corp.example', got {host!r}")
    return tuple(host.strip("[]") for host in hosts)


def from_dict(data: dict[str, Any], proxy_env: ProxyEnvironment | None = None) -> Config:
    root = Table(data, "")
    server_table = root.table("server")
    host, port = parse_listen(server_table.raw("listen", DEFAULT_LISTEN), server_table.key("listen"))
    default_upstream = server_table.get("default_upstream", str, DOCKER_HUB)
    log_level = server_table.get("log_level", str, "info").lower()
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise ConfigError(server_table.key("log_level"), f"expected debug, info, warning or error, got {log_level!r}")
    tls_cert, tls_key = (file_key(server_table, name) for name in ("tls_cert", "tls_key"))
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError(server_table.key("tls_key" if tls_cert else "tls_cert"), "tls_cert and tls_key go together")
    head_timeout = parse_duration(server_table.raw("head_timeout", 30), server_table.key("head_timeout"))
    if head_timeout <= 0:
        raise ConfigError(server_table.key("head_timeout"), "must be more than zero")
    drain_timeout = parse_duration(server_table.raw("drain_timeout", 30), server_table.key("drain_timeout"))
    offline = bool_key(server_table, "offline")
    server_table.finish()

    auth_table = root.table("auth")
    login_keys = auth_table.get("login_keys", str)
    auth = AuthConfig(
        file_key(auth_table, "htpasswd"),
        file_key(auth_table, "admin_htpasswd"),
        _rules(auth_table),
        Path(login_keys) if login_keys else None,
    )
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
    tag_max_age = cache_table.raw("tag_max_age")
    tag_max_age = None if tag_max_age is None else parse_duration(tag_max_age, cache_table.key("tag_max_age"))
    if tag_max_age == 0:
        raise ConfigError(cache_table.key("tag_max_age"), "must be more than zero; leave it out to follow max_age")
    negative_ttl = parse_duration(cache_table.raw("negative_ttl", 30), cache_table.key("negative_ttl"))
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
    pins = _pins(root)
    fleet = _fleet(root.table("fleet"))
    if default_upstream not in upstreams:
        raise ConfigError(server_table.key("default_upstream"), f"{default_upstream!r} is not a configured upstream")
    root.finish()
    return Config(
        server=ServerConfig(
            host, port, default_upstream, log_level, tls_cert, tls_key, head_timeout, drain_timeout, offline
        ),
        cache=CacheConfig(directory, tag_ttl, max_size, max_age, tag_max_age, negative_ttl),
        log=LogConfig(log_format),
        auth=auth,
        prefetch=prefetch,
        pins=pins,
        fleet=fleet,
        upstreams=upstreams,
        proxy_env=checked_proxy_env(proxy_env or ProxyEnvironment()),
    )


def checked_proxy_env(env: ProxyEnvironment) -> ProxyEnvironment:
    for name, value in (("HTTP_PROXY", env.http_proxy), ("HTTPS_PROXY", env.https_proxy)):
        if value is not None:
            try:
                parse_proxy_url(value)
            except ProxyURLError as exc:
                raise ConfigError(name, str(exc)) from exc
    return env
