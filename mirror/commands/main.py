"""Command line: parse arguments, load the config once, build the app, run uvicorn."""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from uvicorn.config import STARTUP_FAILURE

from mirror import __version__
from mirror.cache import inventory, maintenance
from mirror.cache.directory import CacheDirectory
from mirror.cache.format import CacheFormatError
from mirror.commands import archive, changes, clientconfig, credentials, doctor, prefetch
from mirror.commands.owner import act_as_owner
from mirror.composition import Mirror
from mirror.config import DOCKER_HUB, Config, ConfigError, config_hash, load, render, unknown_variables
from mirror.http.assembly import assemble
from mirror.http.reload import read_files
from mirror.registry.reference import repository_named


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
    serve.add_argument(
        "--offline", action="store_true", help="for this run, dial no upstream: serve only what is cached"
    )
    client = commands.add_parser("client-config", help="print Docker, containerd or podman settings for this mirror")
    client.add_argument("client", choices=["docker", "containerd", "podman"])
    client.add_argument(
        "--url", required=True, help="the mirror's URL as clients reach it, e.g. http://mirror.lan:5000"
    )
    client.add_argument(
        "--registry",
        action="append",
        metavar="HOST",
        help="registry to mirror (repeatable; default: the upstreams in --config, else docker.io)",
    )
    client.add_argument("--config", type=Path, help="mirror config file, for its upstreams")
    client.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="write the files in DIR instead of printing them: DIR/<registry>/hosts.toml, daemon.json, registries.conf",
    )
    client.add_argument(
        "--no-fallback",
        action="store_true",
        help="settings that never send the client to the registry itself when the mirror refuses",
    )
    for name, text in [
        ("config", "print the effective config (file, environment and defaults), secrets masked"),
        ("gc", "remove stale temp files, invalid files and orphaned metadata"),
        ("verify", "re-hash every cached blob and remove those that do not match"),
        ("stats", "print the cache statistics as a table"),
    ]:
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", type=Path, help="the config file `mirror serve` uses")
        if name == "stats":
            command.add_argument("--fleet", action="store_true", help="every replica of the fleet, and its totals")
        if name == "config":
            command.add_argument(
                "--check", type=Path, metavar="FILE", help="validate FILE (and the files it names) without running"
            )
    warm = commands.add_parser("prefetch", help="warm the cache with images, through the running mirror")
    warm.add_argument("images", nargs="*", metavar="IMAGE", help="e.g. alpine:3.19 or ghcr.io/org/app:1.0")
    warm.add_argument("--file", type=Path, help="a file with one image per line (# comments allowed)")
    warm.add_argument("--platform", action="append", metavar="OS/ARCH", help="platforms to fetch (default linux/amd64)")
    warm.add_argument("--all-platforms", action="store_true", help="fetch every platform of an index")
    warm.add_argument("--config", type=Path, help="the config file `mirror serve` uses (for its address)")
    warm.add_argument("--url", help="the mirror's URL (default: from the config's listen address)")
    changes.add_parsers(commands)
    credentials.add_parser(commands)
    doctor.add_parser(commands)
    ls = commands.add_parser("ls", help="list cached images: tags, digests, sizes, last pull, platforms")
    ls.add_argument("repository", nargs="?", help="only this repository, as Docker reads it (alpine, ghcr.io/org/app)")
    ls.add_argument("--config", type=Path, help="the config file `mirror serve` uses")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    archive.add_commands(commands)
    return parser


def prefetch_images(args: argparse.Namespace, config: Config) -> int:
    images = list(args.images)
    if args.file is not None:
        lines = args.file.read_text().splitlines()
        images += [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    if not images:
        print("mirror prefetch: name at least one image, or --file", file=sys.stderr)
        return 2
    url = args.url or f"http://{config.local_address}"
    platforms = None if args.all_platforms else set(args.platform or ["linux/amd64"])
    return prefetch.run(url, images, platforms)


def list_cached(args: argparse.Namespace, config: Config) -> int:
    if not CacheDirectory.exists(config.cache.directory):
        hint = "" if args.config else " (give it the config `mirror serve` uses: --config FILE)"
        print(f"mirror ls: no cache at {config.cache.directory}{hint}", file=sys.stderr)
        return 1
    only = repository_named(args.repository, config.server.default_upstream) if args.repository else None
    cache = CacheDirectory.open(config.cache.directory)
    try:
        rows = inventory.list_images(cache, only, inventory.pinned_digests(cache, config.pins))
    finally:
        cache.close()
    sys.stdout.write(json.dumps(rows, indent=2) + "\n" if args.json else inventory.format_rows(rows))
    return 0


def server_stats(config: Config, scope: str | None = None) -> dict[str, object] | None:
    """The running server's /stats, or None when it does not answer."""
    params = {"scope": scope} if scope else None
    try:
        response = httpx.get(
            changes.local_url(config, "/stats"),
            params=params,
            auth=changes.admin_auth(),
            timeout=2,
            trust_env=False,
            verify=False,  # our own server on this host, maybe with a certificate for another name
        )
    except httpx.HTTPError:
        return None
    if response.status_code in (401, 403):
        raise SystemExit(
            f"mirror stats: the server wants an admin login: set {changes.ADMIN_CREDENTIALS}=user:password"
        )
    return {"source": "server", **response.json()} if response.status_code == 200 else None


def stats_rows(values: dict[str, object], prefix: str = "") -> list[tuple[str, str]]:
    """Nested counters as `upstreams.docker.io.requests  12` lines: no Python reprs, `-` for none."""
    rows: list[tuple[str, str]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += stats_rows(value, name + ".")
        elif isinstance(value, list):
            rows.append((name, ", ".join(map(str, value)) or "-"))
        elif isinstance(value, float):
            rows.append((name, f"{value:.3f}".rstrip("0").rstrip(".")))
        else:
            rows.append((name, "-" if value is None else str(value).lower() if isinstance(value, bool) else str(value)))
    return rows


def fleet_table(config: Config) -> int:
    """`mirror stats --fleet`: one line per replica, then the totals."""
    values = server_stats(config, "fleet")
    if values is None or values.get("scope") != "fleet":
        print("mirror stats --fleet: no fleet here (no server answers, or it has no [fleet])", file=sys.stderr)
        return 1
    print(f"redis {values['redis']}")
    rows = [["REPLICA", "BLOBS", "BYTES", "REQUESTS", "HIT RATIO"]]
    for r in values["replicas"]:  # type: ignore[attr-defined]  # a list, from JSON
        ratio = r.get("hit_ratio")
        rows.append(
            [
                r["peer_url"],
                str(r.get("blobs")),
                str(r.get("bytes")),
                str(r.get("requests")),
                "-" if ratio is None else f"{ratio:.1%}",
            ]
        )
    totals = values["totals"]
    rows.append(["total", str(totals["blobs"]), str(totals["bytes"]), str(totals["requests"]), ""])  # type: ignore[index]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    sys.stdout.write(
        "".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows)
    )
    return 0


def maintain(command: str, config: Config) -> int:
    if command == "stats":
        rows = stats_rows(server_stats(config) or maintenance.offline_stats(config))
        width = max(len(key) for key, _ in rows)
        sys.stdout.write("".join(f"{key.ljust(width)}  {value}\n" for key, value in rows))
        return 0
    report = maintenance.gc(config) if command == "gc" else maintenance.verify(config)
    print(f"{command}: checked {report.checked}, removed {report.removed} ({report.removed_bytes} bytes)")
    return 0


def client_config(args: argparse.Namespace) -> int:
    config = load(args.config, env=os.environ)
    registries = args.registry or list(config.upstreams)
    try:
        text = clientconfig.render(
            args.client, args.url, registries, config.server.default_upstream, args.output, args.no_fallback
        )
        if args.client == "docker" and args.no_fallback:
            host = args.url.split("://", 1)[-1].rstrip("/")
            print(clientconfig.DOCKER_NO_FALLBACK_NOTE.format(host=host), end="", file=sys.stderr)
    except clientconfig.ClientConfigError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return 2
    if args.client == "docker" and set(registries) - {DOCKER_HUB}:
        print(
            "mirror: note: Docker's registry-mirrors applies to Docker Hub only; pull other registries "
            "as <mirror>/<registry>/<image>",
            file=sys.stderr,
        )
    sys.stdout.write(text)
    return 0


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


def check_config(path: Path) -> int:
    """What a start or a SIGHUP would make of the file: loaded, and the files it names read."""
    config = load(path, env=os.environ)  # a ConfigError ends in one line naming the key (main)
    read_files(config)
    print(f"{path}: ok (config {config_hash(config)})")
    return 0


def raise_open_files() -> None:
    """Every client connection, upstream connection and open blob is a file: take the whole hard
    limit. systemd's unit sets 65536; a container inherits its runtime's soft limit, often 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logging.getLogger(__name__).warning("open files stay limited to %d: %s", soft, exc)
            return
        logging.getLogger(__name__).info("open files: limit raised from %d to %s", soft, hard)


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"mirror: config error: {exc}", file=sys.stderr)
        return 2
    except CacheFormatError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return 2


# Commands that write in the cache (or the login keys' directory) while the service may be running.
WRITERS = frozenset({"import", "credentials", "pin", "unpin", "rm", "gc", "verify"})


def as_the_files_owner(args: argparse.Namespace, config: Config) -> None:
    """Make the files the command writes its directory owner's (mirror.commands.owner)."""
    if args.command == "credentials":
        if config.auth.login_keys is not None:
            act_as_owner(config.auth.login_keys.parent, args.command)
        return
    act_as_owner(config.cache.directory, args.command)


def warn_unknown_variables(config: Config) -> None:
    """A MIRROR_* variable that sets nothing is most likely a typo: say so, on stderr (the journal)."""
    for line in unknown_variables(os.environ, list(config.upstreams)):
        print(f"mirror: warning: {line}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.command == "client-config":
        return client_config(args)
    if args.command == "serve":

        def load_again() -> Config:
            return load(args.config, listen=args.listen, cache_dir=args.cache_dir, offline=args.offline, env=os.environ)

        config = load_again()
        warn_unknown_variables(config)
        return serve(config, load_again)
    if args.command == "config" and args.check is not None:
        return check_config(args.check)
    if args.command == "doctor":
        return doctor.run(args)
    config = load(args.config, env=os.environ)
    warn_unknown_variables(config)
    if args.command in WRITERS:
        as_the_files_owner(args, config)
    if args.command == "prefetch":
        return prefetch_images(args, config)
    if args.command in ("export", "import"):
        return archive.main(args, config)
    if args.command == "credentials":
        return credentials.run(args, config)
    if args.command == "rm":
        return changes.remove(args, config)
    if args.command in ("pin", "unpin"):
        return changes.pin(args, config)
    if args.command == "ls":
        return list_cached(args, config)
    if args.command == "config":
        sys.stdout.write(render(config))
        return 0
    if args.command == "stats" and args.fleet:
        return fleet_table(config)
    return maintain(args.command, config)
