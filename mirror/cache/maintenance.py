"""Offline maintenance on a cache directory: gc, verify, stats. Safe while the server runs."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

from mirror.cache.directory import CacheDirectory
from mirror.cache.layout import CacheLayout
from mirror.config import Config
from mirror.registry.errors import RegistryError
from mirror.registry.reference import Digest, parse_digest

# A temp file untouched this long belongs to no live download (their read timeout is far shorter).
STALE_TEMP_SECONDS = 3600.0


@dataclass
class Report:
    checked: int = 0
    removed: int = 0
    removed_bytes: int = 0


def gc(config: Config) -> Report:
    """Remove stale temp files, files that are not valid blobs, and metadata with no manifest file."""
    if not CacheDirectory.exists(config.cache.directory):
        return Report()
    cache = CacheDirectory.open(config.cache.directory)
    try:
        return _collect(cache)
    finally:
        cache.close()


def _collect(cache: CacheDirectory) -> Report:
    layout = cache.layout
    report = Report()
    now = time.time()
    for path in layout.tmp.iterdir():
        report.checked += 1
        stat = path.stat()
        if now - stat.st_mtime > STALE_TEMP_SECONDS:
            path.unlink(missing_ok=True)
            report.removed += 1
            report.removed_bytes += stat.st_size
    for name, path in layout.blob_files():
        report.checked += 1
        try:
            digest: Digest | None = parse_digest(name)
        except RegistryError:
            digest = None
        if path.is_file() and (digest is None or layout.misplaced(digest, path)):
            report.removed_bytes += path.stat().st_size
            path.unlink(missing_ok=True)
            report.removed += 1
    for digest_text, _ in list(cache.metadata.manifests()):
        report.checked += 1
        if not cache.has(digest_text):
            cache.metadata.forget_manifest(digest_text)
            report.removed += 1
    return report


def verify(config: Config) -> Report:
    """Re-hash every blob; remove any whose content no longer matches its name."""
    report = Report()
    for name, path in CacheLayout(config.cache.directory).blob_files():
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


def offline_stats(config: Config) -> dict[str, object]:
    """What the cache directory alone tells, for when the server is down."""
    files = [path for _, path in CacheLayout(config.cache.directory).blob_files()]
    sizes = [os.stat(path).st_size for path in files if path.is_file()]
    return {"source": "cache directory (server not running)", "cached_blobs": len(sizes), "cached_bytes": sum(sizes)}
