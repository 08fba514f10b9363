"""What the cache holds: repositories, tags, digests, sizes, last pull and platforms."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mirror.cache.directory import CacheDirectory
from mirror.cache.pins import PinError, fetching_digests, image_digests, load_pins
from mirror.cache.removal import RemovalError, parse_target
from mirror.cache.verdicts import recorded, summary
from mirror.registry.mediatypes import IMAGE_CONFIG_TYPES, platform_name


@dataclass
class ImageSummary:
    size: int | None = None  # config plus layers, as the manifests declare them (None: no manifest cached)
    cached: int = 0  # how much of that is on disk now
    platforms: list[str] = field(default_factory=list)
    artifact_type: str | None = None  # an artifact (a chart, a signature, an SBOM): what it is, instead of platforms

    @property
    def complete(self) -> bool:
        return self.size is not None and self.cached >= self.size


def describe(cache: CacheDirectory, digest: str) -> ImageSummary:
    """Size, bytes present and platforms of a cached image; for an index, over its cached children."""
    manifest = cache.read_json(digest)
    if manifest is None:
        return ImageSummary()
    if isinstance(manifest.get("manifests"), list):
        children = [m for m in manifest["manifests"] if isinstance(m, dict) and isinstance(m.get("digest"), str)]
        platforms = [p for p in (platform_name(m.get("platform")) for m in children) if p != "unknown/unknown"]
        parts = [_image_size(cache, cache.read_json(m["digest"])) for m in children]
        known = [part for part in parts if part is not None]
        size = sum(declared for declared, _ in known) if known else None
        return ImageSummary(size, sum(cached for _, cached in known), platforms)
    config: dict[str, Any] = manifest["config"] if isinstance(manifest.get("config"), dict) else {}
    size, cached = _image_size(cache, manifest) or (None, 0)
    artifact_type = manifest.get("artifactType")
    media_type = config.get("mediaType")
    if isinstance(artifact_type, str) or (isinstance(media_type, str) and media_type not in IMAGE_CONFIG_TYPES):
        # The spec's rule: the manifest's artifactType, else its config's media type.
        return ImageSummary(size, cached, [], artifact_type if isinstance(artifact_type, str) else media_type)
    config_json = cache.read_json(str(config.get("digest", ""))) if config.get("digest") else None
    return ImageSummary(size, cached, [platform_name(config_json)] if config_json is not None else [])


def _image_size(cache: CacheDirectory, manifest: dict[str, Any] | None) -> tuple[int, int] | None:
    """(declared, present) bytes of an image manifest's config and layers; None without the manifest."""
    if manifest is None:
        return None
    descriptors = [d for d in [manifest.get("config"), *manifest.get("layers", [])] if isinstance(d, dict)]
    declared = sum(int(d.get("size", 0)) for d in descriptors)
    present = sum(int(d.get("size", 0)) for d in descriptors if cache.has(str(d.get("digest", ""))))
    return declared, present


def list_images(
    cache: CacheDirectory,
    only: tuple[str, str] | None = None,
    pinned: frozenset[str] | None = None,
    fetching: frozenset[str] | None = None,
) -> list[dict[str, Any]]:
    """Every cached tag, newest first within each repository; `only`: one (registry, repository);
    `pinned`: the digests never evicted; `fetching`: those of pins the server is fetching."""
    rows: list[dict[str, Any]] = []
    if pinned is None:
        pinned = frozenset(digest for pin in load_pins(cache) for digest in pin.digests)
    if fetching is None:
        fetching = fetching_digests(cache)
    for upstream, repo, tag, entries in cache.metadata.tags():
        if only is not None and only != (upstream, repo):
            continue
        moves = max(0, len(cache.metadata.journal(upstream, repo, tag)) - 1)  # digests seen, after the first
        seen = set()
        for entry in sorted(entries.values(), key=lambda e: e.fetched_at, reverse=True):
            if entry.digest in seen:
                continue
            seen.add(entry.digest)
            described = describe(cache, entry.digest)
            verdict = recorded(cache.metadata, upstream, repo, entry.digest)
            rows.append(
                {
                    "upstream": upstream,
                    "repository": repo,
                    "tag": tag,
                    "digest": entry.digest,
                    "media_type": entry.media_type,
                    "size": described.size,
                    "cached_size": described.cached,
                    "complete": described.complete,
                    "platforms": described.platforms,
                    "artifact_type": described.artifact_type,
                    "last_pull": None if entry.imported else _when(entry.fetched_at),
                    "imported_at": _when(entry.fetched_at) if entry.imported else None,
                    "pinned": entry.digest in pinned or entry.digest in fetching,
                    # "fetching": pinned, and the server is bringing it in; None: not pinned
                    "pin_state": _pin_state(entry.digest, pinned, fetching),
                    "moves": moves,
                    "signature": summary(verdict),  # the signature policy's last verdict, in a few words
                    "signature_reason": verdict["reason"] if verdict else None,
                }
            )
    rows.sort(key=lambda r: (r["upstream"], r["repository"], r["tag"]))
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    header = ["REPOSITORY", "TAG", "DIGEST", "SIZE", "LAST PULL", "PINNED", "PLATFORMS"]  # or an artifact's type
    signatures = any(r.get("signature", "-") != "-" for r in rows)  # a column once a policy has judged
    if signatures:
        header.append("SIGNATURE")
    table = [header] + [
        [
            f"{r['upstream']}/{r['repository']}",
            r["tag"],
            r["digest"][:19],
            _size_cell(r),
            r["last_pull"] or f"- (imported {r['imported_at']})",
            {"pinned": "yes", "fetching": "fetching"}.get(r.get("pin_state") or "", "no"),
            r["artifact_type"] or ",".join(r["platforms"]) or "-",
            *([r.get("signature", "-")] if signatures else []),
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in table
    )


def _pin_state(digest: str, pinned: frozenset[str], fetching: frozenset[str]) -> str | None:
    if digest in fetching:
        return "fetching"
    return "pinned" if digest in pinned else None


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _size_cell(row: dict[str, Any]) -> str:
    """`390.0KiB` when all is cached; `12.0KiB of 390.0KiB (partial)` when eviction took layers."""
    if row["size"] is None or row["complete"]:
        return _human(row["size"])
    return f"{_human(row['cached_size'])} of {_human(row['size'])} (partial)"


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}TiB"


def pinned_digests(cache: CacheDirectory, config_pins: tuple[str, ...]) -> frozenset[str]:
    """The digests never evicted: the index's pins and the `[[pin]]` images' cached ones (as a tool
    sees them, without the server's choice of platforms)."""
    found = {digest for pin in load_pins(cache) for digest in pin.digests}
    for image in config_pins:
        try:
            found |= set(image_digests(cache, parse_target(image)))
        except (PinError, RemovalError):
            continue
    return frozenset(found)
