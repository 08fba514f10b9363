"""Scenario 4's load: h2load (Debian `nghttp2-client`), a C++ HTTP/1.1 load generator.

A Python client costs about as much CPU per request as the servers it measures (35 µs,
measured), so on 2 cores it, not the server, set the pace. h2load costs a few µs.
It counts status codes and body bytes but does not hash bodies: `run` checks that every
body had the manifest's length, and the scenario fetches one body and checks its digest.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import time
from typing import Any

_FINISHED_RE = re.compile(r"^finished in ([\d.]+)(ms|s),", re.M)
_SUCCEEDED_RE = re.compile(r"^requests: .* (\d+) succeeded, (\d+) failed, (\d+) errored", re.M)
_STATUS_RE = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_DATA_RE = re.compile(r"^traffic: .*\((\d+)\) data", re.M)


def available() -> bool:
    return shutil.which("h2load") is not None


def run(
    url: str, *, requests: int, connections: int, threads: int, headers: dict[str, str], body_size: int, timeout: float
) -> dict[str, Any]:
    """`requests` GETs of `url` over `connections` keep-alive HTTP/1.1 connections."""
    argv = ["h2load", "--h1", "-n", str(requests), "-c", str(connections), "-t", str(max(1, min(threads, connections)))]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = done.stdout
    finished, succeeded, status, data = (r.search(out) for r in (_FINISHED_RE, _SUCCEEDED_RE, _STATUS_RE, _DATA_RE))
    if done.returncode != 0 or not (finished and succeeded and status and data):
        return {"ok": False, "errors": [f"h2load exit {done.returncode}: {(done.stderr or out)[-300:]}"]}
    wall = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    ok_count = int(status[1])
    body_bytes = int(data[1])
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result: dict[str, Any] = {
        "ok": ok_count == requests and body_bytes == requests * body_size,
        "requests_ok": ok_count,
        "requests_failed": requests - ok_count,
        "wall_s": wall,
        "req_per_s": ok_count / wall if wall > 0 else 0.0,
        "body_bytes": body_bytes,
        "client_cpu_s": client_cpu,
        "client_cpu_us_per_request": client_cpu / requests * 1e6,
        "elapsed_s": elapsed,
        "errors": [],
    }
    if body_bytes != requests * body_size:
        result["errors"].append(f"body bytes {body_bytes} != {requests} x {body_size}")
    if ok_count != requests:
        result["errors"].append(f"status codes: {status[0]}")
    return result
