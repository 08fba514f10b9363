"""`mirror ls`, `gc` and `verify`: the cache directory itself, read and tidied, whether the server runs or not."""

from __future__ import annotations

import argparse
import json
import sys

from mirror.cache import inventory
from mirror.cache.directory import CacheDirectory
from mirror.commands.configfile import CONFIG_VARIABLE, add_config_option
from mirror.config import Config
from mirror.registry.reference import repository_named


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, text in [
        ("gc", "remove stale temp files, invalid files and orphaned metadata"),
        ("verify", "re-hash every cached blob and remove those that do not match"),
    ]:
        command = commands.add_parser(name, help=text)
        add_config_option(command)
        command.set_defaults(run=maintain)
    ls = commands.add_parser("ls", help="list cached images: tags, digests, sizes, last pull, platforms")
    ls.add_argument("repository", nargs="?", help="only this repository, as Docker reads it (alpine, ghcr.io/org/app)")
    add_config_option(ls)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(run=list_cached)


def list_cached(args: argparse.Namespace, config: Config) -> int:
    if not CacheDirectory.exists(config.cache.directory):
        hint = "" if args.config else f" (give it the config `mirror serve` uses: --config FILE or {CONFIG_VARIABLE})"
        print(f"mirror ls: no cache at {config.cache.directory}{hint}", file=sys.stderr)
        return 1
    only = repository_named(args.repository, config.server.default_upstream) if args.repository else None
    cache = CacheDirectory.open(config.cache.directory)
    try:
        pinned = inventory.pinned_digests(cache, tuple(pin.image for pin in config.pins))
        rows = inventory.list_images(cache, only, pinned)
    finally:
        cache.close()
    sys.stdout.write(json.dumps(rows, indent=2) + "\n" if args.json else inventory.format_rows(rows))
    return 0


def maintain(args: argparse.Namespace, config: Config) -> int:
    """`mirror gc` or `mirror verify`."""
    from mirror.cache import maintenance  # here: `mirror serve` registers this parser, and needs none of it

    report = maintenance.gc(config) if args.command == "gc" else maintenance.verify(config)
    print(f"{args.command}: checked {report.checked}, removed {report.removed} ({report.removed_bytes} bytes)")
    return 0
