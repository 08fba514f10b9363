"""An upstream that paces each connection: nginx in front of the real registry, with `limit_rate`.

CDNs and registries often cap what one connection gets; this reproduces that on loopback,
and its access log says exactly how many body bytes the upstream served, to whom, for
which Range.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from support import ByPid, Registry, free_port, start_server
from tools import tool

# One JSON object per request; nginx escapes the values (escape=json).
_LOG_FORMAT = (
    "log_format paced escape=json '{"
    '"method":"$request_method","uri":"$request_uri","status":$status,'
    '"range":"$http_range","bytes":$body_bytes_sent,"seconds":$request_time,"ended":$msec,'
    '"request_id":"$http_x_request_id"'
    "}';"
)
_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


@dataclass(frozen=True)
class PacedRequest:
    """One request as nginx logged it, when it ended (or was cut)."""

    method: str
    uri: str
    status: int
    range: str  # the request's Range header, "" without one
    body_bytes: int  # body bytes nginx sent to the client ($body_bytes_sent)
    seconds: float  # from the request's first byte to the log line ($request_time)
    ended: float  # when it ended, seconds since the epoch ($msec)
    request_id: str = ""  # the request's X-Request-Id

    @property
    def started(self) -> float:
        return self.ended - self.seconds


class PacedUpstream(ByPid):
    """Debian's nginx as a reverse proxy in front of `registry`, each request paced at `rate`.

    `rate` is nginx's `limit_rate`: bytes per second for each request (so for each HTTP/1.1
    connection), with nginx's units: "2m" is 2 MiB/s, "512k" is 512 KiB/s. nginx paces only
    buffered responses (with `proxy_buffering off` it ignores `limit_rate`), so responses
    are buffered in memory alone (`proxy_max_temp_file_size 0`, its few proxy_buffers):
    nginx reads from the registry only a little ahead of what it sends, the pace is what the
    client (the mirror) receives, and a cut client stops the transfer. Range requests pass
    through untouched (the registry answers 206).

    Use it as a context manager; nginx runs in the foreground, stopped by its PID, with its
    config, pid file, logs and temp paths under `directory`:

        with PacedUpstream(registry, tmp_path / "paced", rate="8m") as upstream:
            mirror = MirrorProcess(tmp_path / "m", {"docker.io": upstream.url})
            ...
            assert upstream.body_bytes(digest) <= 1.05 * size
            assert [r.range for r in upstream.blob_gets(digest)] == ["", "bytes=1234-"]

    A request is logged when it ends, also when the client cut it: after stopping a client,
    `wait_for(...)` until its line is there.
    """

    def __init__(self, registry: Registry, directory: Path, rate: str = "2m", path: str = "") -> None:
        self.registry = registry
        self.directory = directory
        self.rate = rate  # "0": unpaced
        self.path = path  # the registry's API below this path, as Artifactory and Nexus serve it
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def log_path(self) -> Path:
        return self.directory / "access.log"

    def start(self) -> PacedUpstream:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nginx.conf"
        conf.write_text(self._config())
        argv = [tool("nginx"), "-c", str(conf), "-p", str(self.directory), "-e", str(self.directory / "error.log")]
        self.process = start_server(argv, self.directory / "stderr.log", self.port)
        return self

    def __enter__(self) -> PacedUpstream:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _config(self) -> str:
        d = self.directory
        temp = "".join(f"  {kind}_temp_path {d / kind};\n" for kind in _TEMP_KINDS)
        backend = self.registry.url.removeprefix("http://")
        return (
            "daemon off;\nworker_processes 1;\n"
            f"pid {d / 'nginx.pid'};\nerror_log {d / 'error.log'} warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  {_LOG_FORMAT}\n"
            f"  access_log {self.log_path} paced;\n{temp}"
            "  server {\n"
            f"    listen 127.0.0.1:{self.port};\n"
            "    client_max_body_size 0;\n"
            # Below a path, nginx swaps the path for "/" on the way to the registry.
            f"    location {self.path}/ {{\n"
            f"      proxy_pass http://{backend}{'/' if self.path else ''};\n"
            "      proxy_set_header Host $http_host;\n"
            "      proxy_http_version 1.1;\n"  # keep-alive to the registry, Range passed as sent
            '      proxy_set_header Connection "";\n'
            "      proxy_buffering on;\n"
            "      proxy_max_temp_file_size 0;\n"
            f"      limit_rate {self.rate};\n"
            "    }\n"
            "  }\n"
            "}\n"
        )

    def requests(self) -> list[PacedRequest]:
        """Every request nginx has logged so far, in the order they ended."""
        if not self.log_path.exists():
            return []
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            record = json.loads(line)
            found.append(
                PacedRequest(
                    record["method"],
                    record["uri"],
                    record["status"],
                    record["range"],
                    record["bytes"],
                    float(record["seconds"]),
                    float(record["ended"]),
                    record.get("request_id", ""),
                )
            )
        return found

    def blob_gets(self, digest: str) -> list[PacedRequest]:
        """The GETs of one blob, in the order they ended."""
        return [r for r in self.requests() if r.method == "GET" and r.uri.split("?")[0].endswith(f"/blobs/{digest}")]

    def body_bytes(self, digest: str | None = None) -> int:
        """Body bytes served: for GETs of one blob, or for every request."""
        requests = self.requests() if digest is None else self.blob_gets(digest)
        return sum(r.body_bytes for r in requests)

    def wait_for(self, digest: str, count: int, timeout: float = 20.0) -> list[PacedRequest]:
        """Wait until `count` GETs of a blob are logged; return them."""
        deadline = time.monotonic() + timeout
        while len(gets := self.blob_gets(digest)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx logged {len(gets)} GETs of {digest}, not {count}")
            time.sleep(0.05)
        return gets
