"""Command line: parse arguments, load the config once, build the app, run uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from mirror import __version__
from mirror.app import create_app
from mirror.config import Config, ConfigError, load


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirror", description="A pull-through caching mirror for container registries."
    )
    parser.add_argument("--version", action="version", version=f"mirror {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the mirror")
    serve.add_argument("--config", type=Path, help="TOML config file (default: built-in defaults)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 0.0.0.0:5000)")
    serve.add_argument("--cache-dir", metavar="DIR", help="cache directory (default ./mirror-cache)")
    return parser


def serve(config: Config) -> int:
    logging.basicConfig(level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uvicorn.run(
        create_app(config),
        host=config.server.host,
        port=config.server.port,
        log_level=config.server.log_level,
        log_config=None,
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config, listen=args.listen, cache_dir=args.cache_dir)
    except ConfigError as exc:
        print(f"mirror: config error: {exc}", file=sys.stderr)
        return 2
    return serve(config)
