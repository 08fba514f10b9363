"""Registry errors as data: each carries the spec's code, an HTTP status and a detail."""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """An error the client sees as the distribution spec's JSON error body."""

    code = "UNKNOWN"
    status = 500
    message = "unknown error"

    def __init__(
        self,
        message: str | None = None,
        *,
        detail: Any = None,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if message is not None:
            self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.detail = detail
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"errors": [error]}


class NameInvalid(RegistryError):
    code, status, message = "NAME_INVALID", 400, "invalid repository name"


class NameUnknown(RegistryError):
    code, status, message = "NAME_UNKNOWN", 404, "repository name not known to registry"


class DigestInvalid(RegistryError):
    code, status, message = "DIGEST_INVALID", 400, "provided digest did not match uploaded content"


class ManifestInvalid(RegistryError):
    code, status, message = "MANIFEST_INVALID", 400, "manifest invalid"


class TagInvalid(RegistryError):
    code, status, message = "TAG_INVALID", 400, "manifest tag did not match URI"


class ManifestUnknown(RegistryError):
    code, status, message = "MANIFEST_UNKNOWN", 404, "manifest unknown"


class BlobUnknown(RegistryError):
    code, status, message = "BLOB_UNKNOWN", 404, "blob unknown to registry"


class RangeInvalid(RegistryError):
    code, status, message = "RANGE_INVALID", 416, "invalid content range"


class Unsupported(RegistryError):
    code, status, message = "UNSUPPORTED", 405, "the operation is unsupported"


class BadRequest(RegistryError):
    """A request the mirror cannot read one way only (a repeated or empty `ns`, a body too large)."""

    code, status, message = "UNSUPPORTED", 400, "bad request"


class NotFound(RegistryError):
    code, status, message = "NOT_FOUND", 404, "not found"


class Unauthorized(RegistryError):
    code, status, message = "UNAUTHORIZED", 401, "authentication required"


class Denied(RegistryError):
    code, status, message = "DENIED", 403, "requested access to the resource is denied"


class TooManyRequests(RegistryError):
    code, status, message = "TOOMANYREQUESTS", 429, "too many requests"


class UpstreamUnavailable(RegistryError):
    """The upstream could not be reached or failed, and nothing usable is cached."""

    code, status, message = "UNAVAILABLE", 503, "upstream registry unavailable"


class Offline(UpstreamUnavailable):
    """The mirror is offline for this upstream: it never dials it, and what was asked is not cached."""

    message = "the mirror is offline and this is not cached"


class UpstreamFailed(RegistryError):
    """The upstream broke off or sent bytes that do not match their digest."""

    code, status, message = "UPSTREAM_FAILED", 502, "upstream download failed"


class RequestTimeout(RegistryError):
    """A client sent no complete request head in time (the spec has no code of its own for it)."""

    code, status, message = "UNKNOWN", 408, "request head not received in time"


class HeadersTooLarge(RegistryError):
    code, status, message = "UNKNOWN", 431, "request head too large"


class DownloadFailed(UpstreamFailed):
    """Raised to readers of a download that broke off or did not verify."""


class NoRoom(Exception):
    """The cache cannot take this blob (larger than max_size, or the disk is full): stream it uncached."""


class PaginationNumberInvalid(RegistryError):
    code, status, message = "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"


# The upstream's failures after which a cached answer (a tag, a list) is served rather than the error.
FALLBACK_ERRORS = (UpstreamUnavailable, TooManyRequests)
