"""`mirror rm IMAGE|DIGEST… [--blobs]`: through the running server when there is one, so that
nothing removed stays answered from its memory; on the cache directory otherwise."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import httpx

from mirror.cache.directory import CacheDirectory
from mirror.cache.removal import RemovalError, apply_to_directory, parse_target, plan_removal
from mirror.config import Config

ADMIN_CREDENTIALS = "MIRROR_ADMIN_CREDENTIALS"  # user:password for a server with admin_htpasswd


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rm = commands.add_parser("rm", help="remove images, manifests or blobs from the cache")
    rm.add_argument(
        "targets", nargs="+", metavar="IMAGE|DIGEST", help="alpine:3.19, ghcr.io/org/app@sha256:…, sha256:…"
    )
    rm.add_argument("--blobs", action="store_true", help="also the layers and configs nothing else kept names")
    rm.add_argument("--config", type=Path, help="the config file `mirror serve` uses")


def remove(args: argparse.Namespace, config: Config) -> int:
    try:
        targets = [parse_target(text) for text in args.targets]
    except RemovalError as exc:
        print(f"mirror rm: {exc}", file=sys.stderr)
        return 2
    summary = _through_server(config, args.targets, args.blobs)
    if summary is None:
        if not CacheDirectory.exists(config.cache.directory):
            print(f"mirror rm: no cache at {config.cache.directory}", file=sys.stderr)
            return 1
        cache = CacheDirectory.open(config.cache.directory)
        try:
            removal = plan_removal(cache, targets, args.blobs)
            apply_to_directory(cache, removal)
        finally:
            cache.close()
        summary = {"source": "directory", **removal.summary()}
    for kind in ("tags", "manifests", "blobs"):
        for item in summary[kind]:  # type: ignore[attr-defined]  # lists, from summary()
            print(f"removed {kind[:-1]} {item}")
    for text in summary["unknown"]:  # type: ignore[attr-defined]  # a list, from summary()
        print(f"not cached: {text}", file=sys.stderr)
    return 1 if summary["unknown"] and len(summary["unknown"]) == len(targets) else 0  # type: ignore[arg-type]


def _through_server(config: Config, targets: list[str], blobs: bool) -> dict[str, object] | None:
    """The server's answer, or None when no server answers at the config's address."""
    scheme = "https" if config.server.tls_cert else "http"
    user, _, password = os.environ.get(ADMIN_CREDENTIALS, "").partition(":")
    try:
        response = httpx.post(
            f"{scheme}://{config.local_address}/api/rm",
            json={"targets": targets, "blobs": blobs},
            auth=(user, password) if user else None,
            timeout=60,
            trust_env=False,
            verify=False,  # our own server on this host, maybe with a certificate for another name
        )
    except httpx.TransportError:
        return None
    if response.status_code == 401:
        raise SystemExit(f"mirror rm: the server wants an admin login: set {ADMIN_CREDENTIALS}=user:password")
    if response.status_code != 200:
        raise SystemExit(f"mirror rm: the server answered {response.status_code}: {response.text[:300]}")
    return {"source": "server", **response.json()}
