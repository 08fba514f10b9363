"""Offline maintenance on a cache directory: gc, verify, stats. Safe while the server runs."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import diskcache
import httpx

from mirror.config import Config
from mirror.registry.errors import RegistryError
from mirror.registry.reference import parse_digest

# A temp file untouched this long belongs to no live download (their read timeout is far shorter).
STALE_TEMP_SECONDS = 3600.0


@dataclass
class Report:
    checked: int = 0
    removed: int = 0
    removed_bytes: int = 0


def _blob_files(cache: Path) -> list[tuple[str, Path]]:
    """(digest text, path) for every file under blobs/, valid name or not."""
    found = []
    blobs = cache / "blobs"
    if blobs.is_dir():
        for path in blobs.glob("*/*/*"):
            found.append((f"{path.parent.parent.name}:{path.name}", path))
    return found


def gc(config: Config) -> Report:
    """Remove stale temp files, files that are not valid blobs, and metadata with no manifest file."""
    cache = config.cache.directory
    report = Report()
    now = time.time()
    tmp = cache / "tmp"
    for path in tmp.iterdir() if tmp.is_dir() else []:
        report.checked += 1
        stat = path.stat()
        if now - stat.st_mtime > STALE_TEMP_SECONDS:
            path.unlink(missing_ok=True)
            report.removed += 1
            report.removed_bytes += stat.st_size
    for name, path in _blob_files(cache):
        report.checked += 1
        try:
            digest = parse_digest(name)
        except RegistryError:
            digest = None
        if path.is_file() and (digest is None or path.parent.name != digest.hex[:2]):
            report.removed_bytes += path.stat().st_size
            path.unlink(missing_ok=True)
            report.removed += 1
    with diskcache.Cache(str(cache / "meta")) as meta:
        for key in list(meta.iterkeys()):
            if isinstance(key, tuple) and key and key[0] == "manifest":
                report.checked += 1
                algorithm, _, hex_digest = str(key[1]).partition(":")
                if not (cache / "blobs" / algorithm / hex_digest[:2] / hex_digest).is_file():
                    meta.delete(key)
                    report.removed += 1
    return report


def verify(config: Config) -> Report:
    """Re-hash every blob; remove any whose content no longer matches its name."""
    report = Report()
    for name, path in _blob_files(config.cache.directory):
        try:
            digest = parse_digest(name)
        except RegistryError:
            continue
        report.checked += 1
        hasher = hashlib.new(digest.algorithm)
        try:
            with open(path, "rb") as file:
                while chunk := file.read(1024 * 1024):
                    hasher.update(chunk)
        except FileNotFoundError:
            continue  # evicted meanwhile
        if hasher.hexdigest() != digest.hex:
            report.removed_bytes += path.stat().st_size
            path.unlink(missing_ok=True)
            report.removed += 1
    return report


def stats(config: Config) -> dict[str, object]:
    """The running server's /stats, or what the cache directory alone tells when it is down."""
    host = "127.0.0.1" if config.server.host in ("0.0.0.0", "::", "") else config.server.host
    try:
        response = httpx.get(f"http://{host}:{config.server.port}/stats", timeout=2, trust_env=False)
        if response.status_code == 200:
            return {"source": "server", **response.json()}
    except httpx.HTTPError:
        pass
    files = [path for _, path in _blob_files(config.cache.directory)]
    sizes = [os.stat(path).st_size for path in files if path.is_file()]
    return {"source": "cache directory (server not running)", "cached_blobs": len(sizes), "cached_bytes": sum(sizes)}


def format_table(values: dict[str, object]) -> str:
    width = max(len(key) for key in values)
    return "".join(f"{key.ljust(width)}  {value}\n" for key, value in values.items())
