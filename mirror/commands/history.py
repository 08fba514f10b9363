"""`mirror history IMAGE[:TAG]`: which digests a tag pointed to, and when (the tag journal)."""

from __future__ import annotations

import argparse
import json
import sys

from mirror.cache.directory import CacheDirectory
from mirror.cache.journal import format_history, history_rows
from mirror.commands.configfile import add_config_option
from mirror.config import Config
from mirror.registry.errors import RegistryError
from mirror.registry.reference import repository_and_tag


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    history = commands.add_parser("history", help="the digests a tag pointed to over time, as the mirror saw them")
    history.add_argument("image", metavar="IMAGE[:TAG]", help="alpine:3.19, or a repository for all its tags")
    add_config_option(history)
    history.add_argument("--json", action="store_true", help="print JSON instead of a table")
    history.set_defaults(run=show_history)


def show_history(args: argparse.Namespace, config: Config) -> int:
    try:
        upstream, repository, tag = repository_and_tag(args.image, config.server.default_upstream)
    except RegistryError as exc:
        print(f"mirror history: {exc.message}", file=sys.stderr)
        return 2
    if not CacheDirectory.exists(config.cache.directory):
        print(f"mirror history: no cache at {config.cache.directory}", file=sys.stderr)
        return 1
    cache = CacheDirectory.open(config.cache.directory)
    try:
        rows = history_rows(cache, upstream, repository, tag)
    finally:
        cache.close()
    sys.stdout.write(json.dumps(rows, indent=2) + "\n" if args.json else format_history(rows))
    return 0
