"""What every scenario shares: the run's context, the upstream's meter, a target's guarded run,
and the measured pull (scenarios 1-3, 8 and 10 measure theirs the same way)."""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs, puller
from bench.netns import Wan
from bench.seed import Blob, Image
from bench.signing import SignedImage

MB = 1_000_000


@dataclass
class Context:
    args: Any
    run_dir: Path
    upstream: procs.Upstream
    wan: Wan | None
    image: Image
    targets: dict[str, procs.Target]
    big_blob: Blob | None = None
    rss_blob: Blob | None = None
    accel_image: Image | None = None
    accel_rate: int = 0  # scenario 8: bytes/s the paced nginx sends per connection
    signed: SignedImage | None = None  # scenario 4's variant: the image's signature and the policy asking for it
    layers_image: Image | None = None  # scenario 11: an image of many small layers behind the paced upstream
    log: Callable[[str], None] = print
    notes: list[str] = field(default_factory=list)

    @contextmanager
    def wan_rate(self, rate: str | None) -> Iterator[None]:
        """Temporarily change (None: lift) the WAN rate, e.g. to prime caches quickly."""
        if self.wan is None:
            yield
            return
        self.wan.set_rate(rate)
        try:
            yield
        finally:
            self.wan.set_rate(self.args.wan_rate)

    def image_job(self, base_url: str, clients: int, image: Image | None = None) -> dict[str, Any]:
        image = image or self.image
        return {
            "kind": "image",
            "base_url": base_url,
            "repository": image.repository,
            "tag": image.tag,
            "manifest_digest": image.digest,
            "clients": clients,
            "timeout": self.args.request_timeout,
        }


class UpstreamMeter:
    """What the upstream (or `origin`, the server in front of it) served during a block: from
    its access log (body bytes, requests) and, with the WAN, from the veth counters (bytes on
    the wire)."""

    def __init__(self, ctx: Context, origin: procs.Origin | None = None) -> None:
        self.ctx = ctx
        self.origin: procs.Origin = origin or ctx.upstream
        self.result: dict[str, Any] = {}
        self.requests: list[dict[str, Any]] = []

    def __enter__(self) -> UpstreamMeter:
        self.mark = self.origin.log_lines()
        self.rx0 = self.ctx.wan.client_rx_bytes() if self.ctx.wan else None
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None:
            self.settle()

    def settle(self, quiet: float = 1.0, limit: float = 120.0) -> None:
        """Wait until the upstream has been quiet for `quiet` s (background fills finish), bounded."""
        deadline = time.monotonic() + limit
        last = (-1, -1)
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            now = (self.origin.log_lines(), self.ctx.wan.client_rx_bytes() if self.ctx.wan else 0)
            if now != last:
                last, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet:
                break
            time.sleep(0.2)
        self.requests = requests = self.origin.requests_since(self.mark)
        self.result = {
            "upstream_requests": len(requests),
            "upstream_blob_gets": sum(1 for r in requests if r["method"] == "GET" and "/blobs/" in r["path"]),
            "upstream_manifest_requests": sum(1 for r in requests if "/manifests/" in r["path"]),
            "upstream_bytes": sum(r["bytes"] for r in requests if r["method"] == "GET"),
        }
        if self.ctx.wan is not None:
            self.result["upstream_wire_bytes"] = self.ctx.wan.client_rx_bytes() - (self.rx0 or 0)


def wall(results: list[dict[str, Any]]) -> float:
    return float(max(r["end"] for r in results) - min(r["start"] for r in results))


def first_errors(results: list[dict[str, Any]]) -> list[str]:
    return [e for r in results for e in r.get("errors", [])][:5]


def guard(
    ctx: Context, name: str, target: str, fn: Callable[[], dict[str, Any]], *, keep_running: bool = False
) -> dict[str, Any]:
    """Run one target's part of a scenario, a failure its result; then stop the target, unless
    the scenario measures the targets in turns (`keep_running`: it stops them itself)."""
    ctx.log(f"  [{name}] {target} ...")
    started = time.monotonic()
    ok = False
    try:
        out = fn()
        ok = bool(out.get("ok"))
    except Exception as exc:
        ctx.log(f"  [{name}] {target} FAILED: {exc}")
        traceback.print_exc()
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        if target in ctx.targets and not (keep_running and ok):  # nothing left running to compete for the 2 CPUs
            ctx.targets[target].stop()
    ctx.log(
        f"  [{name}] {target} done in {time.monotonic() - started:.1f}s: "
        + ", ".join(f"{k}={_short(v)}" for k, v in out.items() if not isinstance(v, (list, dict)))
    )
    return out


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def pull(
    ctx: Context,
    target: procs.Reachable,
    clients: int,
    meter: UpstreamMeter | None = None,
    image: Image | None = None,
    expected_s: float = 0.0,
) -> dict[str, Any]:
    """`clients` pull `image` from `target` at once; a pull expected to take `expected_s`
    stretches the request and step bounds to twice that plus a minute, if they are shorter."""
    image = image or ctx.image
    job = ctx.image_job(target.url, clients, image)
    job["timeout"] = max(job["timeout"], 2 * expected_s + 60)
    job["base_urls"] = target.client_urls
    meter = meter or UpstreamMeter(ctx)
    with meter:
        results = puller.run_parallel(
            job, ctx.args.workers, timeout=max(ctx.args.scenario_timeout, 2 * expected_s + 60)
        )
    out: dict[str, Any] = {
        "clients": clients,
        "ok": all(r["ok"] for r in results) and len(results) == clients,
        "verified_copies": sum(1 for r in results if r["ok"]),
        "wall_s": wall(results),
        "mean_client_s": statistics.mean(r["seconds"] for r in results),
        "max_client_s": max(r["seconds"] for r in results),
        "bytes_to_clients": sum(r["bytes"] for r in results),
        **meter.result,
    }
    out["upstream_x_image"] = out["upstream_bytes"] / image.size
    out["client_MBps"] = out["bytes_to_clients"] / out["wall_s"] / MB
    if errors := first_errors(results):
        out["errors"] = errors
    return out
