"""RESULTS.md from results.json, and the checks of the mirror against its goals (issues 4, 12, 25 and 26)."""

from __future__ import annotations

import math
from typing import Any

from bench import signing

MB = 1_000_000
ACCEL_UPSTREAM_LIMIT = 1.01  # scenario 8: upstream body bytes ÷ image, at most (ranges may overlap a little)
CROWD_UPSTREAM_LIMIT = 1.01  # scenario 12: upstream body bytes ÷ the distinct cold images, at most
SIGNED_SPEED_LIMIT = 0.9  # scenario 4: req/s with a signature policy ÷ without, at least (issue 25)
ORDER = ["mirror", signing.TARGET, "distribution", "drayage", "direct", "nginx"]
LABELS = {signing.TARGET: signing.LABEL}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return "–"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return None
    return a / b


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _targets(results: dict[str, Any]) -> list[str]:
    return sorted(results, key=lambda t: ORDER.index(t) if t in ORDER else 99)


def _failed(entry: dict[str, Any]) -> str | None:
    if "skipped" in entry:
        return f"skipped: {entry['skipped']}"
    if entry.get("error"):
        return f"FAILED: {entry['error']}"[:200]
    return None


def _s1(res: dict[str, Any], meta: dict[str, Any]) -> str:
    mirror = res.get("mirror", {})
    rows = []
    for t in _targets(res):
        e = res[t]
        if (f := _failed(e)) and "wall_s" not in e:
            rows.append([t, f] + [""] * 8)
            continue
        sk = e.get("skopeo", {})
        rows.append(
            [
                t,
                _fmt(e.get("wall_s")),
                _fmt(e.get("upstream_bytes", 0) / MB, 1),
                _fmt(e.get("upstream_x_image"), 3),
                _fmt(e.get("upstream_requests")),
                _fmt(e.get("ok")),
                _fmt(sk.get("wall_s")),
                _fmt(sk.get("upstream_x_image"), 3) + ("" if sk.get("ok", True) else " **FAILED**"),
                _fmt(_ratio(e.get("wall_s"), mirror.get("wall_s"))),
            ]
        )
    return _table(
        [
            "target",
            "wall s",
            "upstream MB",
            "upstream ÷ image",
            "upstream requests",
            "verified",
            "skopeo cold copy s",
            "skopeo upstream ÷ image",
            "wall ÷ mirror wall",
        ],
        rows,
    )


def _s2(res: dict[str, Any], meta: dict[str, Any]) -> str:
    out = ""
    counts = meta["settings"]["cold_clients"]
    for n in counts:
        key = str(n)
        mirror = res.get("mirror", {}).get(key, {})
        rows = []
        for t in _targets(res):
            e = res[t].get(key) if isinstance(res[t], dict) else None
            if not e:
                e = res[t] if "error" in res[t] else {"skipped": "not run"}
            if f := _failed(e):
                rows.append([t, f] + [""] * 7)
                continue
            rows.append(
                [
                    t,
                    _fmt(e.get("wall_s")),
                    f"{e.get('verified_copies')}/{n}",
                    _fmt(e.get("upstream_bytes", 0) / MB, 1),
                    _fmt(e.get("upstream_x_image"), 3),
                    _fmt(e.get("upstream_blob_gets")),
                    _fmt(e.get("client_MBps"), 1),
                    _fmt(_ratio(e.get("wall_s"), mirror.get("wall_s"))),
                ]
            )
        out += f"\n**{n} concurrent clients**\n\n" + _table(
            [
                "target",
                "wall s",
                "verified copies",
                "upstream MB",
                "upstream ÷ image",
                "upstream blob GETs",
                "aggregate MB/s to clients",
                "wall ÷ mirror wall",
            ],
            rows,
        )
    return out


def _s3(res: dict[str, Any], meta: dict[str, Any]) -> str:
    out = ""
    for n in meta["settings"]["warm_clients"]:
        key = str(n)
        mirror = res.get("mirror", {}).get(key, {})
        rows = []
        for t in _targets(res):
            e = res[t].get(key)
            if not e:
                rows.append([t, _failed(res[t]) or "not run"] + [""] * 5)
                continue
            rows.append(
                [
                    t,
                    _fmt(e.get("wall_s"), 3),
                    f"{e.get('verified_copies')}/{n}",
                    _fmt(e.get("client_MBps"), 0),
                    _fmt(e.get("upstream_requests")),
                    _fmt(e.get("upstream_bytes", 0) / MB, 3),
                    _fmt(_ratio(mirror.get("client_MBps"), e.get("client_MBps"))),
                ]
            )
        out += f"\n**{n} concurrent client{'s' if n > 1 else ''}**\n\n" + _table(
            [
                "target",
                "wall s",
                "verified copies",
                "aggregate MB/s",
                "upstream requests",
                "upstream MB",
                "mirror MB/s ÷ target MB/s",
            ],
            rows,
        )
    return out


def _s4(res: dict[str, Any], meta: dict[str, Any]) -> str:
    mirror = res.get("mirror", {})
    rows = []
    for t in _targets(res):
        e = res[t]
        if "req_per_s" not in e:
            rows.append([LABELS.get(t, t), _failed(e) or "not run"] + [""] * 8)
            continue
        rows.append(
            [
                LABELS.get(t, t),
                _fmt(e.get("req_per_s"), 0),
                ", ".join(f"{v:,.0f}" for v in e.get("req_per_s_runs", [])),
                f"{e.get('requests_ok')}/{e.get('requests')}" + ("" if e.get("body_verified") else " (digest wrong)"),
                _fmt(e.get("wall_s")),
                _fmt(e.get("client_cpu_us_per_request"), 1),
                _fmt(e.get("target_cpu_us_per_warm_request"), 1),
                _fmt(e.get("upstream_requests")),
                _fmt(e.get("upstream_manifest_requests")),
                _fmt(_ratio(mirror.get("req_per_s"), e.get("req_per_s"))),
            ]
        )
    return _table(
        [
            "target",
            "requests/s (median)",
            "each round, req/s",
            "ok",
            "wall s (all rounds)",
            "h2load CPU µs/request",
            "target CPU µs/warm request",
            "upstream requests",
            "upstream manifest requests",
            "mirror req/s ÷ target req/s",
        ],
        rows,
    )


def _s5(res: dict[str, Any], meta: dict[str, Any]) -> str:
    mirror = res.get("mirror", {})
    rows = []
    for t in _targets(res):
        e = res[t]
        if "MBps_median" not in e:
            rows.append([t, _failed(e) or "not run"] + [""] * 4)
            continue
        rows.append(
            [
                t,
                _fmt(e.get("MBps_median"), 0),
                _fmt(e.get("MBps_best"), 0),
                _fmt(e.get("MBps_with_sha256"), 0),
                ", ".join(_fmt(v, 0) for v in e.get("MBps_runs", [])),
                _fmt(_ratio(mirror.get("MBps_median"), e.get("MBps_median"))),
            ]
        )
    return _table(
        ["target", "MB/s (median)", "MB/s (best)", "MB/s hashing sha256", "runs MB/s", "mirror ÷ target (median)"], rows
    )


def _s6(res: dict[str, Any], meta: dict[str, Any]) -> str:
    mirror = res.get("mirror", {})
    rows = []
    for t in _targets(res):
        e = res[t]
        if "peak_rss_MiB" not in e:
            rows.append([t, _failed(e) or "not run"] + [""] * 7)
            continue
        rows.append(
            [
                t,
                _fmt(e.get("peak_rss_MiB"), 1),
                _fmt(e.get("peak_hwm_MiB"), 1),
                _fmt(e.get("idle_rss_MiB"), 1),
                _fmt(e.get("wall_s")),
                f"{e.get('verified_copies')}/{e.get('clients')}",
                _fmt(e.get("upstream_x_blob"), 3),
                _fmt(_ratio(e.get("peak_rss_MiB"), mirror.get("peak_rss_MiB"))),
            ]
        )
    return _table(
        [
            "target",
            "peak RSS MiB",
            "peak VmHWM MiB",
            "idle RSS MiB",
            "wall s",
            "verified copies",
            "upstream ÷ blob",
            "target RSS ÷ mirror RSS",
        ],
        rows,
    )


def _s7(res: dict[str, Any], meta: dict[str, Any]) -> str:
    mirror = res.get("mirror", {})
    direct = res.get("direct", {})
    rows = []
    for t in _targets(res):
        e = res[t]
        if "ttfb_ms_median" not in e:
            rows.append([t, _failed(e) or "not run"] + [""] * 6)
            continue
        rows.append(
            [
                t,
                _fmt(e.get("ttfb_ms_median"), 1),
                _fmt(e.get("ttfb_ms_min"), 1),
                _fmt(e.get("ttfb_ms_max"), 1),
                _fmt(e.get("headers_ms_median"), 1),
                _fmt(e.get("samples")),
                _fmt(None if "ttfb_ms_median" not in direct else e["ttfb_ms_median"] - direct["ttfb_ms_median"], 1),
                _fmt(_ratio(e.get("ttfb_ms_median"), mirror.get("ttfb_ms_median"))),
            ]
        )
    return _table(
        [
            "target",
            "TTFB ms (median)",
            "min",
            "max",
            "headers ms (median)",
            "samples",
            "minus direct (ms)",
            "target ÷ mirror",
        ],
        rows,
    )


def _s8(res: dict[str, Any], meta: dict[str, Any]) -> str:
    direct = res.get("direct", {})
    rows = []
    for t in _targets(res):
        e = res[t]
        if (f := _failed(e)) and "wall_s" not in e:
            rows.append([t, f] + [""] * 7)
            continue
        failed = not e.get("ok")  # a failed pull's wall time is no speed
        rows.append(
            [
                t,
                _fmt(e.get("wall_s")),
                "–" if failed else _fmt(_ratio(direct.get("wall_s"), e.get("wall_s"))),
                _fmt(e.get("client_MBps"), 1),
                _fmt(e.get("upstream_bytes", 0) / MB, 1),
                _fmt(e.get("upstream_x_image"), 3),
                _fmt(e.get("upstream_wire_x_image"), 3),
                f"{_fmt(e.get('upstream_blob_gets'))} ({_fmt(e.get('upstream_range_gets'))})",
                _fmt(e.get("ok")) + (f" ({'; '.join(e.get('errors', []))})" if failed else ""),
            ]
        )
    return _table(
        [
            "target",
            "wall s",
            "direct wall ÷ wall",
            "MB/s to the client",
            "upstream MB",
            "upstream ÷ image",
            "on the wire ÷ image",
            "upstream blob GETs (ranged)",
            "verified",
        ],
        rows,
    )


def _s9(res: dict[str, Any], meta: dict[str, Any]) -> str:
    rows = []
    for t in _targets(res):
        e = res[t]
        rows.append(
            [
                t,
                f"{e.get('blobs', 0):,}",
                _fmt(e.get("first_answer_s"), 2),
                _fmt(e.get("index_ready_s"), 1),
                f"{e.get('indexed_blobs') or 0:,}",
                _fmt(e.get("page_cache_dropped")),
                _fmt(e.get("ok")),
            ]
        )
    headers = ["target", "cached blobs", "first right answer s", "index ready s", "indexed", "page cache dropped", "ok"]
    return _table(headers, rows)


def _fleet_reference(label: str) -> str:
    """The single mirror a set-up of scenario 10 is compared with: the one behind the same front."""
    return "1 mirror behind HAProxy" if "behind HAProxy" in label else "1 mirror"


def _s10(res: dict[str, Any], meta: dict[str, Any]) -> str:
    rows = []
    setups = res.get("mirror", {})
    for label, e in setups.items():
        if (f := _failed(e)) and "cold" not in e:
            rows.append([label, f] + [""] * 7)
            continue
        cold, warm = e.get("cold", {}), e.get("warm", {})
        single = setups.get(_fleet_reference(label), {}).get("cold", {}).get("wall_s")
        held = e.get("replica_bytes")
        rows.append(
            [
                label,
                _fmt(cold.get("wall_s")),
                _fmt(_ratio(cold.get("wall_s"), single)),
                _fmt(cold.get("upstream_x_image"), 4),
                _fmt(cold.get("upstream_blob_gets")),
                _fmt(warm.get("wall_s")),
                _fmt(warm.get("client_MBps"), 0),
                " / ".join(f"{b / MB:,.1f}" for b in held) if held else "–",
                f"{_fmt(cold.get('verified_copies'))} + {_fmt(warm.get('verified_copies'))}",
            ]
        )
    headers = [
        "set-up",
        "cold wall s",
        "÷ 1 mirror, same front",
        "upstream ÷ image",
        "upstream blob GETs",
        "warm wall s",
        "warm MB/s (aggregate)",
        "MB held per replica",
        "verified copies (cold + warm)",
    ]
    return _table(headers, rows)


def _s12(res: dict[str, Any], meta: dict[str, Any]) -> str:
    settings = res.get("settings", {})
    rows = []
    for t in _targets({k: v for k, v in res.items() if k != "settings"}):
        e = res[t]
        if "p50_s" not in e:
            rows.append([t, _failed(e) or "not run"] + [""] * 10)
            continue
        warm, cold = e.get("warm", {}), e.get("cold", {})
        rows.append(
            [
                t,
                _fmt(e.get("p50_s")),
                _fmt(e.get("p95_s")),
                _fmt(e.get("p99_s")),
                f"{_fmt(warm.get('p50_s'))} / {_fmt(warm.get('p99_s'))}",
                f"{_fmt(cold.get('p50_s'))} / {_fmt(cold.get('p99_s'))}",
                f"{e.get('failed')}/{e.get('clients')}" + (f" ({e['errors'][0][:80]})" if e.get("errors") else ""),
                _fmt(e.get("upstream_x_distinct"), 3),
                _fmt(e.get("upstream_warm_bytes", 0) / MB, 3),
                _fmt(e.get("peak_rss_MiB"), 1) + f" (idle {_fmt(e.get('idle_rss_MiB'), 1)})",
                _fmt(e.get("peak_open_files")) + f" (idle {_fmt(e.get('idle_open_files'))})",
                _fmt(e.get("start_spread_s"), 3),
            ]
        )
    header = [
        "target",
        "p50 s",
        "p95 s",
        "p99 s",
        "warm p50 / p99 s",
        "cold p50 / p99 s",
        "failed pulls",
        "upstream ÷ distinct cold images",
        "upstream MB for warm images",
        "peak RSS MiB",
        "peak open files",
        "start spread s",
    ]
    intro = ""
    if settings:
        intro = (
            f"{settings['clients']} clients over {settings['client_processes']} client processes, "
            f"{settings['images']} images × {settings['layers']} layers of "
            f"{settings['layer_MiB'][0]:g}–{settings['layer_MiB'][1]:g} MiB "
            f"({min(settings['image_bytes']):,}–{max(settings['image_bytes']):,} bytes each), "
            f"{settings['warm_images']} primed; per-request timeout {settings['request_timeout_s']:.0f} s.\n\n"
        )
    return intro + _table(header, rows)


RENDERERS = {
    "1": _s1,
    "2": _s2,
    "3": _s3,
    "4": _s4,
    "5": _s5,
    "6": _s6,
    "7": _s7,
    "8": _s8,
    "9": _s9,
    "10": _s10,
    "11": _s8,  # the same columns: a cold pull behind the paced upstream
    "12": _s12,
}

NOTES = {
    "1": "One client pulls the image (manifest → config → 5 layers, 3 layers at a time, every blob hashed and "
    "checked) from a target started on an empty cache. Upstream bytes are body bytes from the upstream "
    "registry's access log. Then `skopeo copy` pulls the image into `dir:` from another fresh cache.",
    "2": "N clients start together (spread over client processes) on a fresh, empty cache. Wall = first request "
    "to last byte. Upstream ÷ image = bytes the upstream served ÷ one image's bytes (1.00 = one download).",
    "3": "The target is primed with one pull (WAN limit lifted while priming), then N clients pull at once. "
    "The clients hash every byte and share the 2 CPUs with the target: ~1.2 GB/s aggregate is about the "
    "ceiling of this machine for hashed pulls (nginx + hashing client: see scenario 5's sha256 column).",
    "4": "A fresh target; rounds of GET /v2/<name>/manifests/<tag> by h2load (C++, HTTP/1.1 keep-alive; a "
    "Python client cost as much CPU per request as the servers it measured). The first round meets a "
    "cold cache. Rounds stop at the round limit or once 15 s have been spent (distribution: one round). "
    "Every body's length is checked (h2load's byte count), one body's digest after the rounds. "
    "Upstream requests = every request the upstream logged meanwhile, over all rounds. Target CPU = the "
    "target's user + system time (its process tree, /proc, 10 ms ticks) over the warm rounds ÷ their requests: "
    "steadier than req/s when something else takes CPU time from this machine. "
    f"**{signing.LABEL}**: right after the plain mirror, the same rounds on another fresh mirror with "
    '`[signatures] mode = "enforce"` and a containers-policy.json that accepts anything but requires, for '
    "the image's repository, a cosign signature by the run's own ECDSA P-256 key (`sigstoreSigned`, `keyPath`, "
    "`matchRepository`); the image is signed at seed time in cosign's format (bench/signing.py: the "
    "simple-signing payload as a blob, a config, an OCI manifest under `sha256-<hex>.sig`). Its first request "
    "looks the signature up (the `.sig` tag, then the payload blob) and verifies it; the verdict is kept for "
    "tag_ttl, so warm requests take the fast path as without a policy. Its upstream requests include the "
    "signature's; its log (the verdicts' logger alone at info) must say the policy accepted the image.",
    "5": "A blob primed into the cache (WAN lifted), then read by one client on one connection, bytes counted "
    "but not hashed (the client reads ~2 GB/s); a further run hashes sha256. nginx (sendfile on) serves "
    "the same file from the upstream's storage.",
    "6": "N clients GET one uncached blob at once on a fresh target; VmRSS of the target process (and its "
    "descendants) sampled every 50 ms; VmHWM is the kernel's own peak.",
    "7": "Fresh target; one GET per layer in turn (each uncached), time from sending the request to the first "
    "body byte. direct = the upstream itself over the WAN.",
    "8": "nginx in front of the upstream registry (with the WAN: in the upstream's namespace, behind the "
    "shaped link) sends each response at a fixed pace (`limit_rate`, per connection; by default 1/8 of the WAN "
    "rate, like a CDN pacing each connection) and passes Range through. Every target is pointed at it (direct: "
    "the client pulls from it). One client pulls an image with one big layer from a fresh, empty cache "
    "(manifest → config → layer, hashed and checked). One connection gets 1/8 of the link; 8 ranged requests "
    "at once could fill it. Upstream bytes are body bytes from nginx's access log; on the wire = the "
    "client-side veth's rx counter (TCP/IP and HTTP headers included).",
    "12": "A crowd (issue 26): the images are pushed at the scenario's start, each `library/crowd-NN:v1` with "
    "5 layers. Each target starts on an empty cache and pulls the first half of the images once (WAN lifted, "
    "as scenario 3 primes; not for direct, which has no cache); then all the clients start together, spread "
    "over client processes that wait for a common signal, client n pulling image n mod images (manifest → "
    "config → layers, 3 blobs at a time, every blob hashed and checked): as many clients on each image, so "
    "each cold image has several at once. Pull time = one client's first request to its last byte; "
    "p50/p95/p99 over the pulls that succeeded (failures are counted apart; closest ranks interpolated), "
    "and apart for the warm and the cold half. Upstream ÷ distinct = body bytes the upstream served during "
    "the crowd (its access log) ÷ the cold images' bytes "
    "(1.00 = each cold image fetched once; direct fetches every pull). Upstream for warm images = what it "
    "served under their repositories (~0 for a cache). Peak RSS and open files (entries of /proc/<pid>/fd) "
    "of the target's process tree, sampled every 50 ms; idle = just before the crowd. Start spread = the "
    "last client's start − the first's.",
    "10": "The mirror only, each set-up on empty caches: one mirror alone; one mirror behind HAProxy "
    "(what the balancer alone costs: no Redis, no `[fleet]`); 3 replicas (`[fleet]`, one Redis) with the "
    "clients spread over them, as DNS round robin spreads them; the same behind HAProxy with the shipped "
    "`deploy/haproxy.cfg` (blobs hashed on their digest, manifests on their repository); and behind HAProxy's "
    "round robin (a balancer that knows nothing of digests, like a Kubernetes Service). N cold clients at once "
    "over the WAN, then N warm clients. Each fleet is compared with one mirror behind the same front. "
    "Everything shares the machine's 2 CPUs: the replicas, HAProxy, Redis and the clients, so the warm "
    "numbers show the cost of the extra hops, not the NICs a fleet adds.",
    "11": "The paced nginx of scenario 8, the same pace per connection. One client pulls an image of many "
    "small layers (by default 10 × 16 MiB) from a fresh, empty cache, as Docker and containerd do: manifest, "
    "config, then 3 layers at a time in manifest order, each hashed and checked. Direct, each round of 3 gets "
    "3/8 of the link and waits for its slowest layer; a target that starts the whole image's layers as soon "
    "as the client starts on one (the mirror's fetch ahead) can fill the link.",
    "9": "The mirror only. N small blob files with correct names are made in a fresh cache, `sync` and "
    "`echo 3 > /proc/sys/vm/drop_caches`, then `mirror serve` starts; the time from its start to the first right "
    "answer for a blob (its bytes checked), and until `/stats` says the LRU index is built.",
}


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    m = meta["machine"]
    s = meta["settings"]
    out = ["# mirror benchmark results\n"]
    out.append(
        f"- Date: {meta['date']}; full run took {meta.get('runtime_s', 0) / 60:.1f} min"
        + (" (**smoke mode**)" if s.get("smoke") else "")
    )
    out.append(
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_GiB']} GiB RAM, {m['os']}, "
        f"kernel {m['kernel']}, Python {m['python']}"
    )
    out.append("- Versions: " + "; ".join(f"{k}: `{v}`" for k, v in meta["versions"].items()))
    if meta.get("loadavg_at_start"):
        out.append(
            f"- Load average (1/5/15 min) at start {', '.join(f'{v:.2f}' for v in meta['loadavg_at_start'])}"
            f", at end {', '.join(f'{v:.2f}' for v in meta.get('loadavg_at_end', []))} "
            "(other work on the machine shows here)"
        )
    if meta.get("mirror_source"):
        out.append(f"- mirror source measured: git `{meta['mirror_source']}`")
    if s.get("wan"):
        out.append(
            f"- WAN: upstream in its own network namespace behind a veth pair, `{s['wan']['qdisc']}` "
            f"on the upstream side (what it sends). Targets and clients in a second namespace on loopback."
        )
    else:
        out.append("- No WAN emulation: upstream on loopback.")
    out.append(
        f"- Image: {s['image']['layers']} layers × {s['image']['layer_MiB']} MiB random data "
        f"(gzip tar), {s['image']['bytes']:,} bytes with manifest and config. "
        f"Mirror tag_ttl {s['mirror_tag_ttl']}; every target logs at warning/error level, no access log."
    )
    out.append(
        "- Command: `" + meta.get("command", ".venv/bin/python -m bench") + "`; "
        "raw numbers in `results.json`. MB = 10^6 bytes, MiB = 2^20."
    )
    for note in meta.get("notes", []):
        out.append(f"- {note}")
    out.append("")
    goals = goal_checks(results)
    if goals:
        out.append("## Mirror vs its goals\n")
        out.append(_table(["goal", "measured", "met?"], [[g, v, "yes" if ok else "**no**"] for g, v, ok in goals]))
    for sid, scenario in results["scenarios"].items():
        out.append(f"## Scenario {sid}: {scenario['title']}\n")
        if sid in NOTES:
            out.append(NOTES[sid] + "\n")
        if sid == "6":
            rate = s.get("rss_wan_rate")
            out.append(
                f"{s['rss_clients']} clients × one {s['rss_blob_MiB']} MiB blob; WAN rate during this "
                f"scenario: {'lifted (no tbf)' if rate in ('none', 'off', '') else rate}.\n"
            )
        if sid == "5":
            out.append(f"Blob: {s['big_blob_MiB']} MiB.\n")
        if sid == "8" and s.get("accel_image"):
            out.append(
                f"Image: one {s['accel_image']['layer_MiB']} MiB layer (random data, gzip tar), "
                f"{s['accel_image']['bytes']:,} bytes with manifest and config; nginx `limit_rate` "
                f"{s['accel_rate_Bps']:,} bytes/s per connection ({s['accel_rate']}).\n"
            )
        if sid == "11" and s.get("layers_image"):
            shape = s["layers_image"]
            out.append(
                f"Image: {shape['layers']} layers of {shape['layer_MiB']} MiB (random data, gzip tar), "
                f"{shape['bytes']:,} bytes with manifest and config; nginx `limit_rate` "
                f"{s['accel_rate_Bps']:,} bytes/s per connection ({s['accel_rate']}).\n"
            )
        if sid == "4":
            out.append(
                f"{s['tag_requests']:,} requests per round over {s['tag_connections']} connections, "
                f"h2load with {s.get('tag_threads', 1)} threads, at most {s.get('tag_rounds', 1)} rounds.\n"
            )
        out.append(RENDERERS[sid](scenario["results"], meta))
    return "\n".join(out) + "\n"


def goal_checks(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    sc = results["scenarios"]
    meta = results["meta"]
    image_bytes = meta["settings"]["image"]["bytes"]
    goals: list[tuple[str, str, bool]] = []

    def r(sid: str) -> dict[str, Any]:
        found: dict[str, Any] = sc.get(sid, {}).get("results", {})
        return found

    # upstream bytes = 1.00 × image for every N
    ratios = {}
    if "upstream_x_image" in r("1").get("mirror", {}):
        ratios["1"] = r("1")["mirror"]["upstream_bytes"]
    for n, e in r("2").get("mirror", {}).items():
        if isinstance(e, dict) and "upstream_bytes" in e:
            ratios[n] = e["upstream_bytes"]
    if ratios:
        text = ", ".join(f"N={n}: {b / image_bytes:.4f}× ({b:,} B)" for n, b in ratios.items())
        goals.append(
            (
                "cold pull: upstream bytes = 1.00 × image for every N",
                text,
                all(b <= image_bytes for b in ratios.values()),
            )
        )
    one = r("1").get("mirror", {}).get("wall_s")
    many = r("2").get("mirror", {}).get("32", {}).get("wall_s")
    if one and many:
        goals.append(
            (
                "cold 32 clients wall ≤ 1.25 × cold 1 client",
                f"{many:.2f} s vs {one:.2f} s = {many / one:.2f}×",
                many <= 1.25 * one,
            )
        )
    s5 = r("5")
    mirror5 = s5.get("mirror", {}).get("MBps_median")
    if mirror5:
        for peer, factor in (("distribution", 1.0), ("nginx", 0.7)):
            peer_v = s5.get(peer, {}).get("MBps_median")
            if peer_v:
                goals.append(
                    (
                        f"warm single stream ≥ {factor} × {peer}",
                        f"{mirror5:,.0f} vs {peer_v:,.0f} MB/s = {mirror5 / peer_v:.2f}×",
                        mirror5 >= factor * peer_v,
                    )
                )
    s4 = r("4")
    m4 = s4.get("mirror", {})
    if "req_per_s" in m4:
        d4 = s4.get("distribution", {}).get("req_per_s")
        if d4:
            goals.append(
                (
                    "tag resolution ≥ 10 × distribution req/s",
                    f"{m4['req_per_s']:,.0f} vs {d4:,.0f} req/s = {m4['req_per_s'] / d4:.1f}×",
                    m4["req_per_s"] >= 10 * d4,
                )
            )
        goals += _tag_goals(m4, s4.get(signing.TARGET), _seconds(meta["settings"].get("mirror_tag_ttl", "60s")))
    m6 = r("6").get("mirror", {})
    if "peak_rss_MiB" in m6:
        goals.append(
            (
                "peak RSS ≤ 64 MiB in scenario 6",
                f"{m6['peak_rss_MiB']:.1f} MiB ({m6['peak_rss_MiB'] * 1.048576:.1f} MB)",
                m6["peak_rss_MiB"] <= 64,
            )
        )
    if "idle_rss_MiB" in m6:
        goals.append(
            (
                "idle RSS ≤ 40 MiB (scenario 6, before its clients)",
                f"{m6['idle_rss_MiB']:.1f} MiB",
                m6["idle_rss_MiB"] <= 40,
            )
        )
    s7 = r("7")
    if "ttfb_ms_median" in s7.get("mirror", {}) and "ttfb_ms_median" in s7.get("direct", {}):
        mv, dv = s7["mirror"]["ttfb_ms_median"], s7["direct"]["ttfb_ms_median"]
        goals.append(
            ("cold TTFB ≤ direct + 25 ms", f"{mv:.1f} ms vs direct {dv:.1f} ms (+{mv - dv:.1f} ms)", mv <= dv + 25)
        )
    goals += _paced_goals(r("8"), "accelerated cold pull", 3)
    goals += _paced_goals(r("11"), "whole image behind a paced upstream, 3 blobs at a time", 2.5)
    # ahead of drayage in 2, 3, 4
    for n, e in r("2").get("mirror", {}).items():
        d = r("2").get("drayage", {}).get(n, {})
        if isinstance(e, dict) and "wall_s" in e and "wall_s" in d:
            goals.append(
                (
                    f"ahead of drayage: scenario 2, {n} cold clients",
                    f"{e['wall_s']:.2f} s vs {d['wall_s']:.2f} s",
                    e["wall_s"] < d["wall_s"] and e["ok"],
                )
            )
    for n, e in r("3").get("mirror", {}).items():
        d = r("3").get("drayage", {}).get(n, {})
        if isinstance(e, dict) and "client_MBps" in e and isinstance(d, dict) and "client_MBps" in d:
            goals.append(
                (
                    f"ahead of drayage: scenario 3, {n} warm client{'s' if n != '1' else ''}",
                    f"{e['client_MBps']:,.0f} vs {d['client_MBps']:,.0f} MB/s",
                    e["client_MBps"] > d["client_MBps"] and e["ok"],
                )
            )
    s9 = r("9").get("mirror", {})
    if s9.get("first_answer_s") is not None:
        dropped = "" if s9.get("page_cache_dropped") else ", page cache not dropped"
        goals.append(
            (
                f"start-up: first right answer with {s9['blobs']:,} cached blobs",
                f"{s9['first_answer_s']:.2f} s (index ready at {s9['index_ready_s']:.1f} s{dropped})",
                s9["first_answer_s"] <= s9["goal_s"] and s9["ok"],
            )
        )
    goals += _fleet_goals(r("10").get("mirror", {}), image_bytes)
    goals += _crowd_goals(r("12"))
    d4 = s4.get("drayage", {})
    if "req_per_s" in m4 and "req_per_s" in d4:
        goals.append(
            (
                "ahead of drayage: scenario 4",
                f"{m4['req_per_s']:,.0f} vs {d4['req_per_s']:,.0f} req/s",
                m4["req_per_s"] > d4["req_per_s"],
            )
        )
    return goals


def _tag_goals(plain: dict[str, Any], signed: dict[str, Any] | None, ttl: float) -> list[tuple[str, str, bool]]:
    """Scenario 4's upstream requests, with and without a signature policy, and what the policy costs.

    Counting: each tag may cost one upstream request per tag_ttl window the rounds spanned; with
    a policy the signature's `.sig` tag is a tag too, and its payload blobs (by digest, so
    immutable) one GET each, once."""
    windows = max(1, math.ceil(plain["wall_s"] / ttl))
    measured = (
        f"{plain['upstream_requests']} upstream requests ({plain['upstream_manifest_requests']} for manifests)"
        f" in {plain['wall_s']:.1f} s"
    )
    met = plain["upstream_requests"] <= windows
    goals = []
    speed_goal = f"tag resolution with a signature policy ≥ {SIGNED_SPEED_LIMIT} × without"
    if signed is not None and "req_per_s" not in signed:
        measured += f"; {signing.LABEL}: {_failed(signed) or 'not run'}"
        met = False
        goals.append((speed_goal, _failed(signed) or "not run", False))
    elif signed is not None:
        signed_windows = max(1, math.ceil(signed["wall_s"] / ttl))
        allowed = 2 * signed_windows + signed.get("signature_payloads", 1)
        measured += (
            f"; {signing.LABEL}: {signed['upstream_requests']} ({signed['upstream_manifest_requests']} for manifests,"
            f" {signed.get('upstream_signature_requests')} for the signature: its tag and payload) in"
            f" {signed['wall_s']:.1f} s, ≤ {allowed} allowed"
        )
        met = met and signed["upstream_requests"] <= allowed
        cpu = [signed.get("target_cpu_us_per_warm_request"), plain.get("target_cpu_us_per_warm_request")]
        cpu_text = f" (mirror CPU per warm request: {cpu[0]:.1f} vs {cpu[1]:.1f} µs)" if None not in cpu else ""
        if "paired_ratio" in signed:
            # Rounds in turns on two warm mirrors: steadier than the two runs' rates (machine drift).
            ratio = signed["paired_ratio"]
            with_policy, without = signed["paired_req_per_s"][1], signed["paired_req_per_s"][0]
            goals.append(
                (
                    speed_goal,
                    f"{with_policy:,.0f} vs {without:,.0f} req/s in {len(signed['paired_ratios'])} paired rounds,"
                    f" median ratio {ratio:.2f}× (range {min(signed['paired_ratios']):.2f}–"
                    f"{max(signed['paired_ratios']):.2f}; the separate runs: {signed['req_per_s']:,.0f} vs"
                    f" {plain['req_per_s']:,.0f})" + cpu_text,
                    ratio >= SIGNED_SPEED_LIMIT and bool(signed.get("ok")),
                )
            )
        elif plain.get("req_per_s"):
            ratio = signed["req_per_s"] / plain["req_per_s"]
            goals.append(
                (
                    speed_goal,
                    f"{signed['req_per_s']:,.0f} vs {plain['req_per_s']:,.0f} req/s = {ratio:.2f}×" + cpu_text,
                    ratio >= SIGNED_SPEED_LIMIT and bool(signed.get("ok")),
                )
            )
    goal = "tag resolution: ≤ 1 upstream request per tag per tag_ttl"
    if signed is not None:
        goal += " (with a signature policy: its `.sig` tag a tag too, + 1 GET per signature payload)"
    return [(goal, measured + f", tag_ttl {ttl:g} s", met), *goals]


def _fleet_goals(setups: dict[str, Any], image_bytes: int) -> list[tuple[str, str, bool]]:
    """Issue 17: a fleet's cold pull costs the upstream one image, and about what one mirror
    behind the same front (none, or HAProxy) takes."""
    goals = []
    for label, e in setups.items():
        cold = e.get("cold", {})
        if "replica_bytes" not in e or "wall_s" not in cold:
            continue  # a single mirror: a reference
        goals.append(
            (
                f"fleet ({label}), {cold['clients']} cold clients: upstream bytes = 1.00 × image",
                f"{cold['upstream_bytes'] / image_bytes:.4f}× ({cold['upstream_bytes']:,} B)",
                cold["upstream_bytes"] <= image_bytes and cold["ok"],
            )
        )
        reference = _fleet_reference(label)
        single = setups.get(reference, {}).get("cold", {})
        if single.get("wall_s"):
            goals.append(
                (
                    f"fleet ({label}): cold wall ≤ 1.25 × {reference}",
                    f"{cold['wall_s']:.2f} s vs {single['wall_s']:.2f} s = {cold['wall_s'] / single['wall_s']:.2f}×",
                    cold["wall_s"] <= 1.25 * single["wall_s"],
                )
            )
    return goals


def _crowd_goals(res: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 26: through the mirror, a crowd of clients pulls without a failure, the cold images
    cost the upstream one download each, and the slowest client fares better than through any peer."""
    mirror = res.get("mirror", {})
    if "p99_s" not in mirror:
        return []
    goals = [
        (
            "crowd: 0 failed pulls through the mirror",
            f"{mirror['failed']} of {mirror['clients']} failed"
            + (f": {mirror['errors'][0]}" if mirror.get("errors") else ""),
            mirror["failed"] == 0,
        ),
        (
            f"crowd: upstream ≤ {CROWD_UPSTREAM_LIMIT} × the distinct cold images (mirror)",
            f"{mirror['upstream_x_distinct']:.4f}× ({mirror['upstream_bytes']:,} B), "
            f"{mirror['upstream_warm_bytes']:,} B for the warm images",
            mirror["upstream_x_distinct"] <= CROWD_UPSTREAM_LIMIT,
        ),
    ]
    peers = {t: e["p99_s"] for t, e in res.items() if t not in ("mirror", "settings") and "p99_s" in e}
    if peers:
        goals.append(
            (
                "crowd: mirror p99 below every peer's p99",
                f"{mirror['p99_s']:.2f} s vs " + ", ".join(f"{t} {v:.2f} s" for t, v in peers.items()),
                all(mirror["p99_s"] < v for v in peers.values()),
            )
        )
    return goals


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for unit in ("ms", "s", "m", "h", "d"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def _paced_goals(results: dict[str, Any], what: str, factor: float) -> list[tuple[str, str, bool]]:
    """Scenarios 8 and 11: the mirror's cold pull behind the paced upstream against direct's, and
    what it cost the upstream."""
    mirror, direct = results.get("mirror", {}), results.get("direct", {})
    goals = []
    if mirror.get("wall_s") and direct.get("wall_s"):
        speedup = direct["wall_s"] / mirror["wall_s"]
        goals.append(
            (
                f"{what}: ≥ {factor:g} × faster than direct",
                f"{mirror['wall_s']:.2f} s vs direct {direct['wall_s']:.2f} s: direct ÷ mirror = {speedup:.2f}×",
                speedup >= factor and mirror["ok"],
            )
        )
    if "upstream_x_image" in mirror:
        wire = mirror.get("upstream_wire_x_image")
        goals.append(
            (
                f"{what}: upstream ≤ 1.01 × the image",
                f"{mirror['upstream_x_image']:.4f}× ({mirror['upstream_bytes']:,} B"
                + (f"; on the wire {wire:.4f}×" if wire is not None else "")
                + f"), {mirror.get('upstream_blob_gets')} blob GETs, {mirror.get('upstream_range_gets')} ranged",
                mirror["upstream_x_image"] <= ACCEL_UPSTREAM_LIMIT,
            )
        )
    return goals


def check_mirror(results: dict[str, Any], *, smoke: bool) -> list[str]:
    """Misbehaviour of the mirror: failed or unverified pulls, more than one upstream download."""
    problems = []
    image_bytes = results["meta"]["settings"]["image"]["bytes"]

    def walk(sid: str, label: str, e: Any) -> None:
        if not isinstance(e, dict):
            return
        if e.get("ok") is False:
            problems.append(f"scenario {sid} {label}: failed: {e.get('error') or e.get('errors')}")
        if sid in ("1", "2", "10") and "upstream_x_image" in e and e["upstream_bytes"] > image_bytes:
            problems.append(f"scenario {sid} {label}: upstream served {e['upstream_x_image']:.4f} × the image")
        tags = 2 if label == signing.TARGET else 1  # with a policy, the signature's `.sig` tag too
        if sid == "4" and e.get("upstream_manifest_requests", 0) > tags:
            problems.append(
                f"scenario 4 {label}: {e['upstream_manifest_requests']} upstream manifest requests for {tags} tag(s)"
            )
        if sid == "8" and "upstream_x_image" in e and e["upstream_x_image"] > ACCEL_UPSTREAM_LIMIT:
            problems.append(f"scenario 8 {label}: upstream served {e['upstream_x_image']:.4f} × the image")
        if sid == "12" and (e.get("upstream_x_distinct") or 0) > CROWD_UPSTREAM_LIMIT:
            problems.append(f"scenario 12 {label}: upstream served {e['upstream_x_distinct']:.4f} × the cold images")
        if sid == "6" and "upstream_x_blob" in e and e["upstream_x_blob"] > 1.0:
            problems.append(f"scenario 6: upstream served {e['upstream_x_blob']:.4f} × the blob")
        for key, value in e.items():
            if isinstance(value, dict):
                walk(sid, f"{label}/{key}", value)

    for sid, scenario in results["scenarios"].items():
        mirror = scenario["results"].get("mirror")
        if mirror is None:
            if smoke:
                problems.append(f"scenario {sid}: no mirror result")
            continue
        walk(sid, "mirror", mirror)
        walk(sid, signing.TARGET, scenario["results"].get(signing.TARGET))
    return problems
