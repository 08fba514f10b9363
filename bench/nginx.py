"""nginx, run like every other process of the bench: scenario 5's static reference and
scenario 8's paced proxy in front of the upstream."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import AccessLogged, free_port, spawn, stop, version_of, wait_http


@dataclass
class Nginx:
    """Debian nginx in the foreground by PID (no master), every path under `root`; subclasses
    give the `http {}` directives and the server block."""

    root: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    netns: str | None = None
    process: subprocess.Popen[bytes] | None = None
    ready_path = "/"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def http_directives(self) -> str:
        raise NotImplementedError

    def server_block(self) -> str:
        raise NotImplementedError

    def start(self) -> Nginx:
        self.root.mkdir(parents=True, exist_ok=True)
        temp = {name: self.root / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir(exist_ok=True)
        config = self.root / "nginx.conf"
        config.write_text(
            "daemon off;\nmaster_process off;\nworker_processes 1;\n"
            f"pid {self.root / 'nginx.pid'};\nerror_log {self.root / 'error.log'} warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n" + self.http_directives() + "  default_type application/octet-stream;\n"
            f"  client_body_temp_path {temp['body']};\n  proxy_temp_path {temp['proxy']};\n"
            f"  fastcgi_temp_path {temp['fastcgi']};\n  uwsgi_temp_path {temp['uwsgi']};\n"
            f"  scgi_temp_path {temp['scgi']};\n"
            f"  server {{\n    listen {self.host}:{self.port};\n{self.server_block()}  }}\n}}\n"
        )
        self.process = spawn(
            [self.binary(), "-c", str(config), "-e", str(self.root / "error.log"), "-p", str(self.root)],
            log=self.root / "nginx.out",
            netns=self.netns,
        )
        wait_http(self.url + self.ready_path, self.process)
        return self

    def stop(self) -> None:
        stop(self.process)
        self.process = None

    @staticmethod
    def binary() -> str:
        """Debian's nginx is in /usr/sbin, which a non-root PATH often lacks."""
        return shutil.which("nginx") or "/usr/sbin/nginx"

    @staticmethod
    def available() -> bool:
        return Path(Nginx.binary()).exists()

    @staticmethod
    def version() -> str:
        return version_of([Nginx.binary(), "-v"])


@dataclass
class StaticNginx(Nginx):
    """nginx serving one directory with sendfile: scenario 5's physical reference."""

    serve_dir: Path = Path("/nonexistent")

    def http_directives(self) -> str:
        return "  access_log off;\n  sendfile on;\n  tcp_nopush on;\n"

    def server_block(self) -> str:
        return f"    root {self.serve_dir};\n"


@dataclass
class PacedProxy(Nginx, AccessLogged):
    """nginx in front of the upstream registry sending each response at `rate` bytes/s
    (`limit_rate`, per request, so per connection), like a CDN that paces each connection.

    Range goes through to the registry untouched (nginx forwards the client's headers, and
    without a cache it neither applies nor strips ranges). Buffering stays on, since nginx
    1.22 does not apply limit_rate to unbuffered proxied responses, but with no temp file, so
    nginx reads from the registry only a few buffers ahead of what it sends. Its access log
    (combined format, `$body_bytes_sent`) is what the targets were served: UpstreamMeter reads
    it like the registry's own. nginx lets each response start with one second's worth at once."""

    backend: str = ""
    rate: int = 0
    ready_path = "/v2/"

    @property
    def log_path(self) -> Path:
        return self.root / "access.log"

    def start(self) -> PacedProxy:
        super().start()
        # nginx logs the readiness request just after answering it: let that line land before
        # a meter marks the log, or the first target is charged for it.
        deadline = time.monotonic() + 5
        while self.log_lines() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def http_directives(self) -> str:
        return (
            '  log_format bench \'$remote_addr - - [$time_local] "$request" $status $body_bytes_sent '
            'range="$http_range" upstream=$upstream_status t=$request_time\';\n'
            f"  access_log {self.log_path} bench;\n"
        )

    def server_block(self) -> str:
        return (
            "    location / {\n"
            f"      proxy_pass {self.backend};\n"
            "      proxy_http_version 1.1;\n"
            '      proxy_set_header Connection "";\n'
            "      proxy_set_header Host $http_host;\n"
            "      proxy_max_temp_file_size 0;\n"
            "      proxy_read_timeout 600s;\n"
            "      send_timeout 600s;\n"
            f"      limit_rate {self.rate};\n"
            "    }\n"
        )
