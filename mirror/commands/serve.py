"""`mirror serve`: load the config, build the mirror and its server (`mirror.http.assembly`), run uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import socket
import sys
from collections.abc import Callable

from uvicorn.config import STARTUP_FAILURE

from mirror.commands.configfile import add_config_option, warn_unknown_variables
from mirror.composition import Mirror
from mirror.config import Config, load
from mirror.http.assembly import assemble

log = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the mirror")
    add_config_option(serve, "TOML config file")
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 0.0.0.0:5000)")
    serve.add_argument("--cache-dir", metavar="DIR", help="cache directory (default ./mirror-cache)")
    serve.add_argument(
        "--offline", action="store_true", help="for this run, dial no upstream: serve only what is cached"
    )


def run(args: argparse.Namespace) -> int:
    """The config from the file, the environment and the flags, loaded again the same way on SIGHUP."""

    def load_again() -> Config:
        return load(args.config, listen=args.listen, cache_dir=args.cache_dir, offline=args.offline, env=os.environ)

    config = load_again()
    warn_unknown_variables(config)
    return serve(config, load_again)


def serve(config: Config, reload_config: Callable[[], Config] | None = None) -> int:
    """Run the server; `reload_config` loads the config again, as at start-up, on SIGHUP."""
    logging.basicConfig(level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    raise_open_files()
    try:
        assembly = assemble(Mirror(config))
    except OSError as exc:
        print(f"mirror: cannot open the cache in {config.cache.directory}: {exc}", file=sys.stderr)
        return 1
    server = assembly.server(reload_config)
    try:
        sockets = [both_families(config.server.port)] if config.server.host == "::" else None
    except OSError as exc:
        print(f"mirror: cannot listen on {config.listen}: {exc.strerror}", file=sys.stderr)
        return STARTUP_FAILURE
    server.run(sockets=sockets)
    return 0 if server.started else STARTUP_FAILURE


def raise_open_files() -> None:
    """Every client connection, upstream connection and open blob is a file: take the whole hard
    limit. systemd's unit sets 65536; a container inherits its runtime's soft limit, often 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("open files stay limited to %d: %s", soft, exc)
            return
        log.info("open files: limit raised from %d to %s", soft, hard)


def both_families(port: int) -> socket.socket:
    """`[::]:PORT` for IPv6 and IPv4 clients alike: asyncio would make it IPv6-only (IPV6_V6ONLY)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
    except OSError:
        sock.close()
        raise
    return sock
