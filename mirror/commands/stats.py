"""`mirror stats`: the running server's counters (else the cache directory's), and `--fleet`: every replica's."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx

from mirror.cache import maintenance
from mirror.commands.changes import ADMIN_CREDENTIALS, ask_server
from mirror.commands.configfile import add_config_option
from mirror.config import Config
from mirror.http.fleet import FleetStats


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser("stats", help="print the cache statistics as a table")
    add_config_option(command)
    command.add_argument("--fleet", action="store_true", help="every replica of the fleet, and its totals")
    command.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    if args.fleet:
        return fleet_table(config)
    rows = stats_rows(server_stats(config) or maintenance.offline_stats(config))
    width = max(len(key) for key, _ in rows)
    sys.stdout.write("".join(f"{key.ljust(width)}  {value}\n" for key, value in rows))
    return 0


def server_stats(config: Config) -> dict[str, object] | None:
    """The running server's /stats, or None when it does not answer."""
    answer = _ask(config, None)
    return None if answer is None else {"source": "server", **answer}


def _ask(config: Config, scope: str | None) -> Any:
    """The running server's /stats (JSON), or None when it does not answer."""
    params = {"scope": scope} if scope else None
    try:
        response = ask_server(config, "GET", "/stats", timeout=2, params=params)
    except httpx.HTTPError:
        return None
    if response.status_code in (401, 403):
        raise SystemExit(f"mirror stats: the server wants an admin login: set {ADMIN_CREDENTIALS}=user:password")
    return response.json() if response.status_code == 200 else None


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
    values: FleetStats | None = _ask(config, "fleet")
    if values is None or values.get("scope") != "fleet":  # no fleet there: the server's own /stats
        print("mirror stats --fleet: no fleet here (no server answers, or it has no [fleet])", file=sys.stderr)
        return 1
    print(f"redis {values['redis']}")
    rows = [["REPLICA", "BLOBS", "BYTES", "REQUESTS", "HIT RATIO"]]
    for r in values["replicas"]:
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
    rows.append(["total", str(totals["blobs"]), str(totals["bytes"]), str(totals["requests"]), ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    sys.stdout.write(
        "".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows)
    )
    return 0
