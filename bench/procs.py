"""The processes the bench runs: upstream and proxy registries, drayage, mirror (nginx: nginx.py).

Every process is started in its own session (so Ctrl-C reaches only the bench, which then
stops them in order), recorded in `<run dir>/pids` (so the outer bench can stop stragglers
if the inner one dies) and stopped by its PID: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

_ACCESS_RE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)')

PID_FILE: Path | None = None
FLEET_SECRET = "bench-fleet-secret-0123456789"
_live: list[subprocess.Popen[bytes]] = []


def set_pid_file(path: Path) -> None:
    global PID_FILE
    PID_FILE = path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(
    argv: list[str], *, log: Path, netns: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start argv (inside the named network namespace if given), logging stdout+stderr to `log`."""
    if netns is not None:
        argv = ["nsenter", f"--net=/var/run/netns/{netns}", "--", *argv]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    _live.append(process)
    if PID_FILE is not None:
        with open(PID_FILE, "a") as pids:
            pids.write(f"{process.pid} {argv[0]}\n")
    return process


def stop(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if process is None:
        return
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process in _live:
        _live.remove(process)


def stop_all() -> None:
    for process in list(reversed(_live)):
        stop(process, timeout=5.0)


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before answering {url}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until something accepts TCP connections on 127.0.0.1:`port` (a server that speaks no HTTP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def version_of(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "unknown"


# The upstream


class AccessLogged:
    """Reads a combined-format access log (`"GET /path HTTP/1.1" 200 1234`) at `log_path`."""

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def log_lines(self) -> int:
        if not self.log_path.exists():
            return 0
        with open(self.log_path, "rb") as log:
            return sum(1 for _ in log)

    def requests_since(self, mark: int) -> list[dict[str, Any]]:
        """Requests logged after line `mark`: method, path, status, body bytes."""
        found = []
        with open(self.log_path, "rb") as log:
            for number, raw in enumerate(log):
                if number < mark:
                    continue
                match = _ACCESS_RE.search(raw.decode("latin-1"))
                if match:
                    found.append(
                        {
                            "method": match["method"],
                            "path": match["path"],
                            "status": int(match["status"]),
                            "bytes": 0 if match["bytes"] == "-" else int(match["bytes"]),
                        }
                    )
        return found


class Reachable(Protocol):
    """Anything clients pull from: a target, or a fleet of replicas."""

    @property
    def url(self) -> str: ...

    @property
    def client_urls(self) -> list[str]: ...


class Origin(Protocol):
    """What the targets pull through: the upstream registry, or the paced nginx in front of it."""

    process: subprocess.Popen[bytes] | None

    @property
    def url(self) -> str: ...

    def log_lines(self) -> int: ...

    def requests_since(self, mark: int) -> list[dict[str, Any]]: ...


@dataclass
class Upstream(AccessLogged):
    """The "remote" registry: docker-registry, optionally in its own network namespace."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 5000
    netns: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "access.log"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def start(self) -> Upstream:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.data_dir}\n"
            f"http:\n  addr: {self.host}:{self.port}\n  secret: bench-secret\n"
        )
        self.process = spawn(["docker-registry", "serve", str(config)], log=self.log_path, netns=self.netns)
        wait_http(f"{self.url}/v2/", self.process)
        return self

    def stop(self) -> None:
        stop(self.process)
        self.process = None

    def blob_path(self, digest: str) -> Path:
        hex_digest = digest.split(":", 1)[1]
        return self.data_dir / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"


# Targets


@dataclass
class Target:
    """A registry the clients pull from; `start(cache)` gives a fresh one on an empty cache."""

    name: str
    upstream: Origin
    root: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    cache: Path | None = None
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_urls(self) -> list[str]:
        return [self.url]

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start_fresh(self) -> Target:
        self.stop()
        self.restarts += 1
        self.port = free_port()
        self.cache = self.root / f"cache-{self.restarts}"
        self.cache.mkdir(parents=True, exist_ok=True)
        self._start()
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        stop(self.process)
        self.process = None
        if self.cache is not None:
            shutil.rmtree(self.cache, ignore_errors=True)
            self.cache = None

    def version(self) -> str:
        raise NotImplementedError


class Direct(Target):
    """No cache at all: the clients talk to the upstream over the WAN."""

    @property
    def url(self) -> str:
        return self.upstream.url

    @property
    def pid(self) -> int | None:
        return self.upstream.process.pid if self.upstream.process is not None else None

    def start_fresh(self) -> Target:
        return self

    def stop(self) -> None:
        pass

    def version(self) -> str:
        return "upstream " + version_of(["docker-registry", "--version"])


class Distribution(Target):
    def _start(self) -> None:
        assert self.cache is not None
        config = self.cache / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.cache / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: bench-secret\n"
            f"proxy:\n  remoteurl: {self.upstream.url}\n"
        )
        self.process = spawn(["docker-registry", "serve", str(config)], log=self.root / "distribution.log")
        wait_http(f"{self.url}/v2/", self.process)

    def version(self) -> str:
        return version_of(["docker-registry", "--version"])


def drayage_binary() -> str:
    candidate = Path(sys.executable).parent / "drayage"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("drayage")
    if found is None:
        raise RuntimeError("drayage is not installed (pip install drayage)")
    return found


def ensure_drayage() -> None:
    try:
        drayage_binary()
    except RuntimeError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "drayage"], check=True, timeout=300)


class Drayage(Target):
    def _start(self) -> None:
        assert self.cache is not None
        (self.cache / "data").mkdir(exist_ok=True)
        config = self.cache / "config.toml"
        config.write_text(
            f'listen = "127.0.0.1:{self.port}"\n'
            f'cache_dir = "{self.cache / "data"}"\n'
            "manifest_ttl_seconds = 900\n"
            # Its default, 30 s, bounds a whole upstream request: it cut scenario 8's paced
            # 512 MiB layer (~172 s on one connection) at 30 s with a 502.
            "read_timeout_secs = 3600\n"
            "[upstreams.docker_io]\n"
            f'registry = "{self.upstream.url}"\n'
        )
        self.process = spawn(
            [drayage_binary(), "serve", "--config", str(config)],
            log=self.root / "drayage.log",
            env={"RUST_LOG": "warn"},
        )
        wait_http(f"{self.url}/v2/", self.process)

    def version(self) -> str:
        return version_of([drayage_binary(), "--version"])


# The mirror logs at warning, so that no request pays for an access-log line; with a signature
# policy, the verdicts' logger alone says what it decided (once per manifest and tag_ttl).
_VERDICTS_AT_INFO = (
    "import logging, runpy; logging.getLogger('mirror.proxy.signed').setLevel(logging.INFO); "
    "runpy.run_module('mirror', run_name='__main__')"
)


class Mirror(Target):
    tag_ttl: str = "60s"
    fleet_redis: str | None = None  # scenario 10: a replica of the fleet that this Redis coordinates
    signature_policy: Path | None = None  # scenario 4's variant: [signatures] policy, enforced

    @property
    def log_path(self) -> Path:
        return self.root / "mirror.log"

    def _start(self) -> None:
        assert self.cache is not None
        config = self.cache / "config.toml"
        text = (
            f'[server]\nlisten = "127.0.0.1:{self.port}"\nlog_level = "warning"\n'
            f'[cache]\ndirectory = "{self.cache / "data"}"\ntag_ttl = "{self.tag_ttl}"\n'
            f'[upstreams."docker.io"]\nurl = "{self.upstream.url}"\n'
        )
        if self.fleet_redis is not None:
            text += f'[fleet]\nredis = "{self.fleet_redis}"\npeer_url = "{self.url}"\nsecret = "{FLEET_SECRET}"\n'
        if self.signature_policy is not None:
            text += f'[signatures]\npolicy = "{self.signature_policy}"\nmode = "enforce"\n'
        config.write_text(text)
        run = ["-m", "mirror"] if self.signature_policy is None else ["-c", _VERDICTS_AT_INFO]
        self.process = spawn(
            [sys.executable, *run, "serve", "--config", str(config)],
            log=self.log_path,
            env={"PYTHONUNBUFFERED": "1"},
            cwd=Path(__file__).resolve().parent.parent,
        )
        wait_http(f"{self.url}/healthz", self.process)

    def version(self) -> str:
        return version_of([sys.executable, "-m", "mirror", "--version"])

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/stats", timeout=5).json()
        return result


TARGET_CLASSES: dict[str, type[Target]] = {
    "direct": Direct,
    "distribution": Distribution,
    "drayage": Drayage,
    "mirror": Mirror,
}


# Memory


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as children:
                found += [int(child) for child in children.read().split()]
    except OSError:
        pass
    return found


def process_tree(pid: int) -> list[int]:
    tree: list[int] = []
    todo = [pid]
    while todo and len(tree) < 1000:
        current = todo.pop()
        tree.append(current)
        todo += _children(current)
    return tree


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process and its live descendants have used so far (clock ticks: 10 ms)."""
    ticks = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples VmRSS and open files (/proc/<pid>/fd) of a process and its descendants every
    `interval` seconds, in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss_kb = 0
        self.peak_hwm_kb = 0
        self.samples = 0
        self.max_processes = 0
        self.peak_open_files = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        tree = process_tree(self.pid)
        self.max_processes = max(self.max_processes, len(tree))
        self.peak_rss_kb = max(self.peak_rss_kb, sum(_status_kb(pid, "VmRSS") for pid in tree))
        self.peak_hwm_kb = max(self.peak_hwm_kb, sum(_status_kb(pid, "VmHWM") for pid in tree))
        self.peak_open_files = max(self.peak_open_files, sum(_open_files(pid) for pid in tree))
        self.samples += 1

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()
