"""Draining on SIGTERM: /readyz says 503 at once, work in flight finishes, then the server exits."""

from __future__ import annotations

import hashlib
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pacing import PacedUpstream
from support import MirrorProcess, Pusher, Registry

MiB = 1 << 20
BLOB_SIZE = 48 * MiB
RATE = "8m"  # per connection: the blob takes 6 s
ONE_STREAM = "max_connections_per_blob = 1"  # whatever the download engine can do, one connection


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def push_blob(registry: Registry, seed: int) -> str:
    with Pusher(registry.url) as pusher:
        return pusher.blob("library/drain", random.Random(seed).randbytes(BLOB_SIZE))


def partial_path(mirror: MirrorProcess, digest: str) -> Path:
    return mirror.cache_dir / "partial" / "sha256" / digest.split(":")[1]


class Stream(threading.Thread):
    """A client streaming one blob, hashing it as it comes."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.received = 0
        self.digest: str | None = None
        self.error: httpx.HTTPError | None = None
        self.ended = 0.0

    def run(self) -> None:
        hasher = hashlib.sha256()
        try:
            with httpx.stream("GET", self.url, timeout=60) as response:
                response.raise_for_status()
                for chunk in response.iter_raw():
                    hasher.update(chunk)
                    self.received += len(chunk)
            self.digest = "sha256:" + hasher.hexdigest()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.ended = time.monotonic()


def terminate(mirror: MirrorProcess, stop: signal.Signals = signal.SIGTERM) -> float:
    """Send the signal; when it was sent."""
    assert mirror.process is not None
    mirror.process.send_signal(stop)
    return time.monotonic()


def exit_code(mirror: MirrorProcess, timeout: float) -> int:
    assert mirror.process is not None
    try:
        return mirror.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the mirror did not exit within {timeout} s") from None


def readyz(mirror: MirrorProcess) -> httpx.Response:
    return httpx.get(f"{mirror.url}/readyz", timeout=5)


def test_readyz_says_ready_while_serving(mirror: MirrorProcess) -> None:
    response = readyz(mirror)
    assert (response.status_code, response.json()) == (200, {"ready": True})
    assert httpx.get(f"{mirror.url}/healthz").json() == {"status": "ok"}


def test_sigterm_lets_a_stream_finish(
    paced_upstream: Callable[[str], PacedUpstream], registry: Registry, tmp_path: Path
) -> None:
    digest = push_blob(registry, seed=1201)
    upstream = paced_upstream(RATE)
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": upstream.url}, upstream_config=ONE_STREAM, drain_timeout="30s")
    try:
        mirror.start()
        stream = Stream(f"{mirror.url}/v2/library/drain/blobs/{digest}")
        stream.start()
        wait_until(lambda: stream.received >= 8 * MiB)
        signalled = terminate(mirror)
        answer = readyz(mirror)
        assert (answer.status_code, answer.json()) == (503, {"ready": False, "draining": True})
        assert httpx.get(f"{mirror.url}/healthz").status_code == 200, "still alive"
        at_signal = stream.received
        wait_until(lambda: stream.received >= at_signal + 4 * MiB)  # the stream goes on
        assert readyz(mirror).status_code == 503
        assert httpx.get(f"{mirror.url}/v2/").status_code == 200, "new requests are still served"

        code = exit_code(mirror, timeout=30)
        exited = time.monotonic()
        stream.join(10)
        assert stream.error is None and stream.digest == digest
        assert code == 0
        print(f"drain: {exited - signalled:.2f} s; exit {exited - stream.ended:.2f} s after the stream ended")
        assert exited - signalled < 20, "well within drain_timeout"
        assert exited - stream.ended < 2, "exits once idle, not at drain_timeout"
        assert mirror.blob_path(digest).exists(), "the download finished during the drain"
        log = mirror.log_path.read_text()
        assert "SIGTERM: draining" in log and "drained in" in log
    finally:
        mirror.stop()


def test_drain_timeout_keeps_the_partial_for_the_next_start(
    paced_upstream: Callable[[str], PacedUpstream], registry: Registry, tmp_path: Path
) -> None:
    digest = push_blob(registry, seed=1202)
    upstream = paced_upstream(RATE)
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": upstream.url}, upstream_config=ONE_STREAM, drain_timeout="1s")
    partial = partial_path(mirror, digest)
    url = f"{mirror.url}/v2/library/drain/blobs/{digest}"
    try:
        mirror.start()
        stream = Stream(url)
        stream.start()
        wait_until(lambda: stream.received >= 4 * MiB)
        signalled = terminate(mirror)
        code = exit_code(mirror, timeout=10)
        drained = time.monotonic() - signalled
        stream.join(10)
        print(f"drain with drain_timeout 1 s: exit {drained:.2f} s after SIGTERM, {partial.stat().st_size} bytes kept")
        assert 1.0 <= drained < 10 and code == 0
        assert stream.error is not None, "the stream was cut"
        assert partial.exists() and partial.stat().st_size >= 4 * MiB
        assert not mirror.blob_path(digest).exists(), "nothing looks complete"
        assert "drain ended by drain_timeout (1 s)" in mirror.log_path.read_text()

        upstream.wait_for(digest, 1)  # nginx logs the cut request once it sees the close
        mirror.start()
        body = httpx.get(url, timeout=60).content
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
        mirror.wait_idle()
        first, resumed = upstream.wait_for(digest, 2)
        assert resumed.status == 206 and resumed.range.startswith("bytes=") and resumed.range != "bytes=0-"
        served = upstream.body_bytes(digest)
        print(f"upstream served {served / BLOB_SIZE:.4f} x the blob ({first.body_bytes} + {resumed.body_bytes})")
        assert served <= 1.05 * BLOB_SIZE
    finally:
        mirror.stop()


def test_a_second_sigterm_ends_the_drain_at_once(
    paced_upstream: Callable[[str], PacedUpstream], registry: Registry, tmp_path: Path
) -> None:
    digest = push_blob(registry, seed=1203)
    upstream = paced_upstream("2m")
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": upstream.url}, upstream_config=ONE_STREAM, drain_timeout="30s")
    try:
        mirror.start()
        stream = Stream(f"{mirror.url}/v2/library/drain/blobs/{digest}")
        stream.start()
        wait_until(lambda: stream.received >= MiB)
        terminate(mirror)
        wait_until(lambda: "SIGTERM: draining" in mirror.log_path.read_text())
        assert mirror.process is not None and mirror.process.poll() is None, "draining"
        second = terminate(mirror)
        code = exit_code(mirror, timeout=10)
        print(f"exit {time.monotonic() - second:.2f} s after the second SIGTERM")
        assert time.monotonic() - second < 2 and code == 0
        assert partial_path(mirror, digest).exists()
        assert "drain ended by a second signal" in mirror.log_path.read_text()
    finally:
        mirror.stop()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_idle_keep_alive_connections_do_not_hold_the_drain(
    registry: Registry, tmp_path: Path, stop: signal.Signals
) -> None:
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, drain_timeout="30s")
    try:
        mirror.start()
        with httpx.Client() as client, socket.create_connection(("127.0.0.1", mirror.port), timeout=5) as silent:
            assert client.get(f"{mirror.url}/v2/").status_code == 200  # its connection stays open, idle
            assert client.get(f"{mirror.url}/readyz").status_code == 200
            signalled = terminate(mirror, stop)
            code = exit_code(mirror, timeout=10)
            elapsed = time.monotonic() - signalled
            print(f"exit {elapsed:.2f} s after {stop.name} with two idle connections open")
            assert elapsed < 2.0 and code == 0
            assert silent.recv(1) == b"", "closed by the server"
    finally:
        mirror.stop()
