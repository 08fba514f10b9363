"""Replica-to-replica requests, signed: the fleet secret itself never leaves a replica.

A request carries `X-Mirror-Fleet-Auth: t=<unix time>, sig=<hex>`, an HMAC-SHA256 over the
method, the replica it is sent to (its peer_url's host and port), the path and the time. A
signature is good for SIGNATURE_WINDOW seconds and only at the replica it names, so a peer
URL planted in Redis receives nothing it could use at a real replica, or later.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

AUTH_HEADER = "X-Mirror-Fleet-Auth"
PEER_PATH = "/_fleet/blobs/"  # the replica-to-replica route (mirror/http/fleet.py)
SIGNATURE_WINDOW = 60.0  # seconds either way: replicas' clocks agree that closely under NTP


def _signature(secret: str, method: str, peer_url: str, path: str, at: int) -> str:
    netloc = urlsplit(peer_url).netloc.lower()
    message = f"{method.upper()}\n{netloc}\n{path}\n{at}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, method: str, peer_url: str, path: str, now: float | None = None) -> str:
    """The header value for a request to the replica at `peer_url`."""
    at = int(time.time() if now is None else now)
    return f"t={at}, sig={_signature(secret, method, peer_url, path, at)}"


def verify(secret: str, header: str, method: str, own_url: str, path: str, now: float | None = None) -> bool:
    """Whether `header` signs this request to this replica (known by its own peer_url), in time."""
    fields = dict(part.strip().partition("=")[::2] for part in header.split(",")[:2])
    at, given = fields.get("t", ""), fields.get("sig", "")
    if not at.isdigit() or len(at) > 12 or len(given) != 64:
        return False
    if abs((time.time() if now is None else now) - int(at)) > SIGNATURE_WINDOW:
        return False
    return hmac.compare_digest(given, _signature(secret, method, own_url, path, int(at)))
