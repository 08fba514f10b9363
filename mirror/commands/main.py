"""Command line: each command's module registers its parser; the config file is found once
(`mirror.commands.configfile`), loaded once, and handed to the command."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType

from mirror import __version__
from mirror.cache.format import CacheFormatError
from mirror.commands.configfile import add_top_config_option, config_path, load_config
from mirror.commands.owner import act_as_owner
from mirror.config import Config, ConfigError
from mirror.http.lean import import_without_command_lines

# The module of `mirror.commands` that registers each command, in `mirror --help`'s order.
COMMANDS = {
    "serve": "serve",
    "client-config": "clientconfig",
    "config": "showconfig",
    "ls": "directory",
    "gc": "directory",
    "verify": "directory",
    "history": "history",
    "tag": "history",
    "stats": "stats",
    "prefetch": "prefetch",
    "rm": "changes",
    "pin": "changes",
    "unpin": "changes",
    "credentials": "credentials",
    "doctor": "doctor",
    "export": "archive",
    "import": "archive",
}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"mirror.commands.{COMMANDS[name]}")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser: every command's, unless `argv` names the server, which then
    loads no other command's code (a lighter server: about 0.7 MiB resident)."""
    parser = argparse.ArgumentParser(
        prog="mirror", description="A pull-through caching mirror for container registries."
    )
    parser.add_argument("--version", action="version", version=f"mirror {__version__}")
    add_top_config_option(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    serving = argv is not None and command_word(argv) == "serve"
    if serving:
        import_without_command_lines()  # before the server's code imports httpx and uvicorn
    modules = ["serve"] if serving else COMMANDS.values()
    for name in dict.fromkeys(modules):
        module = importlib.import_module(f"mirror.commands.{name}")
        register = getattr(module, "add_parsers", None) or module.add_parser
        register(commands)
    return parser


def command_word(argv: list[str]) -> str | None:
    """The command `argv` names: its first word that is no option and no --config's value."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
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
    if args.command in ("serve", "client-config", "doctor"):
        # serve: with its flags, and again on SIGHUP; doctor: a config that does not load is a finding
        code: int = command_module(args.command).run(args)
        return code
    if args.command == "config" and args.check is not None:
        checked: int = command_module("config").check(args.check)
        return checked
    config = load_config(args.config)
    if args.command in WRITERS:
        as_the_files_owner(args, config)
    command: Callable[[argparse.Namespace, Config], int] = args.run
    return command(args, config)
