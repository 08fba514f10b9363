"""Optional client access control: htpasswd (bcrypt) Basic auth for the registry API and admin
pages, and per-repository read rules (`[[auth.rules]]`).

Docker-style clients first call `/v2/`, get `401` with a Basic challenge, and retry with the
credential (`docker login` does exactly that). Successful checks are cached for a few minutes,
keyed by a hash of the header, because bcrypt is deliberately slow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from cachetools import TTLCache
from starlette.types import ASGIApp, Receive, Scope, Send

from mirror.config import AccessRule, AuthConfig, ConfigError
from mirror.http.responses import raw_error
from mirror.http.target import Target, target_of
from mirror.logins import LoginError, LoginKeys
from mirror.registry.errors import Denied, NotFound, RegistryError, TooManyRequests, Unauthorized
from mirror.registry.patterns import Patterns
from mirror.registry.route import API_ROOTS, CATALOG_PATH

log = logging.getLogger(__name__)

ADMIN_PREFIXES = ("/stats", "/metrics", "/api/")
ADMIN_PATHS = ("/",)
ADMIN_DIRECTORIES = ("/static/",)
ADMIN_REALM = "mirror admin"


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


# Failed logins a client may make for one user in FAILURE_WINDOW seconds; past that it is told
# to wait (429) before bcrypt runs again. bcrypt runs at most BCRYPT_AT_ONCE at a time, so a
# flood of wrong passwords cannot take the threads and cores other clients' requests need.
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0
BCRYPT_AT_ONCE = 2


class Htpasswd:
    """Logins: htpasswd users (bcrypt), and temporary logins signed with `login_keys`."""

    def __init__(self, users: dict[str, bytes], login_keys: LoginKeys | None = None) -> None:
        self.users = users
        self.login_keys = login_keys
        self._verified: TTLCache[bytes, str] = TTLCache(maxsize=1024, ttl=300)
        self._failures: TTLCache[tuple[str, str], int] = TTLCache(maxsize=16384, ttl=FAILURE_WINDOW)
        self._bcrypt: anyio.CapacityLimiter | None = None  # made on the event loop, at the first login
        import bcrypt  # only with htpasswd users: its library is ~0.4 MiB resident

        # An unknown user's password is checked against this, at the users' own cost: both take as long.
        costs = sorted(int(hashed[4:6]) for hashed in users.values() if hashed[4:6].isdigit())
        self._dummy = bcrypt.hashpw(b"no such user", bcrypt.gensalt(rounds=costs[len(costs) // 2] if costs else 5))

    async def check(self, authorization: str | None, client: str = "-") -> str | None:
        """The user a Basic credential logs in, or None; the credential itself is never logged."""
        return (await self.login(authorization, client))[0]

    async def login(self, authorization: str | None, client: str = "-") -> tuple[str | None, str | None]:
        """The user a Basic credential logs in, or None and why (for a temporary login that expired).

        Raises TooManyRequests once `client` failed MAX_FAILURES times for that user in the window.
        """
        if not authorization or authorization[:6].lower() != "basic ":
            return None, None
        key = hashlib.sha256(authorization.encode()).digest()
        if key in self._verified:
            return self._verified[key], None
        try:
            user, _, password = base64.b64decode(authorization[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        failed = (client, user)
        if self._failures.get(failed, 0) >= MAX_FAILURES:
            raise TooManyRequests(
                f"too many failed logins for {user[:100]!r} from this address: wait a minute",
                headers={"Retry-After": str(int(FAILURE_WINDOW))},
            )
        temporary = self.login_keys is not None and password.count(".") == 2
        hashed = self.users.get(user)
        # bcrypt reads 72 bytes, as `htpasswd -B` did when it made the hash; bcrypt>=4.1 raises on more.
        secret = password.encode()[:72]
        if hashed is not None and await self._checkpw(secret, hashed):
            self._verified[key] = user  # a temporary login is checked every time: it may be revoked
            return user, None
        if hashed is None and not temporary:
            await self._checkpw(secret, self._dummy)  # as long as a known user's wrong password takes
        if temporary:
            assert self.login_keys is not None
            try:
                self.login_keys.verify(user, password)
            except LoginError as exc:
                self._failed(failed)
                return None, str(exc)
            return user, None
        self._failed(failed)
        return None, None

    async def _checkpw(self, secret: bytes, hashed: bytes) -> bool:
        import bcrypt  # loaded by __init__ already

        if self._bcrypt is None:
            self._bcrypt = anyio.CapacityLimiter(BCRYPT_AT_ONCE)
        return await anyio.to_thread.run_sync(bcrypt.checkpw, secret, hashed, limiter=self._bcrypt)

    def _failed(self, failed: tuple[str, str]) -> None:
        self._failures[failed] = self._failures.get(failed, 0) + 1


class AccessRules:
    """`[[auth.rules]]`: which users ("*": everyone, anonymous too) read which `<registry>/<repository>`."""

    def __init__(self, rules: tuple[AccessRule, ...]) -> None:
        self._rules = [(frozenset(rule.users), Patterns.of(rule.repositories)) for rule in rules]
        self.anonymous_reads = any("*" in users for users, _ in self._rules)

    def allows(self, user: str | None, name: str) -> bool:
        """Whether `user` (None: anonymous) may read the repository `name` (`docker.io/library/alpine`)."""
        return any(("*" in users or user in users) and patterns.match(name) for users, patterns in self._rules)


# What containers/image sends with no credentials (`--src-no-creds`): an empty user and password.
_EMPTY_BASIC = frozenset({b"basic og==", b"basic"})


@dataclass
class AccessSettings:
    """What AccessControl enforces; replaced whole by a reload (SIGHUP)."""

    clients: Htpasswd | None = None
    admins: Htpasswd | None = None
    rules: AccessRules | None = None

    def take(self, other: AccessSettings) -> None:
        """Enforce `other` from the next request on (the middleware keeps this object)."""
        self.clients, self.admins, self.rules = other.clients, other.admins, other.rules


def access_settings(auth: AuthConfig) -> AccessSettings:
    """The settings an `[auth]` table makes; reads the htpasswd files (ConfigError names the key)."""
    login_keys = LoginKeys(auth.login_keys) if auth.login_keys is not None else None
    clients = None
    if auth.htpasswd is not None or login_keys is not None:
        users = load_htpasswd(auth.htpasswd, "auth.htpasswd") if auth.htpasswd is not None else {}
        clients = Htpasswd(users, login_keys)
    admins = Htpasswd(load_htpasswd(auth.admin_htpasswd, "auth.admin_htpasswd")) if auth.admin_htpasswd else None
    rules = AccessRules(auth.rules) if auth.rules else None
    return AccessSettings(clients, admins, rules)


def _open_admin_refusal(settings: AccessSettings, scope: Scope) -> RegistryError | None:
    """Why an admin path is refused when no `admin_htpasswd` guards it, or None to let it through.

    Where clients log in or rules decide who reads what, the admin pages (which list and change
    what the cache holds) are closed until admins have logins of their own. On an open mirror
    everything is readable anyway; changes come only from this host (the CLI), never from afar.
    """
    if settings.clients is not None or settings.rules is not None:
        return Denied(
            "the admin API and dashboard are closed while client logins or [[auth.rules]] are on "
            "and [auth] admin_htpasswd is not set: set it to open them to admins"
        )
    client = scope.get("client")
    if scope["method"] not in ("GET", "HEAD") and not (client and is_loopback(client[0])):
        return Denied("changes to the cache come from this host only: set [auth] admin_htpasswd to make them from afar")
    return None


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


class AccessControl:
    """ASGI middleware: registry clients need `clients` (when set) and a rule that grants the
    repository (when `rules` are set); admin pages need `admins` (when set). The settings are
    read at every request, so a reload takes effect on the next one."""

    def __init__(self, app: ASGIApp, *, settings: AccessSettings) -> None:
        self.app = app
        self.settings = settings

    def _guard(self, settings: AccessSettings, path: str) -> tuple[Htpasswd | None, str]:
        if path == CATALOG_PATH:  # repository names can be private
            return settings.admins, ADMIN_REALM
        if path in API_ROOTS or path.startswith("/v2/"):
            return settings.clients, "mirror"
        if path in ADMIN_PATHS or path.startswith(ADMIN_PREFIXES) or path.startswith(ADMIN_DIRECTORIES):
            return settings.admins, ADMIN_REALM
        return None, ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        settings = self.settings
        guard, realm = self._guard(settings, path)
        if realm == ADMIN_REALM and guard is None:
            closed = _open_admin_refusal(settings, scope)
            if closed is not None:
                await self._refuse(send, closed)
                return
        rules = settings.rules if realm == "mirror" else None
        if guard is None and rules is None:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization" and value.strip().lower() not in _EMPTY_BASIC:
                authorization = value.decode("latin-1")
        client = (scope.get("client") or ("-", 0))[0]
        try:
            user, why = await guard.login(authorization, client) if guard is not None else (None, None)
        except RegistryError as exc:  # too many failed logins
            await self._refuse(send, exc)
            return
        # `/v2/` challenges every client that has not logged in, as Docker Hub does: a client told
        # 200 there never sends its login afterwards (containers/image does not). A client that
        # has none carries on anonymously, and the rules decide per repository.
        anonymous_may = rules is not None and rules.anonymous_reads and path not in API_ROOTS
        if guard is not None and user is None and (authorization is not None or not anonymous_may):
            challenge = {"WWW-Authenticate": f'Basic realm="{realm}"'}
            await self._refuse(send, Unauthorized(why or Unauthorized.message, headers=challenge))
            return
        if rules is not None and path not in API_ROOTS:
            target = target_of(scope)  # the one reading of this request, which the route serves
            if not isinstance(target, Target):  # fail closed: what cannot be read one way is not served
                await self._refuse(send, target if isinstance(target, RegistryError) else NotFound())
                return
            if not rules.allows(user, target.read):
                if user is None:  # anonymous: ask for a login, which may be granted it
                    refusal: RegistryError = Unauthorized(
                        f"log in to read {target.read}", headers={"WWW-Authenticate": f'Basic realm="{realm}"'}
                    )
                else:
                    refusal = Denied(f"{user} may not read {target.read}: no [[auth.rules]] grants it")
                await self._refuse(send, refusal)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(send: Send, refusal: RegistryError) -> None:
        headers, body = raw_error(refusal)
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
