"""Warm manifests answered by the HTTP protocol itself (`mirror.http.server`, `mirror.http.fastpath`).

The protocol answers a warm manifest without the ASGI app, and answers a request whose bytes
it has seen before without parsing them again. Its answers must be the app's, but for the
Date; and every request it passes on (a query, a body, HTTP/1.0, pipelining) must still get
the app's answer on a connection that stays in step.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
from support import Image, MirrorProcess, Pusher, Registry


def raw_request(path: str, *, method: str = "GET", accept: str = "", extra: str = "", version: str = "1.1") -> bytes:
    head = f"{method} {path} HTTP/{version}\r\nHost: mirror\r\nUser-Agent: fastpath-test\r\n"
    if accept:
        head += f"Accept: {accept}\r\n"
    return (head + extra + "\r\n").encode()


class Connection:
    """One raw keep-alive connection: send bytes as they are, read whole responses."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = 0 if method == "HEAD" else int(headers["content-length"])
        while len(self.buffer) < length:
            self._read()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def exchange(self, data: bytes, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        self.send(data)
        return self.response(method)

    def _read(self) -> None:
        data = self.sock.recv(65536)
        assert data, "connection closed"
        self.buffer += data


def without_date(headers: dict[str, str]) -> dict[str, str]:
    """The headers that must be the same for every answer: not the date, nor the request's own id."""
    return {name: value for name, value in headers.items() if name not in ("date", "x-request-id")}


def warm(mirror: MirrorProcess, image: Image, path: str) -> None:
    response = httpx.get(f"{mirror.url}{path}", headers={"Accept": image.media_type})
    assert response.status_code == 200 and response.headers["x-cache"] == "MISS"


def remembered(mirror: MirrorProcess, image: Image, path: str) -> bytes:
    """A request for a warm manifest, sent once so that the mirror remembers its bytes."""
    warm(mirror, image, path)
    request = raw_request(path, accept=image.media_type)
    with Connection(mirror.port) as connection:
        assert connection.exchange(request)[2] == image.manifest  # parsed, then remembered
    return request


def test_protocol_answers_are_the_apps(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    demo = images["demo"]
    path = "/v2/library/demo/manifests/latest"
    warm(mirror, demo, path)
    before = mirror.stats()
    with Connection(mirror.port) as connection:
        # First parsed and answered by the protocol, then remembered and answered unparsed.
        answers = [connection.exchange(raw_request(path, accept=demo.media_type)) for _ in range(3)]
        # A query string takes the app's road (routing, Request, Response).
        by_app = connection.exchange(raw_request(path + "?ns=docker.io", accept=demo.media_type))
        heads = [
            connection.exchange(raw_request(path, method="HEAD", accept=demo.media_type), "HEAD") for _ in range(2)
        ]
    for status, headers, body in [*answers, by_app]:
        assert status == 200
        assert body == demo.manifest
        assert without_date(headers) == without_date(by_app[1])
        assert headers["date"] and headers["x-request-id"]
    assert len({headers["x-request-id"] for _, headers, _ in [*answers, by_app]}) == 4, "each answer its own id"
    assert by_app[1]["x-cache"] == "HIT"
    assert by_app[1]["docker-content-digest"] == demo.digest
    for status, headers, body in heads:
        assert (status, body) == (200, b"")
        assert without_date(headers) == without_date(by_app[1])
    after = mirror.stats()
    assert after["protocol_answers"] - before["protocol_answers"] == 5, "all but the query answered by the protocol"
    assert after["manifest_hits"] - before["manifest_hits"] == 6
    assert after["requests"] - before["requests"] == 6
    assert after["bytes_served_from_cache"] - before["bytes_served_from_cache"] == 4 * len(demo.manifest)
    # An odd Accept (questions are remembered, so they are kept small) takes the app's road.
    odd = demo.media_type + ", " + ", ".join(f"application/x-{n}" for n in range(100))
    with Connection(mirror.port) as connection:
        status, headers, body = connection.exchange(raw_request(path, accept=odd))
    assert (status, body, headers["x-cache"]) == (200, demo.manifest, "HIT")
    assert mirror.stats()["protocol_answers"] == after["protocol_answers"]


def test_requests_passed_on_keep_the_connection_in_step(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    demo = images["demo"]
    path = "/v2/library/demo/manifests/latest"
    warm(mirror, demo, path)
    digest, blob = next(iter(demo.blobs.items()))
    manifest = raw_request(path, accept=demo.media_type)
    with Connection(mirror.port) as connection:
        connection.exchange(manifest)  # now remembered
        # Pipelined: four requests in one send, answered in order.
        connection.send(
            manifest
            + raw_request(f"/v2/library/demo/blobs/{digest}")
            + raw_request(path, method="HEAD", accept=demo.media_type)
            + manifest
        )
        assert connection.response()[2] == demo.manifest
        assert connection.response()[2] == blob
        assert connection.response("HEAD")[1]["docker-content-digest"] == demo.digest
        assert connection.response()[2] == demo.manifest
        # A body (which a GET may carry) goes to the app, which reads past it.
        status, _, body = connection.exchange(
            raw_request(path, accept=demo.media_type, extra="Content-Length: 5\r\n") + b"hello"
        )
        assert (status, body) == (200, demo.manifest)
        # A head that arrives in pieces is parsed as usual.
        connection.send(manifest[:20])
        time.sleep(0.05)
        assert connection.exchange(manifest[20:])[2] == demo.manifest
        assert connection.exchange(manifest)[2] == demo.manifest
    with Connection(mirror.port) as connection:
        status, _, body = connection.exchange(raw_request(path, accept=demo.media_type, version="1.0"))
        assert (status, body) == (200, demo.manifest)


def test_a_remembered_first_request_disarms_the_head_timer(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    demo = images["demo"]
    path = "/v2/library/demo/manifests/latest"
    config = 'head_timeout = "1s"'
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, server_config=config).start()
    try:
        request = remembered(process, demo, path)
        with Connection(process.port) as connection:
            assert connection.exchange(request)[2] == demo.manifest  # remembered, on a new connection
            time.sleep(1.5)  # past head_timeout, within keep-alive
            assert connection.exchange(request)[2] == demo.manifest
    finally:
        process.stop()


def test_keep_alive_holds_while_answers_flow_and_ends_when_idle(
    mirror: MirrorProcess, images: dict[str, Image]
) -> None:
    # Answers from memory leave the keep-alive timer (5 s) armed; it must look at the last answer.
    demo = images["demo"]
    request = remembered(mirror, demo, "/v2/library/demo/manifests/latest")
    with Connection(mirror.port) as connection:
        started = time.monotonic()
        while time.monotonic() - started < 7:
            assert connection.exchange(request)[2] == demo.manifest
            time.sleep(0.5)
        idle_since = time.monotonic()
        connection.sock.settimeout(15)
        assert connection.sock.recv(1) == b"", "an idle connection is closed"
        assert 4 < time.monotonic() - idle_since < 10


def test_remembered_requests_still_expire_with_the_tag_ttl(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    with Pusher(registry.url) as pusher:
        first = pusher.image("library/moving", "v1", [4096], seed=810)
    path = "/v2/library/moving/manifests/v1"
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config='tag_ttl = "1s"').start()
    try:
        warm(process, first, path)
        request = raw_request(path, accept=first.media_type)
        with Connection(process.port) as connection:
            for _ in range(3):
                assert connection.exchange(request)[1]["docker-content-digest"] == first.digest
            with Pusher(registry.url) as pusher:
                second = pusher.image("library/moving", "v1", [4096], seed=811)
            mark = registry.mark()
            time.sleep(1.2)
            for _ in range(3):
                assert connection.exchange(request)[1]["docker-content-digest"] == second.digest
        # One revalidation for all three: a HEAD, then a GET of the new manifest.
        manifest_requests = [method for method, path, _ in registry.requests_since(mark) if "/manifests/" in path]
        assert manifest_requests == ["HEAD", "GET"]
    finally:
        process.stop()


def test_protocol_answers_are_logged(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    demo = images["demo"]
    path = "/v2/library/demo/manifests/latest"
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, server_config='log_level = "info"').start()
    try:
        warm(process, demo, path)
        with Connection(process.port) as connection:
            for _ in range(3):
                connection.exchange(raw_request(path, accept=demo.media_type))
        deadline = time.monotonic() + 5
        while True:
            lines = [line for line in process.log_path.read_text().splitlines() if "mirror.access" in line]
            hits = [
                line for line in lines if f'"GET {path}" 200 {len(demo.manifest)} ' in line and "HIT docker.io" in line
            ]
            if len(hits) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(hits) == 3, lines
        assert all(line.split("mirror.access: ")[1].startswith("127.0.0.1 ") for line in hits)
    finally:
        process.stop()


def test_only_whole_requests_at_a_message_boundary_are_remembered(
    mirror: MirrorProcess, images: dict[str, Image]
) -> None:
    # A chunk that completes a head begun by an earlier chunk must not be remembered as the
    # request it looks like: every other client sending those bytes would get this answer.
    demo, oci = images["demo"], images["oci"]
    accept = f"{demo.media_type}, {oci.media_type}"
    demo_path, oci_path = "/v2/library/demo/manifests/latest", "/v2/library/ocidemo/manifests/latest"
    for image, path in ((demo, demo_path), (oci, oci_path)):
        response = httpx.get(f"{mirror.url}{path}", headers={"Accept": accept})
        assert response.headers["docker-content-digest"] == image.digest
    looks_like_demo = raw_request(demo_path, accept=accept)
    with Connection(mirror.port) as connection:
        connection.send(raw_request(demo_path, accept=accept) + f"GET {oci_path} HTTP/1.1\r\nX-A: ".encode())
        time.sleep(0.1)
        connection.send(looks_like_demo)  # ends the oci request's head
        assert connection.response()[1]["docker-content-digest"] == demo.digest
        assert connection.response()[1]["docker-content-digest"] == oci.digest
        # Line ends alone, then a request: the line ends are no request.
        connection.send(b"\r\n\r\n")
        time.sleep(0.1)
        assert connection.exchange(raw_request(oci_path, accept=accept))[1]["docker-content-digest"] == oci.digest
    for _ in range(2):
        with Connection(mirror.port) as connection:
            assert connection.exchange(looks_like_demo)[1]["docker-content-digest"] == demo.digest
    with Connection(mirror.port) as connection:
        connection.send(b"\r\n\r\n")
        connection.sock.settimeout(0.5)
        try:
            data = connection.sock.recv(1)
        except TimeoutError:
            data = b""
        assert data == b"", "line ends alone get no answer"


def test_a_request_after_an_answer_in_the_same_chunk_is_not_timed_out(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    # The answer arms the keep-alive timer (5 s); the blob request after it, in the same
    # chunk, is served by the app for longer than that while the client reads slowly.
    demo = images["demo"]
    with Pusher(registry.url) as pusher:
        big = pusher.image("library/bigger", "v1", [24 * 1024 * 1024], seed=820)
    digest, data = max(big.blobs.items(), key=lambda item: len(item[1]))
    path = "/v2/library/demo/manifests/latest"
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, server_config='log_level = "warning"').start()
    try:
        warm(process, demo, path)
        assert httpx.get(f"{process.url}/v2/library/bigger/blobs/{digest}").content == data
        process.wait_idle()
        with Connection(process.port) as connection:
            connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            connection.send(
                raw_request(path, accept=demo.media_type) + raw_request(f"/v2/library/bigger/blobs/{digest}")
            )
            time.sleep(6.5)  # not reading: the blob's response waits on the client
            assert connection.response()[2] == demo.manifest
            assert connection.response()[2] == data
    finally:
        process.stop()


def test_a_refusal_is_never_written_into_a_response_under_way(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    # A blob response the client is slow to read, then the start of a head that never ends:
    # the head timeout must not put a 408 in the middle of the blob's bytes.
    with Pusher(registry.url) as pusher:
        big = pusher.image("library/bigger", "v1", [24 * 1024 * 1024], seed=820)
    digest, data = max(big.blobs.items(), key=lambda item: len(item[1]))
    config = 'log_level = "warning"\nhead_timeout = "1s"'
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, server_config=config).start()
    try:
        assert httpx.get(f"{process.url}/v2/library/bigger/blobs/{digest}").content == data
        process.wait_idle()
        with Connection(process.port) as connection:
            connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            connection.send(raw_request(f"/v2/library/bigger/blobs/{digest}"))
            time.sleep(0.2)
            connection.send(b"GET /v2/ HT")  # a later chunk: the head timer starts
            time.sleep(2.5)  # past head_timeout, the blob still waiting on the client
            status, _, body = connection.response()
            assert (status, body == data) == (200, True)
            assert connection.buffer == b""
            connection.sock.settimeout(10)
            assert connection.sock.recv(1) == b"", "the connection ends after the response"
    finally:
        process.stop()


def test_nothing_is_answered_after_a_message_that_ends_the_connection(
    mirror: MirrorProcess, images: dict[str, Image]
) -> None:
    # A chunked request whose trailer says Connection: close: the parser drops what follows,
    # so a remembered request after it must not be answered either.
    demo = images["demo"]
    path = "/v2/library/demo/manifests/latest"
    request = remembered(mirror, demo, path)
    before = mirror.stats()["protocol_answers"]
    with Connection(mirror.port) as connection:
        chunked = raw_request(path, accept=demo.media_type, extra="Transfer-Encoding: chunked\r\n")
        connection.send(chunked + b"0\r\nConnection: close\r\n\r\n")
        assert connection.response()[2] == demo.manifest
        time.sleep(0.1)
        connection.send(request)
        connection.sock.settimeout(1)
        try:
            data = connection.sock.recv(65536)
        except TimeoutError:
            data = b""
        assert not data.startswith(b"HTTP/1.1 200"), data[:200]
    assert mirror.stats()["protocol_answers"] == before
