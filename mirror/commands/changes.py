"""`mirror rm` and `mirror pin`/`unpin`: through the running server when there is one, so that it
acts on what it holds in memory too; on the cache directory otherwise."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx

from mirror.cache.directory import CacheDirectory
from mirror.cache.pins import NotCached, PinError, PinnedError, refuse_pinned
from mirror.cache.pins import pin as pin_images
from mirror.cache.pins import unpin as unpin_images
from mirror.cache.removal import RemovalError, apply_to_directory, parse_target, plan_removal
from mirror.commands.configfile import add_config_option
from mirror.config import Config
from mirror.http.admin import Pinned, Removed, removed
from mirror.registry.mediatypes import DEFAULT_PLATFORM, is_platform

ADMIN_CREDENTIALS = "MIRROR_ADMIN_CREDENTIALS"  # user:password for a server with admin_htpasswd


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rm = commands.add_parser("rm", help="remove images, manifests or blobs from the cache")
    rm.add_argument(
        "targets", nargs="+", metavar="IMAGE|DIGEST", help="alpine:3.19, ghcr.io/org/app@sha256:…, sha256:…"
    )
    rm.add_argument("--blobs", action="store_true", help="also the layers and configs nothing else kept names")
    rm.add_argument("--force", action="store_true", help="also what a pin keeps (a pinned image is refused otherwise)")
    add_config_option(rm)
    rm.set_defaults(run=remove)
    texts = (
        ("pin", "never evict these images (fetched through the running server when not cached)"),
        ("unpin", "let these images be evicted again"),
    )
    for name, text in texts:
        command = commands.add_parser(name, help=text)
        command.add_argument("targets", nargs="+", metavar="IMAGE", help="alpine:3.19, ghcr.io/org/app@sha256:…")
        if name == "pin":
            platforms = command.add_mutually_exclusive_group()
            platforms.add_argument(
                "--platform",
                action="append",
                metavar="OS/ARCH",
                help=f"platforms of an index to fetch and pin (default {DEFAULT_PLATFORM})",
            )
            platforms.add_argument("--all-platforms", action="store_true", help="every platform of an index")
        add_config_option(command)
        command.set_defaults(run=pin)


def pin(args: argparse.Namespace, config: Config) -> int:
    """`mirror pin` / `mirror unpin`."""
    unpin = args.command == "unpin"
    platforms = None if unpin else args.platform
    if platforms is not None and not all(is_platform(p) for p in platforms):
        print(f"mirror pin: expected platforms like linux/arm64, got {', '.join(platforms)}", file=sys.stderr)
        return 2
    try:
        done = pin_through_server_or_directory(
            config,
            args.targets,
            unpin=unpin,
            fetch=not unpin,
            platforms=platforms,
            all_platforms=not unpin and args.all_platforms,
        )
    except RemovalError as exc:
        print(f"mirror {args.command}: {exc}", file=sys.stderr)
        return 2
    except PinError as exc:
        print(f"mirror {args.command}: {exc}", file=sys.stderr)
        return 1
    for name in done:
        print(f"{args.command}ned {name}")
    return 0


def pin_through_server_or_directory(
    config: Config,
    names: list[str],
    *,
    unpin: bool = False,
    fetch: bool = False,
    platforms: list[str] | None = None,
    all_platforms: bool = False,
) -> list[str]:
    """Pin or unpin images: through the running server, else in the cache directory; the names done.
    With `fetch`, the server fetches what is not cached first (an index's `platforms`, default
    linux/amd64, or all); without a server only what is cached can be pinned."""
    command = "unpin" if unpin else "pin"
    targets = [parse_target(text) for text in names]
    payload: dict[str, object] = {"targets": names, "unpin": unpin, "fetch": fetch}
    if platforms:
        payload["platforms"] = platforms
    if all_platforms:
        payload["all_platforms"] = True
    timeout = httpx.Timeout(60, read=None) if fetch else 60  # a fetch takes as long as the image does
    answer: Pinned | None = through_server(config, "/api/pin", payload, command, timeout=timeout)
    if answer is not None:
        return answer["unpinned"] if unpin else answer["pinned"]
    if not CacheDirectory.exists(config.cache.directory):
        raise PinError(f"no cache at {config.cache.directory}")
    cache = CacheDirectory.open(config.cache.directory)
    try:
        if unpin:
            return unpin_images(cache, targets)
        chosen = None if all_platforms or not platforms else tuple(platforms)
        return [made.name for made in pin_images(cache, targets, config.cache.max_size, [], chosen)]
    except NotCached as exc:
        if not fetch:
            raise
        raise PinError(
            f"{exc.what} is not cached, and no server answers at {config.local_address} to fetch it: "
            "start `mirror serve`, then pin it (or pull it first)"
        ) from None
    finally:
        cache.close()


def remove(args: argparse.Namespace, config: Config) -> int:
    try:
        targets = [parse_target(text) for text in args.targets]
    except RemovalError as exc:
        print(f"mirror rm: {exc}", file=sys.stderr)
        return 2
    payload = {"targets": args.targets, "blobs": args.blobs, "force": args.force}
    summary: Removed | None = through_server(config, "/api/rm", payload, "rm")
    if summary is None:
        if not CacheDirectory.exists(config.cache.directory):
            print(f"mirror rm: no cache at {config.cache.directory}", file=sys.stderr)
            return 1
        cache = CacheDirectory.open(config.cache.directory)
        try:
            removal = plan_removal(cache, targets, args.blobs)
            if not args.force:
                refuse_pinned(cache, removal)
            apply_to_directory(cache, removal)
        except PinnedError as exc:
            print(f"mirror rm: {exc}", file=sys.stderr)
            return 1
        finally:
            cache.close()
        summary = removed(removal)
    for kind, items in (("tag", summary["tags"]), ("manifest", summary["manifests"]), ("blob", summary["blobs"])):
        for item in items:
            print(f"removed {kind} {item}")
    for text in summary["unknown"]:
        print(f"not cached: {text}", file=sys.stderr)
    return 1 if summary["unknown"] and len(summary["unknown"]) == len(targets) else 0


def through_server(
    config: Config, path: str, payload: dict[str, object], command: str, *, timeout: float | httpx.Timeout = 60
) -> Any:
    """The server's answer (JSON, as `mirror.http.admin` declares it), or None when no server answers
    at the config's address."""
    try:
        response = ask_server(config, "POST", path, timeout=timeout, json=payload)
    except httpx.TransportError:
        return None
    if response.status_code == 401:
        raise SystemExit(f"mirror {command}: the server wants an admin login: set {ADMIN_CREDENTIALS}=user:password")
    if response.status_code != 200:
        try:
            message = response.json()["errors"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            message = response.text[:300]
        raise SystemExit(f"mirror {command}: {message}")
    return response.json()


def admin_auth() -> tuple[str, str] | None:
    """The admin login for the running server, from MIRROR_ADMIN_CREDENTIALS=user:password."""
    user, _, password = os.environ.get(ADMIN_CREDENTIALS, "").partition(":")
    return (user, password) if user else None


def ask_server(
    config: Config, method: str, path: str, *, timeout: float | httpx.Timeout, **options: Any
) -> httpx.Response:
    """A request to the running server on this host, with the admin login of the environment."""
    return httpx.request(
        method,
        local_url(config, path),
        auth=admin_auth(),
        timeout=timeout,
        trust_env=False,
        verify=False,  # our own server on this host, maybe with a certificate for another name
        **options,
    )


def local_url(config: Config, path: str) -> str:
    """The running server on this host, as its own commands reach it (https when it serves TLS)."""
    return f"{'https' if config.server.tls_cert else 'http'}://{config.local_address}{path}"
