"""Command line: each command's module registers its parser; the config file is found once
(`mirror.commands.configfile`), loaded once, and handed to the command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from mirror import __version__
from mirror.cache.format import CacheFormatError
from mirror.commands import (
    archive,
    changes,
    clientconfig,
    credentials,
    directory,
    doctor,
    history,
    prefetch,
    serve,
    showconfig,
    stats,
)
from mirror.commands.configfile import add_top_config_option, config_path, load_config
from mirror.commands.owner import act_as_owner
from mirror.config import Config, ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirror", description="A pull-through caching mirror for container registries."
    )
    parser.add_argument("--version", action="version", version=f"mirror {__version__}")
    add_top_config_option(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(commands)
    clientconfig.add_parser(commands)
    showconfig.add_parser(commands)
    directory.add_parsers(commands)  # ls, gc, verify
    history.add_parser(commands)
    stats.add_parser(commands)
    prefetch.add_parser(commands)
    changes.add_parsers(commands)  # rm, pin, unpin
    credentials.add_parser(commands)
    doctor.add_parser(commands)
    archive.add_parsers(commands)  # export, import
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config = config_path(args.config, os.environ)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"mirror: config error: {exc}", file=sys.stderr)
        return 2
    except CacheFormatError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return 2


# Commands that write in the cache (or the login keys' directory) while the service may be running.
WRITERS = frozenset({"import", "credentials", "pin", "unpin", "rm", "gc", "verify", "tag", "history"})


def as_the_files_owner(args: argparse.Namespace, config: Config) -> None:
    """Make the files the command writes its directory owner's (mirror.commands.owner)."""
    if args.command == "credentials":
        if config.auth.login_keys is not None:
            act_as_owner(config.auth.login_keys.parent, args.command)
        return
    act_as_owner(config.cache.directory, args.command)


def run(args: argparse.Namespace) -> int:
    """The command named; all but the four that load the config themselves get it loaded here."""
    if args.command == "serve":
        return serve.run(args)  # with its flags, and again on SIGHUP
    if args.command == "client-config":
        return clientconfig.run(args)
    if args.command == "config" and args.check is not None:
        return showconfig.check(args.check)
    if args.command == "doctor":
        return doctor.run(args)  # a config that does not load is one of its findings
    config = load_config(args.config)
    if args.command in WRITERS:
        as_the_files_owner(args, config)
    command: Callable[[argparse.Namespace, Config], int] = args.run
    return command(args, config)
