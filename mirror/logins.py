"""Temporary logins: signed tokens (JWT, HS256) that `docker login` takes as a password until they expire.

The signing keys live in one JSON file (`[auth] login_keys`), written by `mirror credentials`
and read by the server whenever it changes, so that issuing, rotating and revoking need no
restart::

    {"keys": [{"kid": "…", "secret": "<base64>", "created": 1700000000}],   newest first: it signs
     "revoked": {"<jti>": <expiry, seconds since the epoch>}}

A key id in every token lets keys rotate with overlap: tokens signed by an older key stay
valid until that key is dropped.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ALGORITHM = "HS256"
ISSUER = "mirror"


class LoginError(Exception):
    """A temporary login that is not accepted; the message says why (expired, revoked, unknown key)."""


@dataclass(frozen=True)
class Issued:
    user: str
    password: str  # the signed token
    jti: str
    expires_at: float


class LoginKeys:
    """The keys file: read (again when it changes), and changed by `mirror credentials`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._loaded: tuple[float, dict[str, Any]] | None = None

    def _data(self) -> dict[str, Any]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return {"keys": [], "revoked": {}}
        if self._loaded is None or self._loaded[0] != mtime:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
                raise LoginError(f"{self.path} is not a login keys file")
            data.setdefault("revoked", {})
            self._loaded = (mtime, data)
        return self._loaded[1]

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # secrets: the owner only
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
        os.replace(temp, self.path)
        self._loaded = None

    def rotate(self) -> str:
        """A new signing key (older ones still verify); its key id."""
        data = self._data()
        kid = secrets.token_hex(8)
        secret = base64.b64encode(secrets.token_bytes(32)).decode()
        data["keys"] = [{"kid": kid, "secret": secret, "created": int(time.time())}, *data["keys"]]
        self._write(data)
        return kid

    def drop(self, kid: str) -> bool:
        """Stop accepting tokens signed by a key."""
        data = self._data()
        kept = [key for key in data["keys"] if key.get("kid") != kid]
        if len(kept) == len(data["keys"]):
            return False
        self._write({**data, "keys": kept})
        return True

    def revoke(self, jti: str, expires_at: float | None = None) -> None:
        """End one credential before its expiry (kept in the file until it would have expired)."""
        data = self._data()
        now = time.time()
        revoked = {k: v for k, v in data["revoked"].items() if v > now}  # the expired need no entry
        revoked[jti] = expires_at if expires_at is not None else now + 366 * 86400
        self._write({**data, "revoked": revoked})

    def signing_keys(self) -> list[dict[str, Any]]:
        return list(self._data()["keys"])

    def issue(self, user: str, ttl: float) -> Issued:
        data = self._data()
        if not data["keys"]:
            self.rotate()
            data = self._data()
        key = data["keys"][0]
        now = int(time.time())
        jti = secrets.token_hex(12)
        claims = {"iss": ISSUER, "sub": user, "iat": now, "exp": now + int(ttl), "jti": jti}
        jwt = _jwt()
        token = jwt.encode(claims, base64.b64decode(key["secret"]), algorithm=ALGORITHM, headers={"kid": key["kid"]})
        return Issued(user, token, jti, float(now + int(ttl)))

    def verify(self, user: str, token: str) -> None:
        """Accept a token as `user`'s password, or raise LoginError saying why not."""
        jwt = _jwt()
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise LoginError("not a temporary login") from None
        data = self._data()
        key = next((k for k in data["keys"] if k.get("kid") == kid), None)
        if key is None:
            raise LoginError("this temporary login was signed by a key that is no longer accepted")
        try:
            claims = jwt.decode(
                token,
                base64.b64decode(key["secret"]),
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            expired = jwt.decode(token, options={"verify_signature": False}).get("exp")
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expired)) if isinstance(expired, int) else "?"
            raise LoginError(f"this temporary login expired at {when}; ask for a new one") from None
        except jwt.PyJWTError:
            raise LoginError("not a valid temporary login") from None
        if claims["sub"] != user:
            raise LoginError("this temporary login is for another user")
        if claims["jti"] in data["revoked"]:
            raise LoginError("this temporary login was revoked")


def docker_config(server: str, issued: Issued) -> str:
    """A `.dockerconfigjson` for the credential at `server`."""
    auth = base64.b64encode(f"{issued.user}:{issued.password}".encode()).decode()
    return json.dumps({"auths": {server: {"username": issued.user, "password": issued.password, "auth": auth}}})


def kubernetes_secret(name: str, server: str, issued: Issued) -> str:
    """The `kubernetes.io/dockerconfigjson` Secret for imagePullSecrets, as YAML."""
    encoded = base64.b64encode(docker_config(server, issued).encode()).decode()
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued.expires_at))
    return (
        "apiVersion: v1\n"
        "kind: Secret\n"
        "metadata:\n"
        f"  name: {json.dumps(name)}\n"
        "  annotations:\n"
        f'    mirror/expires: "{expires}"\n'
        f'    mirror/jti: "{issued.jti}"\n'
        "type: kubernetes.io/dockerconfigjson\n"
        "data:\n"
        f"  .dockerconfigjson: {encoded}\n"
    )


def _jwt() -> ModuleType:
    """PyJWT, imported at the first temporary login: it loads cryptography (several MiB resident)
    when that is installed, which a mirror without temporary logins does not need."""
    import jwt

    return jwt
