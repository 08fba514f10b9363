"""The effective config as TOML, secrets masked: what `mirror config` prints."""

from __future__ import annotations

import hashlib

from mirror.config.model import Config
from mirror.config.proxies import mask_url
from mirror.config.values import format_rate


def config_hash(config: Config) -> str:
    """Which config is in force (mirror_info, `mirror config --check`): its rendering, secrets masked, hashed."""
    return hashlib.sha256(render(config).encode()).hexdigest()[:12]


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
                "drain_timeout": server.drain_timeout,
                "offline": server.offline,
            },
        ),
        table(
            "cache",
            {
                "directory": config.cache.directory,
                "tag_ttl": config.cache.tag_ttl,
                "max_size": config.cache.max_size,
                "max_age": config.cache.max_age,
                "tag_max_age": config.cache.tag_max_age,
                "negative_ttl": config.cache.negative_ttl,
            },
        ),
        table("log", {"format": config.log.format}),
        table(
            "auth",
            {
                "htpasswd": config.auth.htpasswd,
                "admin_htpasswd": config.auth.admin_htpasswd,
                "login_keys": config.auth.login_keys,
            },
        ),
        *(table("[auth.rules]", {"users": r.users, "repositories": r.repositories}) for r in config.auth.rules),
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
                    "max_connections": upstream.max_connections,
                    "max_connections_per_blob": upstream.max_connections_per_blob,
                    "parallel_threshold": upstream.parallel_threshold,
                    "max_bandwidth": None if upstream.max_bandwidth is None else format_rate(upstream.max_bandwidth),
                    "repository_prefix": upstream.repository_prefix or None,
                    "mirrors_only": upstream.mirrors_only,
                    "offline": upstream.offline,
                    "allow": upstream.allow or None,
                    "deny": upstream.deny or None,
                    "block": upstream.block or None,
                    "keep_deleted_tags": upstream.keep_deleted_tags,
                    "redirect_hosts": upstream.redirect_hosts or None,
                },
            )
        )
        for login in upstream.credentials:
            parts.append(
                table(
                    f'[upstreams."{name}".credentials]',
                    {"repositories": login.repositories, "username": login.username, "password": "***"},
                )
            )
        for mirror in upstream.mirrors:
            parts.append(
                table(
                    f'[upstreams."{name}".mirrors]',
                    {
                        "url": mirror.url,
                        "username": mirror.username,
                        "password": "***" if mirror.password is not None else None,
                        "ca_file": mirror.ca_file,
                        "client_cert": mirror.client_cert,
                        "client_key": mirror.client_key,
                    },
                )
            )
    shown = config.proxy_env.masked()
    if shown:
        lines = [f"# {name}={value}" for name, value in shown.items()]
        parts.append("# From the environment; upstreams without `proxy` follow these:\n" + "\n".join(lines) + "\n")
    if config.fleet is not None:
        fleet = config.fleet
        parts.append(
            table(
                "fleet",
                {
                    "redis": mask_url(fleet.redis),
                    "peer_url": fleet.peer_url,
                    "secret": "***",
                    "heartbeat": fleet.heartbeat,
                    "lease_ttl": fleet.lease_ttl,
                    "peers": fleet.peers or None,
                },
            )
        )
    for image in config.pins:
        parts.append(table("[pin]", {"image": image}))
    for entry in config.prefetch:
        platforms = entry.platforms if entry.platforms is not None else ("all",)
        parts.append(table("[prefetch]", {"image": entry.image, "platforms": platforms, "refresh": entry.refresh}))
    return "\n".join(parts)
