"""`mirror client-config`: ready-to-use Docker, containerd and podman settings for this mirror."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from mirror.config import DOCKER_HUB

# containerd's `server` for a registry: where it goes when no mirror answers.
_DOCKER_HUB_SERVER = "https://registry-1.docker.io"


class ClientConfigError(ValueError):
    pass


def _mirror_host(url: str) -> tuple[str, bool]:
    """The mirror's host[:port] and whether it speaks plain HTTP."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ClientConfigError(f"--url must look like http://HOST:PORT or https://HOST[:PORT], got {url!r}")
    return parts.netloc, parts.scheme == "http"


def docker(url: str, registries: list[str]) -> str:
    """daemon.json: Docker mirrors only Docker Hub, so other registries are not listed."""
    host, plain_http = _mirror_host(url)
    config: dict[str, list[str]] = {"registry-mirrors": [url.rstrip("/")]}
    if plain_http:
        config["insecure-registries"] = [host]
    return json.dumps(config, indent=2) + "\n"


def containerd_hosts(url: str, registries: list[str]) -> dict[str, str]:
    """One hosts.toml per registry, keyed by the directory name under certs.d."""
    _mirror_host(url)
    files = {}
    for registry in registries:
        server = _DOCKER_HUB_SERVER if registry == DOCKER_HUB else f"https://{registry}"
        files[registry] = f'server = "{server}"\n\n[host."{url.rstrip("/")}"]\n  capabilities = ["pull", "resolve"]\n'
    return files


def podman(url: str, registries: list[str], default_upstream: str) -> str:
    """registries.conf: the default upstream at the mirror's root, others under a path prefix."""
    host, plain_http = _mirror_host(url)
    blocks = []
    for registry in registries:
        location = host if registry == default_upstream else f"{host}/{registry}"
        block = f'[[registry]]\nlocation = "{registry}"\n\n[[registry.mirror]]\nlocation = "{location}"\n'
        if plain_http:
            block += "insecure = true\n"
        blocks.append(block)
    return "\n".join(blocks)


def render(client: str, url: str, registries: list[str], default_upstream: str, output: Path | None) -> str:
    """The text to print; for containerd with `output`, the hosts.toml files are written there."""
    if client == "docker":
        return docker(url, registries)
    if client == "podman":
        return podman(url, registries, default_upstream)
    files = containerd_hosts(url, registries)
    if output is not None:
        for registry, text in files.items():
            (output / registry).mkdir(parents=True, exist_ok=True)
            (output / registry / "hosts.toml").write_text(text)
        return "".join(f"wrote {output / registry / 'hosts.toml'}\n" for registry in files)
    return "\n".join(f"# /etc/containerd/certs.d/{registry}/hosts.toml\n{text}" for registry, text in files.items())
