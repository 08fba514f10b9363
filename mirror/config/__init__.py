"""Configuration: frozen dataclasses loaded once (file, then environment, then flags) and validated."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mirror.config.environment import apply_env, env_name, unknown_variables, with_credentials_directory
from mirror.config.model import (
    AccessRule,
    AuthConfig,
    CacheConfig,
    Config,
    FleetConfig,
    LogConfig,
    MirrorConfig,
    NamespaceCredential,
    PinConfig,
    PrefetchConfig,
    ServerConfig,
    UpstreamConfig,
)
from mirror.config.parse import from_dict
from mirror.config.proxies import ProxyEnvironment, ProxyURLError, mask_url, parse_proxy_url
from mirror.config.render import config_hash, render
from mirror.config.settings import restart_keys
from mirror.config.values import ConfigError, parse_duration, parse_listen, parse_size

__all__ = [
    "AccessRule",
    "AuthConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "FleetConfig",
    "LogConfig",
    "MirrorConfig",
    "NamespaceCredential",
    "PinConfig",
    "PrefetchConfig",
    "ProxyEnvironment",
    "ProxyURLError",
    "ServerConfig",
    "UpstreamConfig",
    "apply_env",
    "config_hash",
    "env_name",
    "from_dict",
    "load",
    "mask_url",
    "parse_duration",
    "parse_listen",
    "parse_proxy_url",
    "parse_size",
    "render",
    "restart_keys",
    "unknown_variables",
    "with_credentials_directory",
]


def load(
    path: Path | None,
    *,
    listen: str | None = None,
    cache_dir: str | None = None,
    offline: bool = False,
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
    data = with_credentials_directory(apply_env(data, env or {}), env or {})
    config = from_dict(data, ProxyEnvironment.read(env or {}))
    if listen is not None:
        host, port = parse_listen(listen, "--listen")
        config = replace(config, server=replace(config.server, host=host, port=port))
    if cache_dir is not None:
        config = replace(config, cache=replace(config.cache, directory=Path(cache_dir)))
    if offline:
        config = replace(config, server=replace(config.server, offline=True))
    return config
