"""`mirror config`: the effective config, secrets masked; `--check FILE`: what a start or a SIGHUP makes of a file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mirror.commands.configfile import add_config_option, config_source
from mirror.config import Config, config_hash, load, render
from mirror.http.reload import read_files


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "config", help="print the effective config (file, environment and defaults), secrets masked"
    )
    add_config_option(command)
    command.add_argument(
        "--check", type=Path, metavar="FILE", help="validate FILE (and the files it names) without running"
    )
    command.set_defaults(run=show)


def show(args: argparse.Namespace, config: Config) -> int:
    """The config as TOML, headed by a comment that says which file it came from (the environment is laid over it)."""
    sys.stdout.write(f"# config: {config_source(args.config)}\n{render(config)}")
    return 0


def check(path: Path) -> int:
    """The file loaded, and the files it names read, as a start or a SIGHUP would."""
    config = load(path, env=os.environ)  # a ConfigError ends in one line naming the key (main)
    read_files(config)
    print(f"{path}: ok (config {config_hash(config)})")
    return 0
