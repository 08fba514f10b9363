"""`mirror export`: images from the cache into a docker-archive or oci-archive tar."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from mirror.cache.directory import CacheDirectory
from mirror.cache.layout import CacheLayout
from mirror.commands.archive.names import (
    CONTAINERD_NAME,
    MAX_CONFIG,
    REF_NAME,
    ArchiveError,
    ImageName,
    checked_digest,
    descriptors,
    parse_image_name,
    parse_json,
)
from mirror.commands.archive.signatures import ServerReader, Signature, SignatureFinder, Spool
from mirror.commands.archive.tar import TarWriter, decompressed, hashed, read_chunks
from mirror.commands.archive.verdicts import refusals
from mirror.config.model import SignaturesConfig
from mirror.registry.mediatypes import (
    INDEX_TYPES,
    MAX_MANIFEST,
    OCI_INDEX,
    platform_matches,
    platform_name,
)
from mirror.registry.reference import parse_digest


class CacheReader:
    """The cache directory as export sees it: verified blob reads and the tag index."""

    def __init__(self, directory: Path) -> None:
        if not CacheLayout(directory).meta.is_dir():
            raise ArchiveError(f"no mirror cache at {directory} (set [cache] directory with --config)")
        self.cache = CacheDirectory.open(directory)

    def close(self) -> None:
        self.cache.close()

    def has(self, digest: str) -> bool:
        return self.cache.has(digest)

    def size(self, digest: str) -> int:
        size = self.cache.size(digest)
        if size is None:
            raise ArchiveError(f"cached {digest} went away (evicted?)")
        return size

    def open(self, digest: str) -> BinaryIO:
        file = self.cache.open_blob(digest)
        if file is None:
            raise ArchiveError(f"cached {digest} went away (evicted?)")
        return file

    def read(self, digest: str, limit: int = MAX_MANIFEST) -> bytes | None:
        if not self.has(digest):
            return None
        data = self.cache.read(digest, limit)
        if data is None:
            raise ArchiveError(f"cached {digest} is larger than {limit} bytes or does not match its digest")
        return data

    def resolve(self, name: ImageName) -> tuple[str, str]:
        """The digest and media type a name stands for in the cache."""
        if name.is_digest:
            media_type = self.cache.metadata.media_type(name.reference)
            if media_type is None or not self.has(name.reference):
                raise ArchiveError(f"{name}: not cached")
            return name.reference, media_type
        stored = self.cache.metadata.tag(name.upstream, name.repository, name.reference)
        entries = [e for e in stored.values() if self.has(e.digest)]
        if not entries:
            raise ArchiveError(
                f"{name}: not cached (no cached tag {name.reference} in {name.upstream}/{name.repository})"
            )
        # An index holds every platform another answer could name: prefer it, then the newest.
        best = max(entries, key=lambda e: (e.media_type in INDEX_TYPES, e.fetched_at))
        return best.digest, best.media_type


@dataclass
class ExportImage:
    name: ImageName
    digest: str
    media_type: str
    size: int
    manifests: list[str] = field(default_factory=list)  # this one and the children exported
    blobs: list[str] = field(default_factory=list)
    # For the docker format: the chosen image manifest.
    image_manifest: dict[str, Any] = field(default_factory=dict)


class Exporter:
    def __init__(self, cache: CacheReader, platforms: list[str] | None, all_platforms: bool) -> None:
        self.cache = cache
        self.platforms = platforms
        self.all_platforms = all_platforms
        self.missing: list[str] = []

    def manifest(self, digest: str, label: str) -> dict[str, Any] | None:
        body = self.cache.read(digest)
        if body is None:
            self.missing.append(f"{label}: manifest {digest}")
            return None
        return parse_json(body, f"cached manifest {digest}")

    def image_blobs(self, digest: str, label: str) -> tuple[dict[str, Any], list[str]] | None:
        """An image manifest and its blobs, if all are cached (else what is missing is recorded)."""
        manifest = self.manifest(digest, label)
        if manifest is None:
            return None
        if isinstance(manifest.get("manifests"), list):
            self.missing.append(f"{label}: {digest} is an index inside an index, which export does not follow")
            return None
        blobs = [d["digest"] for d in descriptors(manifest)]
        absent = [d for d in blobs if not self.cache.has(d)]
        for blob in absent:
            self.missing.append(f"{label}: blob {blob}")
        return None if absent else (manifest, blobs)

    def plan(self, text: str, single: bool) -> ExportImage | None:
        """What to export for one name; `single` (docker format) picks one platform of an index."""
        name = parse_image_name(text)
        try:
            digest, media_type = self.cache.resolve(name)
        except ArchiveError as exc:
            self.missing.append(str(exc))
            return None
        top = self.manifest(digest, str(name))
        if top is None:
            return None
        size = self.cache.size(digest)
        if not isinstance(top.get("manifests"), list):
            found = self.image_blobs(digest, str(name))
            if found is None:
                return None
            return ExportImage(name, digest, media_type, size, [digest], found[1], found[0])
        children = [c for c in top["manifests"] if isinstance(c, dict) and isinstance(c.get("digest"), str)]
        wanted = self.platforms
        if single and wanted is None:
            wanted = self._defaultplatform_name(children)
            if wanted is None:
                self.missing.append(f"{name}: several platforms are cached; name one with --platform")
                return None
        image = ExportImage(name, digest, media_type, size, [digest])
        found_before = len(self.missing)
        for want in wanted or []:
            if not any(platform_matches(platform_name(c.get("platform")), want) for c in children):
                platforms = ", ".join(platform_name(c.get("platform")) for c in children)
                self.missing.append(f"{name}: the index has no platform {want} (it has {platforms})")
        for child in children:
            platform = platform_name(child.get("platform"))
            if wanted is not None and not any(platform_matches(platform, want) for want in wanted):
                continue
            # Asked for (a platform named, or --all-platforms): it must be cached; else take what is.
            required = wanted is not None or (self.all_platforms and platform != "unknown/unknown")
            if required:
                found = self.image_blobs(child["digest"], f"{name} ({platform})")
            else:
                probe = Exporter(self.cache, None, False)
                found = probe.image_blobs(child["digest"], "")
            if found is None:
                continue
            if single and image.image_manifest:
                continue  # the docker format holds one platform per name: the first that matches
            image.manifests.append(child["digest"])
            image.blobs += found[1]
            image.image_manifest = found[0]
        if len(self.missing) == found_before and len(image.manifests) == 1:
            self.missing.append(f"{name}: no platform of index {digest} is cached")
            return None
        return image

    def _defaultplatform_name(self, children: list[dict[str, Any]]) -> list[str] | None:
        """For the docker format without --platform: linux/amd64 if cached, else the only platform cached."""
        cached = []
        for child in children:
            platform = platform_name(child.get("platform"))
            probe = Exporter(self.cache, None, False)
            if platform != "unknown/unknown" and probe.image_blobs(child["digest"], "") is not None:
                cached.append(platform)
        if "linux/amd64" in cached:
            return ["linux/amd64"]
        return [cached[0]] if len(set(cached)) == 1 else (["linux/amd64"] if not cached else None)


@dataclass
class ExportReport:
    images: int = 0
    blobs: int = 0
    bytes: int = 0
    signatures: int = 0
    notes: list[str] = field(default_factory=list)


def _signatures(plan: list[ExportImage], finder: SignatureFinder) -> list[Signature]:
    """Every signature of every exported manifest (an index and each child carried), once each."""
    found: dict[tuple[str, str | None, str], Signature] = {}
    for image in plan:
        for digest in image.manifests:
            subject = ImageName(image.name.upstream, image.name.repository, digest)
            for signature in finder.find(subject):
                found.setdefault((str(subject), signature.tag, signature.digest), signature)
    return list(found.values())


def export(
    cache_dir: Path,
    images: list[str],
    output: Path,
    *,
    platforms: list[str] | None = None,
    all_platforms: bool = False,
    fmt: str = "oci",
    server: httpx.Client | None = None,
    signature_policy: SignaturesConfig | None = None,
) -> ExportReport:
    """Write the named cached images to `output`, with their signatures (oci format; asked of the
    running mirror at `server` when it answers, else from the cache); raises ArchiveError naming
    every image that is missing."""
    if fmt == "docker" and all_platforms:
        raise ArchiveError("the docker format holds one platform per image: use --platform, or --format oci")
    cache = CacheReader(cache_dir)
    spool = Spool()
    try:
        exporter = Exporter(cache, platforms, all_platforms)
        planned = [exporter.plan(text, single=fmt == "docker") for text in images]
        if exporter.missing:
            raise ArchiveError("not in the cache:\n  " + "\n  ".join(dict.fromkeys(exporter.missing)))
        plan = [image for image in planned if image is not None]
        reader = ServerReader(server) if server is not None else None
        finder = SignatureFinder(cache.cache, reader, spool)
        signatures = _signatures(plan, finder) if fmt == "oci" or signature_policy is not None else []
        if signature_policy is not None:
            judged = [(f"{i.name.upstream}/{i.name.repository}", i.name.reference, i.digest) for i in plan]
            refused = refusals(signature_policy, judged, signatures, spool)
            if refused and signature_policy.mode == "enforce":
                raise ArchiveError("refused by the signature policy:\n  " + "\n  ".join(refused))
            finder.notes += [f"audit: the signature policy would refuse {why}" for why in refused]
        if fmt != "oci":
            signatures = []  # the docker format carries none
        temp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as file:
                writer = TarWriter(file)
                if fmt == "oci":
                    report = _write_oci(cache, plan, writer, signatures, spool)
                else:
                    report = _write_docker(cache, plan, writer)
                writer.close()
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, output)
        finally:
            temp.unlink(missing_ok=True)
        report.images = len(plan)
        report.signatures = len(signatures)
        if reader is not None and reader.gone is not None and fmt == "oci":
            finder.notes.insert(0, f"signatures from the cache only: {reader.gone}")
        report.notes = finder.notes
        return report
    finally:
        spool.close()
        cache.close()


def _write_oci(
    cache: CacheReader, plan: list[ExportImage], writer: TarWriter, signatures: list[Signature], spool: Spool
) -> ExportReport:
    report = ExportReport()
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": image.size,
                "annotations": {REF_NAME: str(image.name), CONTAINERD_NAME: str(image.name)},
            }
            for image in plan
        ]
        + [signature.descriptor() for signature in signatures],
    }
    writer.add_bytes("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    writer.add_bytes("index.json", json.dumps(index, indent=2).encode())
    digests = dict.fromkeys(d for image in plan for d in [*image.manifests, *image.blobs])
    for digest in digests:
        parsed = parse_digest(digest)
        with cache.open(digest) as file:  # an open file stays readable if evicted meanwhile
            size = os.fstat(file.fileno()).st_size
            chunks = hashed(read_chunks(file), digest, f"cached blob {digest} (run `mirror verify`)")
            writer.add_stream(f"blobs/{parsed.algorithm}/{parsed.hex}", chunks, size)
        report.blobs += 1
        report.bytes += size
    for digest in dict.fromkeys(d for s in signatures for d in [s.digest, *s.blobs]):
        if digest not in digests:  # an image's blob may sign too (the empty config)
            data, parsed = spool.read(digest), parse_digest(digest)
            writer.add_bytes(f"blobs/{parsed.algorithm}/{parsed.hex}", data)
            report.blobs += 1
            report.bytes += len(data)
    return report


def _write_docker(cache: CacheReader, plan: list[ExportImage], writer: TarWriter) -> ExportReport:
    report = ExportReport()
    entries = []
    written: set[str] = set()
    for image in plan:
        manifest = image.image_manifest
        if not isinstance(manifest.get("config"), dict) or not isinstance(manifest["config"].get("digest"), str):
            raise ArchiveError(f"{image.name}: its manifest has no config, so it is no image `docker load` can take")
        config_digest = manifest["config"]["digest"]
        config_body = cache.read(config_digest, MAX_CONFIG)
        if config_body is None:
            raise ArchiveError(f"{config_digest} left the cache during the export; try again")
        config = parse_json(config_body, f"config {config_digest}")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        layers = [d for d in manifest.get("layers") or [] if isinstance(d, dict)]
        if len(diff_ids) != len(layers):
            raise ArchiveError(f"{image.name}: config lists {len(diff_ids)} diff_ids for {len(layers)} layers")
        config_name = f"{parse_digest(config_digest).hex}.json"
        if config_name not in written:
            writer.add_bytes(config_name, config_body)
            written.add(config_name)
        layer_names = []
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            name = f"{checked_digest(diff_id, 'diff_id').hex}/layer.tar"
            layer_names.append(name)
            if name in written:
                continue
            with cache.open(layer["digest"]) as file:
                chunks = hashed(decompressed(file), diff_id, f"cached layer {layer['digest']}, uncompressed,")
                report.bytes += writer.add_stream(name, chunks, None)
            written.add(name)
            report.blobs += 1
        tag = image.name.docker_tag()
        entries.append({"Config": config_name, "RepoTags": [tag] if tag else [], "Layers": layer_names})
    writer.add_bytes("manifest.json", json.dumps(entries).encode())
    return report
