"""Request heads are bounded in size and time; slow readers cannot grow the mirror's memory."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

import httpx
from support import Image, MirrorProcess, Registry


def rss_mib(process: MirrorProcess) -> float:
    assert process.process is not None
    status = Path(f"/proc/{process.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def read_reply(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return reply


def test_oversized_request_head_is_refused(mirror: MirrorProcess) -> None:
    before = rss_mib(mirror)
    with socket.create_connection(("127.0.0.1", mirror.port)) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(64):  # up to 64 MiB of headers
                sock.sendall(b"X-Junk: " + b"a" * (1 << 20) + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 431")
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["errors"][0]["code"] == "UNKNOWN"
    with socket.create_connection(("127.0.0.1", mirror.port)) as sock:  # a URL of 1 MiB
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /v2/" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(sock).startswith((b"HTTP/1.1 431", b"HTTP/1.1 400"))
    assert rss_mib(mirror) - before < 10


def test_slow_request_head_times_out(tmp_path: Path, registry: Registry) -> None:
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, server_config='head_timeout = "1s"').start()
    try:
        with socket.create_connection(("127.0.0.1", process.port)) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /v2/ HT")  # and then nothing, as a slowloris would
            reply = read_reply(sock)
            assert reply.startswith(b"HTTP/1.1 408")
            error = json.loads(reply.partition(b"\r\n\r\n")[2])["errors"][0]
            assert error["code"] == "UNKNOWN" and "not received within 1 s" in error["message"]
            assert time.monotonic() - started < 5
        assert httpx.get(f"{process.url}/v2/").status_code == 200  # others are served meanwhile
    finally:
        process.stop()


def test_crlf_in_a_name_cannot_inject_headers(mirror: MirrorProcess) -> None:
    with socket.create_connection(("127.0.0.1", mirror.port)) as sock:
        sock.sendall(b"GET /v2/library/x%0d%0aSet-Cookie:%20evil/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = read_reply(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.1 400", b"HTTP/1.1 404"))
    assert b'"errors"' in body
    assert b"set-cookie" not in head.lower()


def test_a_client_that_does_not_read_costs_no_memory(
    mirror: MirrorProcess, registry: Registry, images: dict[str, Image]
) -> None:
    from support import Pusher

    with Pusher(registry.url) as pusher:
        digest = pusher.blob("library/slowreader", bytes(range(256)) * (256 * 1024))  # 64 MiB
    httpx.get(f"{mirror.url}/v2/library/slowreader/blobs/{digest}", timeout=60)
    mirror.wait_idle()
    before = rss_mib(mirror)
    with socket.create_connection(("127.0.0.1", mirror.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /v2/library/slowreader/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(2)  # read nothing
        grown = rss_mib(mirror) - before
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    assert grown < 16, f"the mirror grew by {grown:.1f} MiB for a client that reads nothing"


def test_keep_alive_mixes_heads_gets_and_ranges_on_one_connection(
    mirror: MirrorProcess, images: dict[str, Image]
) -> None:
    # Response heads are held back to leave with their body in one send(); a HEAD has no
    # body, so its head must still go out, in order, before the next answer.
    demo = images["demo"]
    digest, data = max(demo.blobs.items(), key=lambda item: len(item[1]))
    manifest_url = f"{mirror.url}/v2/library/demo/manifests/latest"
    with httpx.Client(headers={"Accept": demo.media_type}) as client:
        for _ in range(3):
            assert client.head(manifest_url).headers["docker-content-digest"] == demo.digest
            assert client.get(manifest_url).content == demo.manifest
            assert client.head(f"{mirror.url}/v2/library/demo/blobs/{digest}").headers["content-length"] == str(
                len(data)
            )
            assert client.get(f"{mirror.url}/v2/library/demo/blobs/{digest}").content == data
            ranged = client.get(f"{mirror.url}/v2/library/demo/blobs/{digest}", headers={"Range": "bytes=5-9"})
            assert ranged.content == data[5:10]
            assert client.get(f"{mirror.url}/v2/nosuch/x/blobs/sha256:{'0' * 64}").status_code == 404
