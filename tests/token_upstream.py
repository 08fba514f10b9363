"""A Docker Hub look-alike from real parts: distribution with token auth and a CDN redirect.

The token issuer signs RS256 JWTs with a test key whose certificate the registry trusts,
exactly the Docker Hub flow; the CDN is a static file server rooted at the registry's
storage, which the registry's `redirect` middleware sends blob downloads to.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from support import Registry

SERVICE = "test-registry"
ISSUER = "test-issuer"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]


class _Server:
    """A threaded HTTP server on a free loopback port, stopped by `stop`."""

    def __init__(self, handler: type[SimpleHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@dataclass
class TokenIssuer:
    """Issues pull tokens; with `credentials` (or several `accounts`), only to clients that present one."""

    root: Path
    credentials: tuple[str, str] | None = None
    accounts: dict[str, str] = field(default_factory=dict)  # more user → password pairs it accepts
    lifetime: int = 300
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.cert_path = self.root / "token-cert.pem"
        self.rotate_key()
        issuer = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests.append(Recorded("GET", self.path, dict(self.headers.items())))
                status, body = issuer.answer(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(Handler)

    def rotate_key(self) -> None:
        """A new signing key and certificate: tokens signed before no longer verify."""
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @property
    def realm(self) -> str:
        return f"{self.server.url}/token"

    def stop(self) -> None:
        self.server.stop()

    def answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        query = parse_qs(urlsplit(path).query)
        accounts = dict(self.accounts)
        if self.credentials is not None:
            accounts[self.credentials[0]] = self.credentials[1]
        if accounts:
            accepted = {"Basic " + base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in accounts.items()}
            if authorization not in accepted:
                return 401, {"details": "incorrect username or password"}
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        return 200, {"token": self.sign(access), "expires_in": self.lifetime}

    def sign(self, access: list[dict[str, Any]]) -> str:
        cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(cert_der).decode()]}
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": "mirror-test",
            "aud": SERVICE,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": _b64(now.to_bytes(8, "big") + id(access).to_bytes(8, "big")),
            "access": access,
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"


def token_user(recorded: Recorded) -> str | None:
    """The user a token request logged in as, from its Basic credential."""
    authorization = recorded.headers.get("Authorization", "")
    if not authorization.startswith("Basic "):
        return None
    return base64.b64decode(authorization[6:]).decode().partition(":")[0]


class StaticCDN:
    """Serves the registry's storage directory, recording every request and its headers."""

    def __init__(self, directory: Path) -> None:
        self.requests: list[Recorded] = []
        cdn = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)

            def send_head(self) -> Any:
                cdn.requests.append(Recorded(self.command, self.path, dict(self.headers.items())))
                return super().send_head()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(Handler)

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()

    def blob_gets(self) -> list[str]:
        return [r.path.split("/")[-2] for r in self.requests if r.method == "GET" and r.path.endswith("/data")]


def enable_token_auth(registry: Registry, issuer: TokenIssuer, cdn: StaticCDN | None) -> None:
    """Restart a seeded registry with token auth (and the CDN redirect) switched on."""
    registry.stop()
    config = (
        "auth:\n  token:\n"
        f"    realm: {issuer.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
        f"    rootcertbundle: {issuer.cert_path}\n"
    )
    if cdn is not None:
        config += f"middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {cdn.url}/\n"
    registry.extra_config = config
    registry.start()
