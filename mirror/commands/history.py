"""The tag journal's commands: `mirror history IMAGE[:TAG]` (which digests a tag pointed to, and
when) and `mirror tag accept IMAGE:TAG` (an immutable tag takes the upstream's new digest)."""

from __future__ import annotations

import argparse
import json
import sys

from mirror.cache.directory import CacheDirectory
from mirror.cache.journal import format_history, history_rows
from mirror.cache.removal import RemovalError, parse_target
from mirror.commands.changes import through_server
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
    tag = commands.add_parser("tag", help="immutable tags: take the upstream's new digest")
    add_config_option(tag)  # before the action too, as `credentials` takes it
    actions = tag.add_subparsers(dest="action", required=True)
    accept = actions.add_parser("accept", help="the tags serve the upstream's newest digest from now on")
    accept.add_argument("targets", nargs="+", metavar="IMAGE:TAG", help="alpine:3.19, ghcr.io/org/app:1.0")
    add_config_option(accept)
    accept.set_defaults(run=accept_tags)


def accept_tags(args: argparse.Namespace, config: Config) -> int:
    """Through the running server (which also tells the fleet); without one, in the cache directory:
    the tag's answers go, and the next pull takes what the upstream has."""
    try:
        targets = [parse_target(text) for text in args.targets]
    except RemovalError as exc:
        print(f"mirror tag accept: {exc}", file=sys.stderr)
        return 2
    if any(target.is_digest or target.upstream is None or target.repository is None for target in targets):
        print("mirror tag accept: name tags (alpine:3.19), not digests", file=sys.stderr)
        return 2
    answer = through_server(config, "/api/tag-accept", {"targets": args.targets}, "tag accept")
    if answer is None:
        if not CacheDirectory.exists(config.cache.directory):
            print(f"mirror tag accept: no server answers, and no cache at {config.cache.directory}", file=sys.stderr)
            return 1
        cache = CacheDirectory.open(config.cache.directory)
        try:
            for target in targets:
                assert target.upstream is not None and target.repository is not None
                gone = cache.metadata.forget_tag_if(
                    target.upstream, target.repository, target.reference, lambda _: True
                )
                print(f"{target.text}: " + ("the next pull takes the upstream's digest" if gone else "not cached"))
        finally:
            cache.close()
        return 0
    for name, digest in answer["accepted"].items():
        print(f"{name}: " + (f"serves {digest} from now on" if digest else "never seen here"))
    return 0 if all(answer["accepted"].values()) else 1


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
