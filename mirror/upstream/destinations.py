"""Where an upstream may send the mirror: its own origin always; elsewhere only by these rules.

An upstream's answers are untrusted input, and a redirect or a token realm is a request the
upstream makes us send. So:
- a manifest, tag list or referrers answer never leaves the upstream's origin (scheme, host, port);
- a blob may go to a CDN on any host, but not to a loopback, private or link-local address
  (nor an unspecified, multicast or reserved one) unless the upstream itself is on an address
  of that kind (an intranet registry and its intranet CDN) or the host is in `redirect_hosts`.

The address rule is applied where the socket is connected (`network._connect`), to the
addresses the name resolved to then, so a name that resolves differently a moment later
cannot slip past it.
"""

from __future__ import annotations

import ipaddress
from contextvars import ContextVar
from dataclasses import dataclass

import httpx

# The request extension saying how far an answer may redirect: "origin", or "cdn" (a blob).
REDIRECTS = "mirror.redirects"
ORIGIN_ONLY = "origin"
ANY_CDN = "cdn"

PUBLIC = "public"


def category(address: str) -> str:
    """public, loopback, private, link-local, or special (unspecified, multicast, reserved)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "special"
    if ip.is_private:
        return "private"
    return PUBLIC


@dataclass(frozen=True)
class DestinationRule:
    """The address categories a connection for one redirected request may reach."""

    host: str
    upstream: str
    allowed: frozenset[str]

    def refusal(self, addresses: list[str]) -> str | None:
        """Why none of `addresses` may be dialled, or None when one may."""
        found = [category(address) for address in addresses]
        if any(kind in self.allowed for kind in found):
            return None
        kinds = ", ".join(sorted(set(found))) or "no"
        return (
            f"upstream {self.upstream} redirected to {self.host}, which resolves to {kinds} addresses: "
            f'a redirect goes there only when [upstreams."{self.upstream}"] redirect_hosts lists it'
        )


# Set for the connection a redirected request opens; None: the upstream's own origin, anything goes.
destination: ContextVar[DestinationRule | None] = ContextVar("destination", default=None)


class RedirectRefused(httpx.TransportError):
    """An upstream sent us somewhere we do not go; never retried."""
