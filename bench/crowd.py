"""Scenario 12: a crowd (issue 26): 200 clients at once, 20 images, half cached, half cold.

At the scenario's start the upstream gets `--crowd-images` images (`library/crowd-NN:v1`,
5 layers each, sizes spread over `--crowd-layer-mb`). For each target, on a fresh cache: the
first half of the images is pulled once (WAN lifted, as scenario 3 primes), then
`--crowd-clients` clients start together over `--crowd-workers` processes, client n pulling
image n mod images: as many clients on each image, so each cold image has several clients at
once (single flight matters) and the warm half must cost the upstream nothing. Per target:
pull-time percentiles, failures, upstream bytes ÷ the distinct cold images, peak RSS and open
files of its process tree, and how far apart the clients started.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench import netns, procs, puller, seed
from bench.context import Context, UpstreamMeter, first_errors, guard, wall
from bench.seed import Image

LAYERS = 5
START_SPREAD_LIMIT_S = 2.0  # the clients must all have started within this


def layer_sizes(index: int, low_mib: float, high_mib: float) -> list[int]:
    """Five sizes spread evenly over [low, high] MiB, rotated by the image's index."""
    steps = [low_mib + (high_mib - low_mib) * k / (LAYERS - 1) for k in range(LAYERS)]
    return [int(steps[(index + k) % LAYERS] * 1024 * 1024) for k in range(LAYERS)]


def seed_images(ctx: Context) -> list[Image]:
    low, high = ctx.args.crowd_layer_mb
    pusher = seed.Pusher(ctx.upstream.url)
    try:
        return [
            seed.push_image(
                pusher, ctx.run_dir / "seed", f"library/crowd-{n:02d}", "v1", layer_sizes(n, low, high), seed=1200 + n
            )
            for n in range(ctx.args.crowd_images)
        ]
    finally:
        pusher.close()


def percentile(values: list[float], pct: int) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def _times(results: list[dict[str, Any]]) -> dict[str, float]:
    """Percentiles of the pulls that succeeded (a failure's time is no pull time: failures are counted apart)."""
    seconds = [r["seconds"] for r in results if r["ok"]]
    if not seconds:
        return {}
    return {f"p{pct}_s": percentile(seconds, pct) for pct in (50, 95, 99)} | {"max_s": max(seconds)}


def request_timeout(ctx: Context, images: list[Image]) -> float:
    """Twice the time every client's image takes over the WAN (what direct costs) plus a minute,
    if shorter than --request-timeout: over the shaped link a few of direct's 600 connections
    stalled for good (the upstream logged their responses short, the clients heard nothing more),
    and 600 s of waiting for them made the scenario ten minutes long."""
    if ctx.wan is None:
        return float(ctx.args.request_timeout)
    pulled = ctx.args.crowd_clients * statistics.mean(image.size for image in images)
    expected_s = pulled / netns.rate_bytes_per_s(ctx.args.wan_rate)
    return float(min(ctx.args.request_timeout, 2 * expected_s + 60))


def crowd_job(ctx: Context, target: procs.Target, images: list[Image], clients: int) -> dict[str, Any]:
    job = ctx.image_job(target.url, clients, images[0])
    job["timeout"] = request_timeout(ctx, images)
    job["base_urls"] = target.client_urls
    job["images"] = [{"repository": i.repository, "tag": i.tag, "manifest_digest": i.digest} for i in images]
    return job


def _prime(ctx: Context, target: procs.Target, warm: list[Image]) -> dict[str, Any]:
    """One pull of each warm image, together, WAN lifted; waits until the upstream is quiet."""
    with ctx.wan_rate(None), UpstreamMeter(ctx) as meter:
        results = puller.run_parallel(
            crowd_job(ctx, target, warm, len(warm)), ctx.args.crowd_workers, timeout=ctx.args.scenario_timeout
        )
    out = {
        "ok": all(r["ok"] for r in results) and len(results) == len(warm),
        "wall_s": wall(results),
        "upstream_bytes": meter.result["upstream_bytes"],
    }
    if errors := first_errors(results):
        out["errors"] = errors
    return out


def _upstream_split(meter: UpstreamMeter, warm: list[Image]) -> dict[str, int]:
    """Body bytes the upstream served for the warm images' repositories (should be ~0)."""
    names = tuple(f"/v2/{image.repository}/" for image in warm)
    served = [r for r in meter.requests if r["method"] == "GET" and r["path"].startswith(names)]
    return {"upstream_warm_bytes": sum(r["bytes"] for r in served), "upstream_warm_requests": len(served)}


def _measure(ctx: Context, target: procs.Target, images: list[Image], warm: list[Image]) -> dict[str, Any]:
    clients = ctx.args.crowd_clients
    cold = [image for image in images if image not in warm]
    pid = target.pid
    assert pid is not None
    idle = procs.RssSampler(pid)
    idle.sample()
    job = crowd_job(ctx, target, images, clients)
    with UpstreamMeter(ctx) as meter, procs.RssSampler(pid) as sampler:
        results = puller.run_parallel(job, ctx.args.crowd_workers, timeout=ctx.args.scenario_timeout)
    warm_names = {image.repository for image in warm}
    failed = [r for r in results if not r["ok"]]
    starts = [r["start"] for r in results]
    answered = [r["manifest_at"] for r in results if "manifest_at" in r]
    distinct = sum(image.size for image in cold)
    out: dict[str, Any] = {
        "ok": not failed and len(results) == clients,
        "clients": clients,
        "pulls_ok": len(results) - len(failed),
        "failed": clients - (len(results) - len(failed)),
        **_times(results),
        "warm": _times([r for r in results if r["repository"] in warm_names]),
        "cold": _times([r for r in results if r["repository"] not in warm_names]),
        "wall_s": wall(results),
        "start_spread_s": max(starts) - min(starts),
        # When each client's manifest came back, from the first client's start: a target slow to
        # take 200 connections shows here, not in the start spread.
        "manifest_spread_s": max(answered) - min(starts) if answered else None,
        "bytes_to_clients": sum(r["bytes"] for r in results),
        **meter.result,
        **_upstream_split(meter, warm),
        "distinct_cold_bytes": distinct,
        "idle_rss_MiB": idle.peak_rss_kb / 1024,
        "peak_rss_MiB": sampler.peak_rss_kb / 1024,
        "idle_open_files": idle.peak_open_files,
        "peak_open_files": sampler.peak_open_files,
        "processes": sampler.max_processes,
    }
    out["upstream_x_distinct"] = out["upstream_bytes"] / distinct if distinct else None
    if errors := first_errors(results):
        out["errors"] = errors
    if out["start_spread_s"] > START_SPREAD_LIMIT_S:
        ctx.notes.append(
            f"scenario 12, {target.name}: the clients started {out['start_spread_s']:.2f} s apart "
            f"(more than {START_SPREAD_LIMIT_S:g} s)"
        )
    return out


def s12_crowd(ctx: Context) -> dict[str, Any]:
    started = time.monotonic()
    images = seed_images(ctx)
    warm = images[: len(images) // 2]
    ctx.log(
        f"  seeded {len(images)} images x {LAYERS} layers ({sum(i.size for i in images):,} bytes) "
        f"in {time.monotonic() - started:.1f}s; {len(warm)} primed per target, {len(images) - len(warm)} cold"
    )
    results: dict[str, Any] = {}
    for name, target in ctx.targets.items():

        def run(target: procs.Target = target) -> dict[str, Any]:
            target.start_fresh()
            prime = None
            if target.name != "direct":  # no cache: every pull goes to the upstream anyway
                prime = _prime(ctx, target, warm)
                if not prime["ok"]:
                    return {"ok": False, "error": f"priming pull failed: {prime.get('errors')}", "prime": prime}
            out = _measure(ctx, target, images, warm)
            out["prime"] = prime
            return out

        results[name] = guard(ctx, "12 crowd", name, run)
    results["settings"] = {
        "clients": ctx.args.crowd_clients,
        "images": len(images),
        "warm_images": len(warm),
        "layers": LAYERS,
        "layer_MiB": list(ctx.args.crowd_layer_mb),
        "image_bytes": [image.size for image in images],
        "client_processes": ctx.args.crowd_workers,
        "request_timeout_s": request_timeout(ctx, images),
    }
    return results
