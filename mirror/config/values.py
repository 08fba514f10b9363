"""Reading TOML tables and their values (durations, sizes, addresses, files, secrets), and the error naming a key."""

from __future__ import annotations

import math
import re
import ssl
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A config problem, named by its key so the operator can find it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object, key: str) -> float:
    """Seconds from a number or a string like '90s', '5m', '1h30m', '250ms'."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a duration like '60s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value and _DURATION_RE.sub("", value.replace(" ", "")) == "":
        seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_RE.findall(value.replace(" ", "")))
    else:
        raise ConfigError(key, f"expected a duration like '60s', '5m' or '1h', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(key, f"must be a finite duration of zero or more, got {value!r}")
    return seconds


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)", re.IGNORECASE)


def parse_size(value: object, key: str) -> int:
    """Bytes from a number or a string like '200GiB', '512MB', '10G' (G = 10^9, GiB = 2^30)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or (match.group(3) and not match.group(2)):
        raise ConfigError(key, f"expected a size like '200GiB' or '512MB', got {value!r}")
    number, prefix, binary = float(match.group(1)), match.group(2).upper(), match.group(3)
    size = int(number * (1024 if binary else 1000) ** " KMGTP".index(prefix or " "))
    if size <= 0:
        raise ConfigError(key, f"must be more than zero, got {value!r}")
    return size


def parse_count(value: object, key: str, minimum: int = 1) -> int:
    """A whole number from an integer or a string of digits (the environment gives strings)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(key, f"expected a whole number of at least {minimum}, got {value!r}")
    return value


_RATE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(bit|bps|b/s|ib/s)", re.IGNORECASE)


def parse_rate(value: object, key: str) -> int:
    """Bits per second from a string like '200Mbit', '1Gbit' or '25MB/s' (k, M, G: powers of 1000)."""
    match = _RATE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(key, f"expected a rate like '200Mbit', '1Gbit' or '25MB/s', got {value!r}")
    number, prefix, unit = float(match.group(1)), match.group(2).upper(), match.group(3).lower()
    scale = (1024 if unit == "ib/s" else 1000) ** " KMGT".index(prefix or " ")
    rate = int(number * scale * (8 if unit.endswith("b/s") else 1))
    if rate <= 0:
        raise ConfigError(key, f"must be more than zero, got {value!r}")
    return rate


def format_rate(bits: int) -> str:
    """A rate in bits per second as `parse_rate` reads it back: '200Mbit'."""
    for prefix, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if bits % scale == 0:
            return f"{bits // scale}{prefix}bit"
    return f"{bits}bit"


def parse_listen(value: object, key: str) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected 'HOST:PORT', got {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"expected 'HOST:PORT' with a port from 1 to 65535, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def listen_address(host: str, port: int) -> str:
    """host:port as `listen` is written, an IPv6 address in brackets: `[::1]:5000`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Table:
    """Reads one TOML table, remembering its path for error messages and rejecting unknown keys."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a table, got {data!r}")
        self.data: dict[str, Any] = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ConfigError(self.key(name), f"expected {expected}, got {value!r}")
        return value

    def raw(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def table(self, name: str) -> Table:
        self.used.add(name)
        return Table(self.data.get(name, {}), self.key(name))

    def finish(self) -> None:
        for name in self.data:
            if name not in self.used:
                raise ConfigError(self.key(name), "unknown key")


def bool_key(table: Table, name: str, default: bool = False) -> bool:
    """A true/false key; from the environment it arrives as text ("true", "false", "1", "0")."""
    value = table.raw(name, default)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if not isinstance(value, bool):
        raise ConfigError(table.key(name), f"expected true or false, got {value!r}")
    return value


def file_key(table: Table, name: str) -> Path | None:
    """An optional path key whose file must exist and be readable."""
    value = table.get(name, str)
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(table.key(name), f"no such file: {value}")
    return path


def secret_key(table: Table, name: str) -> str | None:
    """`name`, or the first line of the file `<name>_file` names (kept out of the config file)."""
    value = table.get(name, str)
    path = file_key(table, f"{name}_file")
    if path is None:
        return value  # type: ignore[no-any-return]  # Table.get checked it is a str
    if value is not None:
        raise ConfigError(table.key(f"{name}_file"), f"give {name} or {name}_file, not both")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(table.key(f"{name}_file"), f"cannot read {path}: {exc}") from exc
    if not lines or not lines[0]:
        raise ConfigError(table.key(f"{name}_file"), f"{path} is empty")
    return lines[0]


def no_passphrase() -> str:
    """The passphrase callback for keys: never prompt on a terminal; an encrypted key is refused."""
    raise ValueError("the key is encrypted; give it unencrypted (openssl pkey -in KEY -out KEY.plain)")


def check_pem(kind: str, path: Path, key: Path | None = None) -> str | None:
    """Why a CA or certificate file cannot be used, or None when it loads."""
    context = ssl.create_default_context()
    try:
        if kind == "ca":
            context.load_verify_locations(cafile=str(path))
        else:
            context.load_cert_chain(str(path), str(key) if key else None, password=no_passphrase)
    except (ssl.SSLError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None
