"""`mirror client-config`: ready-to-use Docker, containerd and podman settings for this mirror."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from mirror.commands.configfile import add_config_option
from mirror.config import load
from mirror.registry.reference import DOCKER_HUB, DOCKER_HUB_URL


class ClientConfigError(ValueError):
    pass


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    client = commands.add_parser("client-config", help="print Docker, containerd or podman settings for this mirror")
    client.add_argument("client", choices=["docker", "containerd", "podman"])
    client.add_argument(
        "--url", required=True, help="the mirror's URL as clients reach it, e.g. http://mirror.lan:5000"
    )
    client.add_argument(
        "--registry",
        action="append",
        metavar="HOST",
        help="registry to mirror (repeatable; default: the upstreams in --config, else docker.io)",
    )
    add_config_option(client, "mirror config file, for its upstreams")
    client.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="write the files in DIR instead of printing them: DIR/<registry>/hosts.toml, daemon.json, registries.conf",
    )
    client.add_argument(
        "--no-fallback",
        action="store_true",
        help="settings that never send the client to the registry itself when the mirror refuses",
    )


def run(args: argparse.Namespace) -> int:
    """`mirror client-config`: the files printed, or written in --output."""
    config = load(args.config, env=os.environ)
    registries = args.registry or list(config.upstreams)
    try:
        text = render(args.client, args.url, registries, config.server.default_upstream, args.output, args.no_fallback)
        if args.client == "docker" and args.no_fallback:
            host = args.url.split("://", 1)[-1].rstrip("/")
            print(DOCKER_NO_FALLBACK_NOTE.format(host=host), end="", file=sys.stderr)
    except ClientConfigError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return 2
    if args.client == "docker" and set(registries) - {DOCKER_HUB}:
        print(
            "mirror: note: Docker's registry-mirrors applies to Docker Hub only; pull other registries "
            "as <mirror>/<registry>/<image>",
            file=sys.stderr,
        )
    sys.stdout.write(text)
    return 0


def _mirror_host(url: str) -> tuple[str, bool]:
    """The mirror's host[:port] and whether it speaks plain HTTP."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ClientConfigError(f"--url must look like http://HOST:PORT or https://HOST[:PORT], got {url!r}")
    return parts.netloc, parts.scheme == "http"


# What `--no-fallback` cannot do for Docker, said where the operator reads it.
DOCKER_NO_FALLBACK_NOTE = (
    "# Docker goes to Docker Hub whenever a registry-mirrors entry fails, and no daemon.json\n"
    "# setting stops it. So this daemon.json names no mirror: pull by the mirror's own name\n"
    "# ({host}/library/alpine:3.19), or block registry-1.docker.io at the firewall.\n"
)


def docker(url: str, registries: list[str], no_fallback: bool = False) -> str:
    """daemon.json: Docker mirrors only Docker Hub, so other registries are not listed."""
    host, plain_http = _mirror_host(url)
    config: dict[str, list[str]] = {} if no_fallback else {"registry-mirrors": [url.rstrip("/")]}
    if plain_http:
        config["insecure-registries"] = [host]
    return json.dumps(config, indent=2) + "\n"


def containerd_hosts(
    url: str, registries: list[str], default_upstream: str, no_fallback: bool = False
) -> dict[str, str]:
    """One hosts.toml per registry, keyed by the directory name under certs.d.

    containerd tries the `[host]` entries, then `server`. With `no_fallback`, `server` is the
    mirror too (the registry's own name as a path below it, for all but the default upstream).
    """
    _mirror_host(url)
    base = url.rstrip("/")
    files = {}
    for registry in registries:
        if not no_fallback:  # `server`: where containerd goes when no mirror answers
            server = DOCKER_HUB_URL if registry == DOCKER_HUB else f"https://{registry}"
            head = f'server = "{server}"\n'
        elif registry == default_upstream:
            head = f'server = "{base}"\n'
        else:
            head = f'server = "{base}/v2/{registry}"\noverride_path = true\n'
        files[registry] = f'{head}\n[host."{base}"]\n  capabilities = ["pull", "resolve"]\n'
    return files


def podman(url: str, registries: list[str], default_upstream: str, no_fallback: bool = False) -> str:
    """registries.conf: the default upstream at the mirror's root, others under a path prefix.

    podman tries the mirrors, then `location`; with `no_fallback` the mirror is the location.
    """
    host, plain_http = _mirror_host(url)
    blocks = []
    for registry in registries:
        location = host if registry == default_upstream else f"{host}/{registry}"
        if no_fallback:
            block = f'[[registry]]\nprefix = "{registry}"\nlocation = "{location}"\n'
        else:
            block = f'[[registry]]\nlocation = "{registry}"\n\n[[registry.mirror]]\nlocation = "{location}"\n'
        if plain_http:
            block += "insecure = true\n"
        blocks.append(block)
    return "\n".join(blocks)


def render(
    client: str,
    url: str,
    registries: list[str],
    default_upstream: str,
    output: Path | None,
    no_fallback: bool = False,
) -> str:
    """The text to print; with `output`, the files are written in that directory instead (containerd:
    <registry>/hosts.toml each, as under /etc/containerd/certs.d; Docker: daemon.json; podman:
    registries.conf, as a drop-in for /etc/containers/registries.conf.d/) and what was written is said."""
    if client in ("docker", "podman"):
        text = (
            docker(url, registries, no_fallback)
            if client == "docker"
            else podman(url, registries, default_upstream, no_fallback)
        )
        if output is None:
            return text
        path = output / ("daemon.json" if client == "docker" else "registries.conf")
        output.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return f"wrote {path}\n"
    files = containerd_hosts(url, registries, default_upstream, no_fallback)
    if output is not None:
        for registry, text in files.items():
            (output / registry).mkdir(parents=True, exist_ok=True)
            (output / registry / "hosts.toml").write_text(text)
        return "".join(f"wrote {output / registry / 'hosts.toml'}\n" for registry in files)
    return "\n".join(f"# /etc/containerd/certs.d/{registry}/hosts.toml\n{text}" for registry, text in files.items())
