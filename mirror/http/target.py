"""A request's target, read once: which upstream, repository and object a registry request asks for.

`ReadTarget` parses every request with the registry grammar (`mirror.registry.route`) before
anything else looks at it and keeps the result in the request's scope. Access control, the
warm answers, the route and the access log all read that one value: what was judged is what
is served.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from mirror.composition import Mirror
from mirror.registry.errors import RegistryError
from mirror.registry.reference import parse_name
from mirror.registry.route import ApiPath, parse_api_path
from mirror.upstream import Upstream

_STATE_KEY = "target"


@dataclass(frozen=True, slots=True)
class Target:
    """A repository request, resolved: the upstream asked and the repository there."""

    api: ApiPath
    upstream: Upstream
    name: str  # the repository as the client named it, without a registry host prefix
    repository: str  # the upstream's name for it (Docker Hub's `library/` added)

    @property
    def read(self) -> str:
        """`<registry>/<repository>`, as access rules and signature policies name what is read."""
        return f"{self.upstream.name}/{self.repository}"


def read_target(mirror: Mirror, path: str, query_string: bytes) -> Target | None:
    """The target of a registry request; None for a path that names no repository.

    Raises the RegistryError the request deserves (bad name, unknown registry, ambiguous `ns`).
    """
    api = parse_api_path(path, query_string)
    if api is None:
        return None
    upstream, name = mirror.resolve_upstream(api.name, api.ns)
    return Target(api, upstream, name, upstream.repository(parse_name(name)))


def target_of(scope: Scope) -> Target | RegistryError | None:
    """What ReadTarget made of this request: its target, the error it deserves, or None."""
    found: Target | RegistryError | None = scope.get("state", {}).get(_STATE_KEY)
    return found


class ReadTarget:
    """ASGI middleware: reads each HTTP request's target once, into its scope."""

    def __init__(self, app: ASGIApp, *, mirror: Mirror) -> None:
        self.app = app
        self.mirror = mirror

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                target: Target | RegistryError | None = read_target(self.mirror, scope["path"], scope["query_string"])
            except RegistryError as exc:
                target = exc
            scope.setdefault("state", {})[_STATE_KEY] = target
        await self.app(scope, receive, send)
