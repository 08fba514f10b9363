"""`python -m bench`: set up the WAN, seed the upstream, run the scenarios, write the results.

The outer process (root, host namespace) creates the two namespaces and re-executes itself
inside the client namespace with nsenter; that inner process starts everything else and
runs the scenarios. The outer one always deletes the namespaces, stops any process the
inner one left behind (by the PIDs it recorded) and removes the temp dir.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import h2load, netns, nginx, procs, report, seed, signing
from bench.context import Context
from bench.scenarios import SCENARIOS

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
ALL_TARGETS = ["direct", "distribution", "drayage", "mirror"]


def _csv_ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _mib_range(value: str) -> tuple[float, float]:
    low, _, high = value.partition(",")
    return float(low), float(high or low)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="quick check of the mirror only (+ direct), tiny sizes, loopback; exit 1 on misbehaviour",
    )
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma list of %(default)s")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of 1..12 (default: all)")
    p.add_argument("--startup-blobs", type=int, default=1_000_000, help="scenario 9 blob files (default %(default)s)")
    p.add_argument("--fleet-clients", type=int, default=32, help="scenario 10 clients (default %(default)s)")
    p.add_argument("--wan-rate", default="200mbit", help="tc tbf rate of the upstream's link (default %(default)s)")
    p.add_argument("--no-wan", action="store_true", help="no namespaces: upstream on loopback, no rate limit")
    p.add_argument("--layers", type=int, default=5, help="layers in the test image (default %(default)s)")
    p.add_argument("--layer-mb", type=float, default=20, help="MiB of random data per layer (default %(default)s)")
    p.add_argument("--cold-clients", type=_csv_ints, default=[8, 32], help="scenario 2 client counts (default 8,32)")
    p.add_argument(
        "--direct-max-clients",
        type=int,
        default=32,
        help="skip direct in scenario 2 above this many clients (default %(default)s)",
    )
    p.add_argument("--warm-clients", type=_csv_ints, default=[1, 32], help="scenario 3 client counts (default 1,32)")
    p.add_argument("--tag-requests", type=int, default=10_000, help="scenario 4 requests (default %(default)s)")
    p.add_argument("--tag-connections", type=int, default=32, help="scenario 4 connections (default %(default)s)")
    p.add_argument("--tag-workers", type=int, default=2, help="scenario 4 h2load threads (default %(default)s)")
    p.add_argument("--tag-rounds", type=int, default=5, help="scenario 4 rounds, at most, per target (default 5)")
    p.add_argument("--big-blob-mb", type=int, default=1024, help="scenario 5 blob size in MiB (default %(default)s)")
    p.add_argument("--stream-runs", type=int, default=9, help="scenario 5 timed runs per target (default %(default)s)")
    p.add_argument("--rss-blob-mb", type=int, default=4096, help="scenario 6 blob size in MiB (default %(default)s)")
    p.add_argument("--rss-clients", type=int, default=8, help="scenario 6 clients (default %(default)s)")
    p.add_argument(
        "--rss-wan-rate",
        default="none",
        help="WAN rate during scenario 6; 'none' lifts the limit (default %(default)s)",
    )
    p.add_argument(
        "--ttfb-rounds",
        type=int,
        default=2,
        help="scenario 7: fresh caches x one cold GET per layer (default %(default)s)",
    )
    p.add_argument(
        "--accel-layer-mb", type=int, default=512, help="scenario 8: MiB in the image's one layer (default %(default)s)"
    )
    p.add_argument(
        "--accel-rate",
        default=None,
        help="scenario 8: what nginx sends per connection, tc units (default: 1/8 of --wan-rate)",
    )
    p.add_argument(
        "--ahead-layers", type=int, default=10, help="scenario 11: layers in the image (default %(default)s)"
    )
    p.add_argument(
        "--ahead-layer-mb", type=int, default=16, help="scenario 11: MiB in each of its layers (default %(default)s)"
    )
    p.add_argument("--crowd-clients", type=int, default=200, help="scenario 12 clients (default %(default)s)")
    p.add_argument("--crowd-images", type=int, default=20, help="scenario 12 images, half primed (default 20)")
    p.add_argument(
        "--crowd-layer-mb",
        type=_mib_range,
        default=(1.0, 2.0),
        help="scenario 12: MiB per layer, smallest,largest (default 1,2)",
    )
    p.add_argument("--crowd-workers", type=int, default=8, help="scenario 12 client processes (default %(default)s)")
    p.add_argument("--workers", type=int, default=4, help="client processes for concurrent pulls (default %(default)s)")
    p.add_argument("--no-skopeo", action="store_true", help="skip the skopeo copy realism check")
    p.add_argument("--request-timeout", type=float, default=600.0, help="per request, seconds")
    p.add_argument("--scenario-timeout", type=float, default=900.0, help="per scenario step, seconds")
    p.add_argument("--total-timeout", type=float, default=3600.0, help="whole run, seconds (outer process)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for RESULTS.md and results.json (default bench/; smoke: bench/out/)",
    )
    p.add_argument("--work-dir", type=Path, default=Path("/var/tmp"), help="where the temp run dir goes")
    p.add_argument("--keep", action="store_true", help="keep the temp run dir (logs, caches)")
    p.add_argument(
        "--render", type=Path, metavar="RESULTS_JSON", help="only re-render RESULTS.md next to an existing results.json"
    )
    p.add_argument("--_wan", help=argparse.SUPPRESS)
    p.add_argument("--_run-dir", dest="run_dir", help=argparse.SUPPRESS)
    return p


def apply_smoke(args: argparse.Namespace) -> None:
    args.no_wan = True
    args.targets = "direct,mirror"
    args.layers, args.layer_mb = 3, 1
    args.cold_clients, args.warm_clients = [8], [1, 8]
    args.tag_requests, args.tag_connections, args.tag_rounds = 500, 8, 2
    args.big_blob_mb, args.stream_runs = 32, 1
    args.rss_blob_mb, args.rss_clients = 64, 4
    args.ttfb_rounds, args.workers, args.tag_workers = 1, 2, 1
    args.accel_layer_mb, args.accel_rate = 80, "160mbit"  # 8 ranges of 10 MiB, at 20 MB/s each
    args.ahead_layers, args.ahead_layer_mb = 6, 8  # 6 layers of 8 MiB, at 20 MB/s per connection
    args.request_timeout, args.scenario_timeout, args.total_timeout = 30.0, 60.0, 120.0
    args.startup_blobs = 20_000
    args.fleet_clients = 8
    args.crowd_clients, args.crowd_images, args.crowd_layer_mb, args.crowd_workers = 20, 4, (0.25, 0.5), 2


def accel_rate_of(args: argparse.Namespace) -> int:
    """Scenario 8's pace per connection in bytes/s: --accel-rate, else 1/8 of --wan-rate."""
    if args.accel_rate:
        return round(netns.rate_bytes_per_s(args.accel_rate))
    return round(netns.rate_bytes_per_s(args.wan_rate) / 8)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render is not None:
        results = json.loads(args.render.read_text())
        (args.render.parent / args.render.name.replace("results.json", "RESULTS.md")).write_text(report.render(results))
        return 0
    if args.smoke:
        apply_smoke(args)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(ALL_TARGETS)
    if unknown:
        print(f"bench: unknown targets {sorted(unknown)}", file=sys.stderr)
        return 2
    try:
        accel_rate_of(args)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if "4" in args.scenarios.split(",") and not h2load.available():
        print("bench: h2load not found (Debian nghttp2-client; scripts/bench installs it)", file=sys.stderr)
        return 2
    if "drayage" in targets and args._wan is None:
        # Here, in the host namespace: the bench namespace has no route to PyPI.
        procs.ensure_drayage()
    if args._wan is not None or args.no_wan:
        return inner(args)
    return outer(args, argv if argv is not None else sys.argv[1:])


# Outer: namespaces and cleanup


class _Terminated(BaseException):
    """SIGTERM or SIGHUP: like KeyboardInterrupt, not caught by `except Exception`."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signal.Signals(signum).name)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _install_signal_handlers() -> None:
    # Explicit, so Ctrl-C works even when started with SIGINT ignored (e.g. `cmd &` in a script).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGHUP, _raise_terminated)


def _ignore_signals() -> None:
    """While cleaning up, a second Ctrl-C must not cut the cleanup short."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def outer(args: argparse.Namespace, argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("bench: the WAN emulation needs root (network namespaces); use --no-wan or --smoke", file=sys.stderr)
        return 2
    for tool in ("ip", "tc", "nsenter", "docker-registry"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found", file=sys.stderr)
            return 2
    args.work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="mirror-bench-", dir=args.work_dir))
    wan = netns.Wan.names()
    child: subprocess.Popen[bytes] | None = None
    cleaned = False

    def cleanup() -> None:
        nonlocal cleaned
        if cleaned:
            return
        cleaned = True
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        _stop_recorded(run_dir / "pids")
        wan.delete()
        if args.keep:
            print(f"bench: kept {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)

    atexit.register(cleanup)
    _install_signal_handlers()
    try:
        wan.create(args.wan_rate)
        print(f"bench: namespaces {wan.up_ns} / {wan.client_ns}, {wan.qdisc()}", flush=True)
        command = netns.in_ns(
            wan.client_ns, sys.executable, "-m", "bench", *argv, *wan.as_args(), "--_run-dir", str(run_dir)
        )
        child = subprocess.Popen(command, cwd=REPO)
        try:
            return child.wait(args.total_timeout)
        except subprocess.TimeoutExpired:
            print(f"bench: total timeout {args.total_timeout}s reached, stopping", file=sys.stderr)
            return 124
    except (KeyboardInterrupt, _Terminated) as exc:
        # The inner process got the same Ctrl-C (same process group) and is cleaning up.
        print(f"bench: interrupted ({type(exc).__name__}), cleaning up", file=sys.stderr)
        _ignore_signals()
        if child is not None and isinstance(exc, KeyboardInterrupt):
            # Ctrl-C reached the inner process too (same process group): let it clean up first.
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(30)
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(60)
        return 130
    finally:
        _ignore_signals()
        cleanup()


def _stop_recorded(pid_file: Path) -> None:
    """Stop, by PID, processes the inner bench started and did not stop (it was killed)."""
    if not pid_file.exists():
        return
    for line in pid_file.read_text().splitlines():
        pid_text, _, program = line.partition(" ")
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_text)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            if Path(cmdline).name != Path(program).name and Path(program).name != "nsenter":
                continue  # the PID was reused by something else
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)


# Inner: the benchmark itself


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_GiB": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "os": _os_release(),
    }


def _public_argv() -> list[str]:
    """The user's flags, without the ones the outer process adds for the inner one."""
    argv, out, skip = sys.argv[1:], [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--_wan", "--_run-dir"):
            skip = True
        else:
            out.append(arg)
    return out


def _git_state() -> str:
    """The mirror code measured: commit, and whether the working tree differed from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "mirror"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


def inner(args: argparse.Namespace) -> int:
    own_run_dir = args.run_dir is None
    if own_run_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="mirror-bench-", dir=args.work_dir))
    else:
        run_dir = Path(args.run_dir)
    procs.set_pid_file(run_dir / "pids")
    _install_signal_handlers()
    atexit.register(procs.stop_all)
    try:
        return _run(args, run_dir)
    except (KeyboardInterrupt, _Terminated):
        print("bench: interrupted, stopping processes", file=sys.stderr)
        return 130
    finally:
        _ignore_signals()
        procs.stop_all()
        if own_run_dir:
            if args.keep:
                print(f"bench: kept {run_dir}", file=sys.stderr)
            else:
                shutil.rmtree(run_dir, ignore_errors=True)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _run(args: argparse.Namespace, run_dir: Path) -> int:
    started = time.monotonic()
    wan = netns.Wan.from_arg(args._wan) if args._wan else None
    target_names = [t for t in args.targets.split(",") if t]
    scenario_ids = [s for s in args.scenarios.split(",") if s]

    if wan is not None:
        upstream = procs.Upstream(run_dir / "upstream", host=netns.UP_ADDRESS, port=5000, netns=wan.up_ns)
    else:
        upstream = procs.Upstream(run_dir / "upstream", port=procs.free_port())
    upstream.start()
    log(f"upstream {upstream.url} (pid {upstream.process.pid if upstream.process else '?'})")

    pusher = seed.Pusher(upstream.url)
    try:
        layer_bytes = int(args.layer_mb * 1024 * 1024)
        image = seed.push_image(pusher, run_dir / "seed", "library/bench", "v1", [layer_bytes] * args.layers, seed=1)
        log(f"seeded {image.repository}:{image.tag}: {args.layers} x {args.layer_mb} MiB, {image.size} bytes")
        big_blob = rss_blob = accel_image = signed = layers_image = None
        if "5" in scenario_ids:
            big_blob = seed.push_raw_blob(pusher, run_dir / "seed", "library/bigblob", args.big_blob_mb << 20, seed=5)
            log(f"seeded a {args.big_blob_mb} MiB blob")
        if "6" in scenario_ids:
            rss_blob = seed.push_raw_blob(pusher, run_dir / "seed", "library/hugeblob", args.rss_blob_mb << 20, seed=6)
            log(f"seeded a {args.rss_blob_mb} MiB blob")
        if "4" in scenario_ids and "mirror" in target_names:
            signed = signing.sign_image(pusher, run_dir / "signing", image)
            log(f"signed {image.repository}@{image.digest}: {signed.signature_tag}, policy {signed.policy}")
        if "8" in scenario_ids:
            accel_image = seed.push_image(
                pusher, run_dir / "seed", "library/accel", "v1", [args.accel_layer_mb << 20], seed=8
            )
            log(f"seeded {accel_image.repository}:{accel_image.tag}: 1 x {args.accel_layer_mb} MiB")
        if "11" in scenario_ids:
            sizes = [args.ahead_layer_mb << 20] * args.ahead_layers
            layers_image = seed.push_image(pusher, run_dir / "seed", "library/layers", "v1", sizes, seed=11)
            log(f"seeded {layers_image.repository}:{layers_image.tag}: {args.ahead_layers} x {args.ahead_layer_mb} MiB")
    finally:
        pusher.close()

    targets = {name: procs.TARGET_CLASSES[name](name, upstream, run_dir / name) for name in target_names}
    accel_rate = accel_rate_of(args)
    ctx = Context(
        args,
        run_dir,
        upstream,
        wan,
        image,
        targets,
        big_blob,
        rss_blob,
        accel_image,
        accel_rate,
        signed,
        layers_image,
        log=log,
    )
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "versions": {name: target.version() for name, target in targets.items()}
            | {"nginx": nginx.Nginx.version(), "skopeo": procs.version_of(["skopeo", "--version"])}
            | ({"h2load": procs.version_of(["h2load", "--version"])} if h2load.available() else {}),
            "settings": {
                "smoke": args.smoke,
                "wan": None if wan is None else {"rate": args.wan_rate, "qdisc": wan.qdisc(), "upstream": upstream.url},
                "image": {"layers": args.layers, "layer_MiB": args.layer_mb, "bytes": image.size},
                "cold_clients": args.cold_clients,
                "warm_clients": args.warm_clients,
                "tag_requests": args.tag_requests,
                "tag_connections": args.tag_connections,
                "tag_rounds": args.tag_rounds,
                "tag_threads": args.tag_workers,
                "big_blob_MiB": args.big_blob_mb,
                "rss_blob_MiB": args.rss_blob_mb,
                "rss_clients": args.rss_clients,
                "rss_wan_rate": args.rss_wan_rate,
                "ttfb_rounds": args.ttfb_rounds,
                "accel_image": None
                if accel_image is None
                else {"layer_MiB": args.accel_layer_mb, "bytes": accel_image.size},
                "accel_rate_Bps": accel_rate,
                "accel_rate": args.accel_rate or f"1/8 of {args.wan_rate}",
                "layers_image": None
                if layers_image is None
                else {"layers": args.ahead_layers, "layer_MiB": args.ahead_layer_mb, "bytes": layers_image.size},
                "client_workers": args.workers,
                "fleet_clients": args.fleet_clients,
                "mirror_tag_ttl": procs.Mirror.tag_ttl,
            },
            "mirror_source": _git_state(),
            "command": " ".join([".venv/bin/python -m bench", *_public_argv()]),
            "loadavg_at_start": os.getloadavg(),
            "targets": target_names,
            "scenarios": scenario_ids,
        },
        "scenarios": {},
    }
    try:
        for sid in scenario_ids:
            title, fn = SCENARIOS[sid]
            log(f"scenario {sid}: {title}")
            scenario_started = time.monotonic()
            results["scenarios"][sid] = {"title": title, "results": fn(ctx)}
            results["scenarios"][sid]["seconds"] = time.monotonic() - scenario_started
            for target in targets.values():
                target.stop()
    finally:
        for target in targets.values():
            target.stop()
        upstream.stop()
        results["meta"]["runtime_s"] = time.monotonic() - started
        results["meta"]["loadavg_at_end"] = os.getloadavg()
        results["meta"]["notes"] = ctx.notes

    out_dir = args.out or (BENCH_DIR / "out" if args.smoke or args.no_wan else BENCH_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "smoke-" if args.smoke else ""
    (out_dir / f"{name}results.json").write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    (out_dir / f"{name}RESULTS.md").write_text(report.render(results))
    problems = report.check_mirror(results, smoke=args.smoke)
    log(f"wrote {out_dir / (name + 'RESULTS.md')} and {name}results.json in {time.monotonic() - started:.0f}s")
    for problem in problems:
        log(f"PROBLEM: {problem}")
    if args.smoke:
        print("smoke: FAIL" if problems else "smoke: OK", flush=True)
        return 1 if problems else 0
    return 0
