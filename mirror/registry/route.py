"""The Registry API's path grammar: the one reading of a request's path and `?ns=`.

Every part that judges or serves a repository request (access control, the fast path, the
route, the access log) reads the `ApiPath` parsed here once per request, so what is checked
is exactly what is served.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from mirror.registry.errors import BadRequest, NotFound

CATALOG_PATH = "/v2/_catalog"
API_ROOTS = ("/v2", "/v2/")
KINDS = ("manifests", "blobs", "referrers", "tags")

# <name>/manifests/<reference>, <name>/blobs/<digest>, <name>/referrers/<digest>, <name>/tags/list;
# the name is the shortest prefix that leaves one of these tails.
_PATH = re.compile(
    r"(?P<name>[^/].*?)/(?:(?P<kind>manifests|blobs|referrers)/(?P<reference>[^/]+)|(?P<tags>tags)/list)"
)


@dataclass(frozen=True, slots=True)
class ApiPath:
    """A repository request: `/v2/<name>/<kind>/<reference>`, with its one `?ns=` if any."""

    name: str  # as the path spells it: may start with a registry host (`ghcr.io/org/app`)
    kind: str  # manifests, blobs, referrers or tags
    reference: str  # a tag or digest as written; "" for tags/list
    ns: str | None  # the registry `?ns=` names (containerd's mirror convention)

    @property
    def route(self) -> str:
        """As the access log and histograms name it: manifest, blob, referrers, tags."""
        return {"manifests": "manifest", "blobs": "blob"}.get(self.kind, self.kind)


def parse_api_path(path: str, query_string: bytes) -> ApiPath | None:
    """The repository request `path` makes, or None for a path that names no repository
    (outside /v2/, the API root, the catalog).

    Raises NotFound for another /v2/ path and BadRequest for a `ns` that is repeated or empty:
    two readings of one request are never left to two readers.
    """
    if not path.startswith("/v2/") or path in API_ROOTS or path == CATALOG_PATH:
        return None
    match = _PATH.fullmatch(path, 4)
    if match is None:
        raise NotFound("no such registry API route")
    kind = match["kind"] or "tags"
    return ApiPath(match["name"], kind, match["reference"] or "", namespace_of(query_string))


def namespace_of(query_string: bytes) -> str | None:
    """The one `ns` a query names, or None; repeated or empty is a BadRequest."""
    if not query_string:
        return None
    values = [value for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True) if key == "ns"]
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest("ns is given more than once", detail={"ns": [value[:100] for value in values[:4]]})
    if not values[0]:
        raise BadRequest("ns is empty: name the registry (ns=docker.io) or leave it out")
    return values[0]
