"""TLS toward an upstream: the system's trust store, a private CA, a client certificate.

By default the system store is trusted, as OpenSSL finds it (`/etc/ssl/certs`, where
`update-ca-certificates` writes, or `SSL_CERT_FILE`/`SSL_CERT_DIR` when set), not certifi's
bundle, so a company CA installed on the machine is trusted as it is by curl and Docker.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import certifi

from mirror.config.values import no_passphrase

log = logging.getLogger(__name__)


def system_store_present() -> bool:
    """Whether OpenSSL's default trust locations hold anything at all."""
    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile):
        return True
    if not (paths.capath and os.path.isdir(paths.capath)):
        return False
    with os.scandir(paths.capath) as entries:
        return any(entries)


def ssl_context(ca_file: Path | None, client_cert: Path | None, client_key: Path | None) -> ssl.SSLContext:
    """The context for one upstream: the system store, plus `ca_file`, plus the client certificate."""
    context = ssl.create_default_context()
    if not system_store_present():
        # A machine without ca-certificates: public registries still work.
        log.warning("no system trust store found (ca-certificates not installed?); trusting certifi's bundle")
        context.load_verify_locations(cafile=certifi.where())
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    if client_cert is not None:
        context.load_cert_chain(str(client_cert), str(client_key) if client_key else None, password=no_passphrase)
    return context


class Trust:
    """One upstream's TLS context, built at its first connection rather than at start-up.

    The system store alone is ~1.2 MiB resident once loaded (every CA certificate, parsed), and
    a plain-http upstream that never redirects to https never needs it. With a `ca_file` or a
    client certificate it is built at once, so a file that cannot be read stops the start-up.
    """

    def __init__(self, ca_file: Path | None, client_cert: Path | None, client_key: Path | None) -> None:
        self._files = (ca_file, client_cert, client_key)
        self._context: ssl.SSLContext | None = None
        if ca_file is not None or client_cert is not None:
            self.context()

    def context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = ssl_context(*self._files)
        return self._context


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind an httpx/httpcore error, if there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def explain(error: ssl.SSLError, upstream: str, where: str) -> tuple[str, str]:
    """A message naming the upstream and what fixes it, and the setting that does."""
    table = f'[upstreams."{upstream}"]'
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = error.verify_message or error.reason or "verification failed"
        return (
            f"upstream {upstream}: the TLS certificate of {where} is not trusted ({reason}). "
            f"Set {table} ca_file to the CA that signed it (a TLS-inspecting proxy's CA, or the "
            "registry's private CA), or add that CA to the system trust store (update-ca-certificates)",
            "ca_file",
        )
    reason = error.reason or str(error)
    if "CERTIFICATE" in reason.upper() or "HANDSHAKE" in reason.upper():
        return (
            f"upstream {upstream}: {where} refused the TLS handshake ({reason}); if it requires a client "
            f"certificate, set {table} client_cert and client_key",
            "client_cert",
        )
    return f"upstream {upstream}: TLS with {where} failed ({reason})", "ca_file"
