"""Which peer URLs a replica will ask for blobs: Redis names them, and Redis is not trusted.

`[fleet] peers` lists what is accepted: CIDR networks (`10.8.0.0/16`), host names
(`mirror-0.mirror`) and domain wildcards (`*.mirror.svc.cluster.local`). Unset, it is this
replica's own neighbourhood: the /24 (IPv4) or /64 (IPv6) of its peer_url's address, or the
domain its peer_url's host name is in (`mirror-0.mirror` → `*.mirror`).
"""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


def default_peers(peer_url: str) -> tuple[str, ...]:
    host = (urlsplit(peer_url).hostname or "").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        parent = host.partition(".")[2]
        return (f"*.{parent}",) if parent else (host,)
    prefix = 24 if address.version == 4 else 64
    return (str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)),)


class PeerNetwork:
    """The peer URLs this replica accepts (scheme http or https, host as listed)."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.entries = entries
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._hosts: set[str] = set()
        self._suffixes: list[str] = []
        for entry in entries:
            entry = entry.lower()
            if entry.startswith("*."):
                self._suffixes.append(entry[1:])
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._hosts.add(entry)
        self._refused: set[str] = set()

    def accepts(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            return self._refuse(url)
        if host in self._hosts or any(host.endswith(suffix) for suffix in self._suffixes):
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return self._refuse(url)
        return any(address in network for network in self._networks) or self._refuse(url)

    def _refuse(self, url: str) -> bool:
        if url not in self._refused and len(self._refused) < 1000:
            self._refused.add(url)
            log.warning(
                "fleet: Redis names a replica at %s, outside [fleet] peers %s; not asked", url[:200], self.entries
            )
        return False
