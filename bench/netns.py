"""The emulated WAN: two network namespaces joined by a veth pair, the upstream side rate-limited.

    [ns <name>-up]  upstream registry on 10.213.7.1:5000, veth <up>  (tc tbf: the WAN rate)
          |  veth pair, 10.213.7.0/30
    [ns <name>-cl]  the bench, targets and clients on 127.0.0.1, veth <cl> = 10.213.7.2

Only loopback and these two addresses ever carry traffic. Both namespaces are created per
run with unique names and deleted at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from dataclasses import dataclass

UP_ADDRESS = "10.213.7.1"
CLIENT_ADDRESS = "10.213.7.2"
PREFIX = 30
RATE_RE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$")
# Bytes per second per unit; tc's prefixes are SI (k = 1000).
_RATE_UNITS = {
    "bit": 1 / 8,
    "kbit": 1e3 / 8,
    "mbit": 1e6 / 8,
    "gbit": 1e9 / 8,
    "bps": 1.0,
    "kbps": 1e3,
    "mbps": 1e6,
    "gbps": 1e9,
}


def _run(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def rate_bytes_per_s(rate: str) -> float:
    """A tc rate (SI prefixes, as tc reads them: 200mbit = 25,000,000 bytes/s) in bytes per second."""
    if not RATE_RE.match(rate):
        raise ValueError(f"bad rate {rate!r}: use tc units such as 200mbit")
    number = rate.rstrip("abcdefghijklmnopqrstuvwxyz")
    return float(number) * _RATE_UNITS[rate[len(number) :]]


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/var/run/netns/{ns}", "--", *argv]


@dataclass
class Wan:
    up_ns: str
    client_ns: str
    up_dev: str
    client_dev: str

    @classmethod
    def names(cls) -> Wan:
        tag = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"
        return cls(f"mbench-{tag}-up", f"mbench-{tag}-cl", f"mbu{tag}", f"mbc{tag}")

    def create(self, rate: str | None) -> None:
        _run("ip", "netns", "add", self.up_ns)
        _run("ip", "netns", "add", self.client_ns)
        # Created directly inside the namespaces: nothing appears in the host namespace.
        _run(
            "ip",
            "link",
            "add",
            self.up_dev,
            "netns",
            self.up_ns,
            "type",
            "veth",
            "peer",
            "name",
            self.client_dev,
            "netns",
            self.client_ns,
        )
        _run("ip", "-n", self.up_ns, "addr", "add", f"{UP_ADDRESS}/{PREFIX}", "dev", self.up_dev)
        _run("ip", "-n", self.client_ns, "addr", "add", f"{CLIENT_ADDRESS}/{PREFIX}", "dev", self.client_dev)
        for ns, dev in ((self.up_ns, self.up_dev), (self.client_ns, self.client_dev)):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "link", "set", dev, "up")
        self.set_rate(rate)

    def set_rate(self, rate: str | None) -> None:
        """Shape what the upstream sends (its veth's egress); None lifts the limit."""
        if rate is None:
            subprocess.run(
                in_ns(self.up_ns, "tc", "qdisc", "del", "dev", self.up_dev, "root"), capture_output=True, timeout=30
            )
            return
        if not RATE_RE.match(rate):
            raise ValueError(f"bad rate {rate!r}: use tc units such as 200mbit")
        _run(
            *in_ns(
                self.up_ns,
                "tc",
                "qdisc",
                "replace",
                "dev",
                self.up_dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "256kb",
                "latency",
                "50ms",
            )
        )

    def qdisc(self) -> str:
        return _run(*in_ns(self.up_ns, "tc", "qdisc", "show", "dev", self.up_dev)).strip()

    def client_rx_bytes(self) -> int:
        """Bytes the client side of the veth received (what the upstream sent, with headers)."""
        out = _run("ip", "-n", self.client_ns, "-j", "-s", "link", "show", "dev", self.client_dev)
        return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])

    def delete(self) -> None:
        for ns in (self.up_ns, self.client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def as_args(self) -> list[str]:
        return ["--_wan", ",".join((self.up_ns, self.client_ns, self.up_dev, self.client_dev))]

    @classmethod
    def from_arg(cls, value: str) -> Wan:
        up_ns, client_ns, up_dev, client_dev = value.split(",")
        return cls(up_ns, client_ns, up_dev, client_dev)
