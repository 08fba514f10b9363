"""What the cache holds: repositories, tags, digests, sizes, last pull and platforms."""

from __future__ import annotations

import time
from typing import Any

from mirror.cache.directory import CacheDirectory
from mirror.registry.mediatypes import platform_name


def describe(cache: CacheDirectory, digest: str) -> tuple[int | None, list[str]]:
    """Size and platforms of a cached image; for an index, the sum over its cached children."""
    manifest = cache.read_json(digest)
    if manifest is None:
        return None, []
    if isinstance(manifest.get("manifests"), list):
        children = [m for m in manifest["manifests"] if isinstance(m, dict) and isinstance(m.get("digest"), str)]
        platforms = [platform_name(m.get("platform")) for m in children]
        sizes = [size for m in children if (size := _image_size(cache, m["digest"])) is not None]
        return (sum(sizes) if sizes else None), [p for p in platforms if p != "unknown/unknown"]
    config: dict[str, Any] = manifest["config"] if isinstance(manifest.get("config"), dict) else {}
    config_json = cache.read_json(str(config.get("digest", ""))) if config.get("digest") else None
    return _image_size(cache, digest, manifest), [platform_name(config_json)] if config_json is not None else []


def _image_size(cache: CacheDirectory, digest: str, manifest: dict[str, Any] | None = None) -> int | None:
    """Config plus layers of an image manifest (None when the manifest is not cached)."""
    manifest = manifest if manifest is not None else cache.read_json(digest)
    if manifest is None:
        return None
    descriptors = [manifest.get("config"), *manifest.get("layers", [])]
    return sum(int(d.get("size", 0)) for d in descriptors if isinstance(d, dict))


def list_images(cache: CacheDirectory, repository: str | None = None) -> list[dict[str, Any]]:
    """Every cached tag, newest first within each repository."""
    rows: list[dict[str, Any]] = []
    for upstream, repo, tag, entries in cache.metadata.tags():
        if repository is not None and repository not in (repo, f"{upstream}/{repo}"):
            continue
        seen = set()
        for entry in sorted(entries.values(), key=lambda e: e.fetched_at, reverse=True):
            if entry.digest in seen:
                continue
            seen.add(entry.digest)
            size, platforms = describe(cache, entry.digest)
            rows.append(
                {
                    "upstream": upstream,
                    "repository": repo,
                    "tag": tag,
                    "digest": entry.digest,
                    "media_type": entry.media_type,
                    "size": size,
                    "platforms": platforms,
                    "last_pull": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.fetched_at)),
                }
            )
    rows.sort(key=lambda r: (r["upstream"], r["repository"], r["tag"]))
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    header = ["REPOSITORY", "TAG", "DIGEST", "SIZE", "LAST PULL", "PLATFORMS"]
    table = [header] + [
        [
            f"{r['upstream']}/{r['repository']}",
            r["tag"],
            r["digest"][:19],
            _human(r["size"]),
            r["last_pull"],
            ",".join(r["platforms"]) or "-",
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in table
    )


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}TiB"
