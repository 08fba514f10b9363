"""Optional client access control: htpasswd (bcrypt) Basic auth for the registry API and admin pages.

Docker-style clients first call `/v2/`, get `401` with a Basic challenge, and retry with the
credential (`docker login` does exactly that). Successful checks are cached for a few minutes,
keyed by a hash of the header, because bcrypt is deliberately slow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from pathlib import Path

import anyio.to_thread
import bcrypt
from cachetools import TTLCache
from starlette.types import ASGIApp, Receive, Scope, Send

from mirror.config import ConfigError
from mirror.http.responses import raw_error
from mirror.registry.errors import Unauthorized

log = logging.getLogger(__name__)

ADMIN_PREFIXES = ("/stats", "/metrics", "/api/")
ADMIN_PATHS = ("/",)
ADMIN_DIRECTORIES = ("/static/",)


CATALOG_PATH = "/v2/_catalog"


def load_htpasswd(path: Path, key: str) -> dict[str, bytes]:
    """user → bcrypt hash; any other hash kind is refused, naming the line."""
    users: dict[str, bytes] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not hashed.startswith(("$2y$", "$2b$", "$2a$")):
            raise ConfigError(key, f"{path} line {number}: expected user:bcrypt-hash (htpasswd -B)")
        users[user] = hashed.encode()
    return users


class Htpasswd:
    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self._verified: TTLCache[bytes, str] = TTLCache(maxsize=1024, ttl=300)

    async def check(self, authorization: str | None) -> bool:
        if not authorization or authorization[:6].lower() != "basic ":
            return False
        key = hashlib.sha256(authorization.encode()).digest()
        if key in self._verified:
            return True
        try:
            user, _, password = base64.b64decode(authorization[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        if not await anyio.to_thread.run_sync(bcrypt.checkpw, password.encode(), hashed):
            return False
        self._verified[key] = user
        return True


class AccessControl:
    """ASGI middleware: registry clients need `clients`, admin pages need `admins` (when set)."""

    def __init__(self, app: ASGIApp, *, clients: Htpasswd | None, admins: Htpasswd | None) -> None:
        self.app = app
        self.clients = clients
        self.admins = admins

    def _guard(self, path: str) -> tuple[Htpasswd | None, str]:
        if path == CATALOG_PATH:  # repository names can be private
            return self.admins, "mirror admin"
        if path == "/v2" or path.startswith("/v2/"):
            return self.clients, "mirror"
        if path in ADMIN_PATHS or path.startswith(ADMIN_PREFIXES) or path.startswith(ADMIN_DIRECTORIES):
            return self.admins, "mirror admin"
        return None, ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard, realm = self._guard(scope["path"])
        if guard is None:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
        if await guard.check(authorization):
            await self.app(scope, receive, send)
            return
        refusal = Unauthorized(headers={"WWW-Authenticate": f'Basic realm="{realm}"'})
        headers, body = raw_error(refusal)
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
