"""Egress proxy settings as an operator writes them: proxy URLs and the environment's variables.

The rules that pick a proxy per request live in `mirror.upstream.egress`; this module reads,
validates and masks, so that the config can check and print them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PROXY_SCHEMES = ("http", "https")


class ProxyURLError(ValueError):
    """A proxy URL that cannot be used; the message says why."""


def parse_proxy_url(value: str) -> str:
    """A proxy URL as Go reads it: scheme-less means http://. Returns it normalised."""
    value = value.strip()
    parts = urlsplit(value)
    if not parts.scheme or not parts.netloc:
        parts = urlsplit("http://" + value)
    if parts.scheme not in PROXY_SCHEMES:
        raise ProxyURLError(f"proxy scheme {parts.scheme!r} is not supported; use http:// or https://")
    try:
        if not parts.hostname:
            raise ProxyURLError("the proxy URL names no host")
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ProxyURLError(f"not a proxy URL: {mask_url(value)}") from exc
    return parts.geturl()


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***`: safe to log and to print.

    Read from the raw text, not parsed: a password with an unescaped `/`, `?` or `#`, or a
    URL without a scheme, would fool a URL parser into showing it.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{separator}{userinfo.partition(':')[0]}:***@{host}"


@dataclass(frozen=True, kw_only=True)
class ProxyEnvironment:
    """The proxy variables of a process environment, read once at start-up."""

    http_proxy: str | None = field(default=None, repr=False)
    https_proxy: str | None = field(default=None, repr=False)
    no_proxy: str = ""
    cgi: bool = False  # REQUEST_METHOD is set: Go then ignores HTTP_PROXY (httpoxy)

    def __repr__(self) -> str:
        return f"ProxyEnvironment({self.masked()!r}, cgi={self.cgi})"

    @classmethod
    def read(cls, env: Mapping[str, str]) -> ProxyEnvironment:
        def first(*names: str) -> str | None:
            return next((env[name] for name in names if env.get(name)), None)

        return cls(
            http_proxy=first("HTTP_PROXY", "http_proxy"),
            https_proxy=first("HTTPS_PROXY", "https_proxy"),
            no_proxy=first("NO_PROXY", "no_proxy") or "",
            cgi=bool(env.get("REQUEST_METHOD")),
        )

    def masked(self) -> dict[str, str]:
        shown = {"HTTP_PROXY": self.http_proxy, "HTTPS_PROXY": self.https_proxy, "NO_PROXY": self.no_proxy}
        return {name: mask_url(value) for name, value in shown.items() if value}
