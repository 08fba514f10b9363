"""Which egress proxy a request goes through: Go's `httpproxy` rules, as Docker's daemon applies them.

`HTTPS_PROXY` serves https URLs and `HTTP_PROXY` http ones (upper case wins over lower case).
No proxy is used for `localhost`, loopback addresses, or a host that `NO_PROXY` names:
`*` (everything), a CIDR range (`10.0.0.0/8`), an IP (`192.0.2.1`, `[2001:db8::1]:443`),
a domain and its subdomains (`corp.example`, `.corp.example`, `*.corp.example`; a leading dot
or `*.` leaves the domain itself out), each optionally with a port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field

import httpx

from mirror.config import ProxyEnvironment, mask_url, parse_proxy_url
from mirror.upstream.auth import origin_of
from mirror.upstream.destinations import (
    ORIGIN_ONLY,
    PUBLIC,
    REDIRECTS,
    DestinationRule,
    RedirectRefused,
    category,
    destination,
)
from mirror.upstream.network import BoundedBackend
from mirror.upstream.trust import Trust

DEFAULT_PORTS = {"http": 80, "https": 443}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class _Domain:
    suffix: str  # always starts with "."
    port: int | None
    match_host: bool  # the bare domain matches too (the entry had no leading dot)

    def matches(self, host: str, port: int) -> bool:
        found = host.endswith(self.suffix) or (self.match_host and host == self.suffix[1:])
        return found and self.port in (None, port)


@dataclass(frozen=True)
class _IP:
    address: Address
    port: int | None

    def matches(self, address: Address, port: int) -> bool:
        return address == self.address and self.port in (None, port)


@dataclass(frozen=True)
class NoProxy:
    """A parsed `NO_PROXY` list."""

    everything: bool = False
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    addresses: tuple[_IP, ...] = ()
    domains: tuple[_Domain, ...] = ()

    @classmethod
    def parse(cls, value: str) -> NoProxy:
        networks, addresses, domains = [], [], []
        for entry in (e.strip().lower() for e in value.split(",")):
            if not entry:
                continue
            if entry == "*":
                return cls(everything=True)
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    pass  # Go's ParseCIDR failed too: the entry is then read as a host
                else:
                    continue
            host, port = _split_host_port(entry)
            if not host:
                continue
            try:
                addresses.append(_IP(ipaddress.ip_address(host), port))
                continue
            except ValueError:
                pass
            if host.startswith("*."):
                host = host[1:]
            match_host = not host.startswith(".")
            domains.append(_Domain(host if host.startswith(".") else "." + host, port, match_host))
        return cls(False, tuple(networks), tuple(addresses), tuple(domains))

    def exempts(self, host: str, port: int) -> bool:
        """Whether a request to host:port goes direct."""
        host = host.strip().lower()
        if host == "localhost":
            return True
        try:
            address: Address | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            address = None
        if address is not None and _loopback(address):
            return True
        if self.everything:
            return True
        if address is not None and (
            any(address in network for network in self.networks)
            or any(entry.matches(address, port) for entry in self.addresses)
        ):
            return True
        return any(entry.matches(host, port) for entry in self.domains)


def _loopback(address: Address) -> bool:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address; a port that is not a number is kept as host."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isascii() and port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isascii() and port.isdigit():
            return host, int(port)
        if not port:
            return host, None  # `host:` matches every port, as in Go
    return entry, None


@dataclass(frozen=True)
class ProxyRoute:
    """For one upstream: which proxy (if any) each URL goes through."""

    http: str | None = field(default=None, repr=False)
    https: str | None = field(default=None, repr=False)
    no_proxy: NoProxy = field(default_factory=NoProxy)
    explicit: bool = False  # from the upstream's own `proxy` setting, not the environment

    @classmethod
    def for_upstream(cls, setting: str | None, env: ProxyEnvironment) -> ProxyRoute:
        """`setting` is the upstream's `proxy`: None follows the environment, "" is direct.

        An upstream's own proxy takes everything but localhost and loopback: the
        environment's NO_PROXY (often `*` in CI) does not undo a setting made for one upstream.
        """
        if setting == "":
            return cls(explicit=True)
        if setting is not None:
            proxy = parse_proxy_url(setting)
            return cls(proxy, proxy, NoProxy(), explicit=True)
        http = None if env.cgi or not env.http_proxy else parse_proxy_url(env.http_proxy)
        https = parse_proxy_url(env.https_proxy) if env.https_proxy else None
        return cls(http, https, NoProxy.parse(env.no_proxy))

    def __repr__(self) -> str:
        return f"ProxyRoute({self.describe()!r}, explicit={self.explicit})"

    def proxy_for(self, url: httpx.URL) -> str | None:
        proxy = self.https if url.scheme == "https" else self.http if url.scheme == "http" else None
        if proxy is None:
            return None
        port = url.port or DEFAULT_PORTS.get(url.scheme, 0)
        return None if self.no_proxy.exempts(url.host, port) else proxy

    def describe(self) -> str:
        proxies = {mask_url(p) for p in (self.http, self.https) if p}
        return "direct" if not proxies else "via " + " and ".join(sorted(proxies))


class EgressTransport(httpx.AsyncBaseTransport):
    """Sends each request direct or through its proxy, one pooled transport per route.

    Redirects (a CDN) and token requests pass through here too, so they take the same way out.
    """

    def __init__(
        self,
        route: ProxyRoute,
        trust: Trust,
        limits: httpx.Limits,
        *,
        upstream: str,
        origin: httpx.URL,
        redirect_hosts: frozenset[str] = frozenset(),
    ) -> None:
        self.route = route
        self._trust = trust
        self._limits = limits
        self._transports: dict[str | None, httpx.AsyncHTTPTransport] = {}
        self._upstream = upstream
        self._origin = origin_of(origin)
        self._redirect_hosts = redirect_hosts
        self._upstream_kinds: frozenset[str] | None = None  # the kinds of address the upstream is on

    def _transport(self, proxy: str | None) -> httpx.AsyncHTTPTransport:
        transport = self._transports.get(proxy)
        if transport is None:
            via = None
            context = self._trust.context()
            if proxy is not None:  # TLS to an https:// proxy trusts what the upstream does
                via = httpx.Proxy(proxy, ssl_context=context if proxy.startswith("https:") else None)
            transport = httpx.AsyncHTTPTransport(verify=context, limits=self._limits, proxy=via)
            # httpx offers no choice of network backend; its pool (httpcore) has one, set at creation.
            transport._pool._network_backend = BoundedBackend()  # see mirror.upstream.network
            self._transports[proxy] = transport
        return transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._transport(self.route.proxy_for(request.url))
        if origin_of(request.url) == self._origin:
            return await transport.handle_async_request(request)
        # Elsewhere: a redirect, or a token realm (mirror.upstream.destinations says where we go).
        if request.extensions.get(REDIRECTS) == ORIGIN_ONLY:
            raise RedirectRefused(
                f"upstream {self._upstream} redirected {request.url.path[:200]} to {request.url.host}: "
                "only blobs may be sent elsewhere (a CDN); manifests and lists stay on the upstream's origin",
                request=request,
            )
        host = request.url.host
        if host in self._redirect_hosts:
            return await transport.handle_async_request(request)
        rule = DestinationRule(host, self._upstream, frozenset({PUBLIC} | await self._kinds_of_upstream()))
        if self.route.proxy_for(request.url) is not None:
            # Through a proxy we dial the proxy, not the host (the proxy resolves it, and its own
            # rules apply): judge the address the URL names, if it names one.
            refusal = rule.refusal([host]) if _is_address(host) else None
            if refusal is not None:
                raise RedirectRefused(refusal, request=request)
            return await transport.handle_async_request(request)
        token = destination.set(rule)
        try:
            return await transport.handle_async_request(request)
        finally:
            destination.reset(token)

    async def _kinds_of_upstream(self) -> frozenset[str]:
        """The kinds of address the upstream's own host resolves to (looked up once)."""
        if self._upstream_kinds is None:
            host, port = self._origin[1], self._origin[2] or 443
            try:
                found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
                self._upstream_kinds = frozenset(category(str(address[0])) for *_, address in found)
            except OSError:
                return frozenset()  # not known now: only public addresses, and ask again next time
        return self._upstream_kinds

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
