"""Why an upstream could not be reached, in words an operator can act on.

A bare `ConnectError` says nothing on an intranet's first day: each cause below names the
host and port it was about and the setting that usually fixes it.
"""

from __future__ import annotations

import socket

import httpx


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def diagnose(exc: httpx.HTTPError, upstream: str, where: str, *, via_proxy: bool) -> tuple[str, str | None]:
    """(what went wrong at `where`, and what to do; the setting that fixes it, if one does)."""
    table = f'[upstreams."{upstream}"]'
    causes = _causes(exc)
    text = " ".join(str(cause) for cause in causes)
    host = where.rsplit(":", 1)[0]
    lookup_failed = ("Name or service not known", "Temporary failure in name resolution", "No address associated")
    if any(isinstance(cause, socket.gaierror) for cause in causes) or any(words in text for words in lookup_failed):
        return (
            f"name resolution failed for {host}: this host cannot look it up. On a network without "
            f"internet, set {table} url to a registry it can reach (an internal one); or go out through "
            "an egress proxy (HTTPS_PROXY, or proxy in that table)",
            "url",
        )
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes) or "Connection refused" in text:
        return (f"{where} refused the connection: nothing listens there; check {table} url and its port", "url")
    if isinstance(exc, httpx.ConnectTimeout):
        hint = (
            "the proxy did not answer in time"
            if via_proxy
            else (
                "a firewall may drop the traffic: an egress proxy (HTTPS_PROXY, or proxy in that table) may be needed"
            )
        )
        return (f"no answer from {where} within {table} connect_timeout; {hint}", "proxy")
    if isinstance(exc, httpx.ReadTimeout):
        return (f"{where} stopped answering for longer than {table} read_timeout", "read_timeout")
    if isinstance(exc, httpx.ConnectError):
        return (f"cannot connect to {where}: {str(exc)[:200] or type(exc).__name__}", None)
    return (f"{type(exc).__name__}{': ' + str(exc)[:200] if str(exc) else ''}", None)
