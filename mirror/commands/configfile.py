"""Which config file a command reads, the same for every command: `--config FILE` (before the
command or after it), else `MIRROR_CONFIG`, else /etc/mirror/config.toml when it exists (where
the systemd unit and the container image keep it), else none: the built-in defaults."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mirror.config import Config, load, unknown_variables

DEFAULT_CONFIG = Path("/etc/mirror/config.toml")
CONFIG_VARIABLE = "MIRROR_CONFIG"
_DEFAULT_TEXT = f"${CONFIG_VARIABLE}, else {DEFAULT_CONFIG} when it exists, else built-in defaults"


def add_config_option(parser: argparse.ArgumentParser, what: str = "the config file `mirror serve` uses") -> None:
    """`--config FILE` after the command too. Unset here, so that it does not undo one given before it."""
    parser.add_argument(
        "--config", type=Path, metavar="FILE", default=argparse.SUPPRESS, help=f"{what}; default: {_DEFAULT_TEXT}"
    )


def add_top_config_option(parser: argparse.ArgumentParser) -> None:
    """`mirror --config FILE COMMAND …`: the option before the command, for every command."""
    parser.add_argument("--config", type=Path, metavar="FILE", help=f"TOML config file; default: {_DEFAULT_TEXT}")


def config_path(given: Path | None, env: Mapping[str, str], default: Path = DEFAULT_CONFIG) -> Path | None:
    """The file to read: `given`, else $MIRROR_CONFIG, else `default` when it exists; None: no file."""
    if given is not None:
        return given
    if named := env.get(CONFIG_VARIABLE):
        return Path(named)
    try:
        return default if default.exists() else None
    except OSError:  # there, but hidden from this user: loading it says so, naming it
        return default


def config_source(path: Path | None) -> str:
    """Which file the config was loaded from, in words (`mirror config`, `mirror doctor`)."""
    if path is None:
        return f"built-in defaults (no --config, ${CONFIG_VARIABLE} or {DEFAULT_CONFIG})"
    return f"loaded from {path}"


def load_config(path: Path | None) -> Config:
    """The config a command runs with: the file, then the environment."""
    config = load(path, env=os.environ)
    warn_unknown_variables(config)
    return config


def warn_unknown_variables(config: Config) -> None:
    """A MIRROR_* variable that sets nothing is most likely a typo: say so, on stderr (the journal)."""
    for line in unknown_variables(os.environ, list(config.upstreams)):
        print(f"mirror: warning: {line}", file=sys.stderr)
