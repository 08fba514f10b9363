"""One upstream, checked step by step before any client asks: name, connection, TLS, `/v2/`, login.

`mirror doctor` prints these; `mirror serve` logs them once at start-up. Each step that fails
says what to set, as the errors clients get do (`mirror.upstream.diagnosis`).
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
import time
from dataclasses import dataclass

import httpx

from mirror.config import ProxyEnvironment, UpstreamConfig
from mirror.upstream.auth import parse_challenge
from mirror.upstream.diagnosis import diagnose
from mirror.upstream.egress import ProxyRoute
from mirror.upstream.trust import explain, ssl_context, tls_failure

CLOCK_SKEW = 60.0  # seconds: beyond this, tokens (and certificates near their dates) fail


@dataclass(frozen=True)
class Check:
    what: str  # e.g. "docker.io: DNS"
    ok: bool
    detail: str  # what was seen, or what failed and what to set


@dataclass
class Probe:
    """The checks of one upstream, and the clock skew its `Date` header showed (None: not seen)."""

    checks: list[Check]
    skew: float | None = None


async def probe(
    config: UpstreamConfig, proxy_env: ProxyEnvironment, *, offline: bool = False, ask: bool = True
) -> Probe:
    """The checks, in order, stopping at the first that fails. Without `ask` (at start-up), nothing
    the registry would log: DNS, TCP and the TLS handshake only, and nothing through a proxy."""
    name, url = config.name, httpx.URL(config.url)
    if offline or config.offline:
        return Probe([Check(f"{name}", True, "offline: never asked, the cache answers")])
    route = ProxyRoute.for_upstream(config.proxy, proxy_env)
    proxy = route.proxy_for(url)
    port = url.port or (443 if url.scheme == "https" else 80)
    result = Probe([])
    if proxy is None:
        if not await _direct(result, config, url.host, port):
            return result
    else:
        result.checks.append(Check(f"{name} route", True, f"through the egress proxy {route.describe()}"))
    if not ask and (proxy is not None or url.scheme != "https"):
        return result  # no handshake to make: no TLS context to build (~1 MiB that would outlive it)
    try:
        context = ssl_context(config.ca_file, config.client_cert, config.client_key)
    except (OSError, ValueError) as exc:
        result.checks.append(Check(f"{name} TLS", False, f"cannot load ca_file or client_cert: {exc}"))
        return result
    if not ask:
        result.checks.append(await _handshake(config, context, url.host, port))
        return result
    timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout)
    async with httpx.AsyncClient(verify=context, proxy=proxy, timeout=timeout, trust_env=False) as client:
        try:
            answer = await client.get(config.url.rstrip("/") + "/v2/")
        except httpx.HTTPError as exc:
            result.checks.append(_failed(exc, config, port, via_proxy=proxy is not None))
            return result
        if url.scheme == "https":
            result.checks.append(_verified(config))
        result.skew = _skew(answer.headers.get("date"))
        result.checks.append(_api(name, answer))
        if config.username is not None:
            result.checks.append(await _login(client, config, answer))
    return result


async def _direct(result: Probe, config: UpstreamConfig, host: str, port: int) -> bool:
    """DNS and TCP, when no proxy stands between: True when both work."""
    name = config.name
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        error = httpx.ConnectError(str(exc))
        error.__cause__ = exc
        why, _ = diagnose(error, name, f"{host}:{port}", via_proxy=False)
        if not isinstance(exc, socket.gaierror):
            why = f"cannot look up {host}: {exc}"
        result.checks.append(Check(f"{name} DNS", False, why))
        return False
    addresses = sorted({str(entry[4][0]) for entry in found})
    looked_up = f"{host} is {', '.join(addresses[:4])}" if addresses != [host] else f"{host}: an address, no lookup"
    result.checks.append(Check(f"{name} DNS", True, looked_up))
    try:
        async with asyncio.timeout(config.connect_timeout):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
    except (OSError, TimeoutError) as exc:
        failure: httpx.HTTPError = (
            httpx.ConnectTimeout(str(exc)) if isinstance(exc, TimeoutError) else httpx.ConnectError(str(exc))
        )
        failure.__cause__ = exc
        why, _ = diagnose(failure, name, f"{host}:{port}", via_proxy=False)
        result.checks.append(Check(f"{name} TCP", False, why))
        return False
    result.checks.append(Check(f"{name} TCP", True, f"{host}:{port} accepts connections"))
    return True


async def _handshake(config: UpstreamConfig, context: ssl.SSLContext, host: str, port: int) -> Check:
    try:
        async with asyncio.timeout(config.connect_timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
        writer.close()
    except ssl.SSLError as exc:
        return Check(f"{config.name} TLS", False, explain(exc, config.name, f"{host}:{port}")[0])
    except (OSError, TimeoutError) as exc:
        return Check(f"{config.name} TLS", False, f"the TLS handshake with {host}:{port} failed: {exc}")
    return _verified(config)


def _verified(config: UpstreamConfig) -> Check:
    trust = f"the system store and {config.ca_file}" if config.ca_file else "the system store"
    return Check(f"{config.name} TLS", True, f"certificate verified with {trust}")


def summary(result: Probe) -> tuple[bool, str]:
    """One line for a log: whether all went well, and what each step found."""
    failed = next((check for check in result.checks if not check.ok), None)
    if failed is not None:
        return False, f"{failed.what} failed: {failed.detail}"
    return True, "; ".join(f"{check.what.rsplit(' ', 1)[-1]} ok ({check.detail})" for check in result.checks)


def _failed(exc: httpx.HTTPError, config: UpstreamConfig, port: int, *, via_proxy: bool) -> Check:
    tls = tls_failure(exc)
    if tls is not None:
        message, _ = explain(tls, config.name, f"{httpx.URL(config.url).host}:{port}")
        return Check(f"{config.name} TLS", False, message)
    if isinstance(exc, httpx.ProxyError):
        return Check(f"{config.name} route", False, f"the egress proxy refused: {exc}; check HTTPS_PROXY or proxy")
    why, _ = diagnose(exc, config.name, f"{httpx.URL(config.url).host}:{port}", via_proxy=via_proxy)
    return Check(f"{config.name} /v2/", False, why)


def _api(name: str, answer: httpx.Response) -> Check:
    if answer.status_code == 200:
        return Check(f"{name} /v2/", True, "answers 200: a registry, asking no login")
    challenge = parse_challenge(answer.headers.get("www-authenticate", ""))
    if answer.status_code == 401 and challenge is not None:
        realm = challenge.params.get("realm", "")
        said = f"{challenge.scheme.capitalize()}" + (f" (realm {realm})" if realm else "")
        return Check(f"{name} /v2/", True, f"answers 401 with a {said} challenge, as registries do")
    return Check(f"{name} /v2/", False, f"answers {answer.status_code}: not a registry's /v2/? check url")


async def _login(client: httpx.AsyncClient, config: UpstreamConfig, answer: httpx.Response) -> Check:
    what = f"{config.name} login"
    login = (config.username or "", config.password or "")
    challenge = parse_challenge(answer.headers.get("www-authenticate", ""))
    try:
        if challenge is not None and challenge.scheme == "bearer" and challenge.params.get("realm"):
            params = {"service": challenge.params["service"]} if "service" in challenge.params else {}
            checked = await client.get(challenge.params["realm"], params=params, auth=login)
        else:
            checked = await client.get(config.url.rstrip("/") + "/v2/", auth=login)
    except httpx.HTTPError as exc:
        return Check(what, False, f"the login could not be tried: {type(exc).__name__}")
    if checked.status_code == 200:
        return Check(what, True, f"{config.username} is accepted")
    return Check(
        what, False, f'{config.username} is refused ({checked.status_code}): check [upstreams."{config.name}"] password'
    )


def _skew(date: str | None) -> float | None:
    if not date:
        return None
    try:
        return email.utils.parsedate_to_datetime(date).timestamp() - time.time()
    except (TypeError, ValueError):
        return None
