"""Environment variables over the file: MIRROR_<TABLE>_<KEY> and MIRROR_UPSTREAM_<HOST>_<KEY>."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from mirror.registry.reference import DOCKER_HUB, DOCKER_HUB_URL

# Keys that environment variables may set: MIRROR_<TABLE>_<KEY>, and for an upstream
# MIRROR_UPSTREAM_<HOST>_<KEY> with the host's dots, dashes and colons as underscores.
ENV_KEYS = {
    "server": (
        "listen",
        "default_upstream",
        "log_level",
        "tls_cert",
        "tls_key",
        "head_timeout",
        "drain_timeout",
        "offline",
    ),
    "auth": ("htpasswd", "admin_htpasswd", "login_keys"),
    "cache": ("directory", "tag_ttl", "max_size", "max_age", "tag_max_age", "negative_ttl"),
    "log": ("format",),
    "fleet": ("redis", "redis_password_file", "peer_url", "secret", "secret_file", "heartbeat", "lease_ttl"),
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
    "max_connections",
    "max_connections_per_blob",
    "parallel_threshold",
    "max_bandwidth",
    "repository_prefix",
    "mirrors_only",
    "offline",
    "keep_deleted_tags",
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


# MIRROR_* variables that are not settings: the CLI's admin login, the image build's CA, the tests'.
OTHER_VARIABLES = frozenset({"MIRROR_ADMIN_CREDENTIALS", "MIRROR_CONFIG", "MIRROR_IMAGE_CA", "MIRROR_E2E"})
OTHER_PREFIXES = ("MIRROR_SOAK_", "MIRROR_BENCH_")


def unknown_variables(env: Mapping[str, str], upstreams: list[str]) -> list[str]:
    """One line for each MIRROR_* variable that sets nothing (a typo is silently ignored otherwise),
    naming the nearest setting."""
    known = {env_name(table, key) for table, keys in ENV_KEYS.items() for key in keys}
    known |= {env_name("upstream", name, key) for name in upstreams for key in UPSTREAM_ENV_KEYS}
    lines = []
    for name in sorted(env):
        if not name.startswith("MIRROR_") or name in known or name in OTHER_VARIABLES:
            continue
        if name.startswith(OTHER_PREFIXES):
            continue
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
