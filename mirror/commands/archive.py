"""`mirror export` and `mirror import`: image archives for sites without internet.

Export reads the cache directory only (no network, no server needed) and writes either an
OCI image layout tar (the exact manifests and blobs, digests preserved) or a `docker save`
tar (layers decompressed, as `docker load` wants them). Import reads an OCI layout tar, or
a `docker save` tar, verifies every digest before anything is committed, then stores the
blobs through `BlobStore.writer` (temp file, hash, compare, fsync, rename), the manifests
through `ManifestCache.put`, and the tags last, so a running mirror never sees a tag whose
content is missing. Both stream: memory stays flat whatever the archive's size.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import os
import posixpath
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import diskcache

from mirror.cache.blobs import BlobStore
from mirror.cache.metadata import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    ManifestCache,
    TagEntry,
    accept_key,
    manifest_digest,
    platform_matches,
    platform_name,
)
from mirror.commands.prefetch import parse_image
from mirror.config import DOCKER_HUB, Config
from mirror.registry.errors import RegistryError
from mirror.registry.reference import TAG_RE, Digest, parse_digest, parse_name

CHUNK = 1024 * 1024
MAX_MANIFEST = 4 * 1024 * 1024  # the distribution registry's own limit
MAX_CONFIG = 64 * 1024 * 1024
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_UNCOMPRESSED = "application/vnd.docker.image.rootfs.diff.tar"
# Imported tags answer every client that can read their media type.
IMPORT_ACCEPT = accept_key(frozenset({DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX}))


class ArchiveError(Exception):
    """An archive or a cache that cannot be used: the message says what and where."""


# Image names


@dataclass(frozen=True)
class ImageName:
    upstream: str  # the registry host, as in the config's [upstreams."<host>"]
    repository: str
    reference: str  # a tag or a digest

    @property
    def is_digest(self) -> bool:
        return ":" in self.reference

    def __str__(self) -> str:
        separator = "@" if self.is_digest else ":"
        return f"{self.upstream}/{self.repository}{separator}{self.reference}"

    def docker_tag(self) -> str | None:
        """The name as `docker images` shows it (`alpine:3.19`, `ghcr.io/org/app:1.0`)."""
        if self.is_digest:
            return None
        if self.upstream == DOCKER_HUB:
            return f"{self.repository.removeprefix('library/')}:{self.reference}"
        return str(self)


def parse_image_name(text: str) -> ImageName:
    """Docker's names: `alpine:3.19` is docker.io/library/alpine:3.19; a name without a tag means `latest`."""
    ref = parse_image(text.strip())
    upstream = ref.registry or DOCKER_HUB
    if upstream in ("index.docker.io", "registry-1.docker.io"):
        upstream = DOCKER_HUB
    repository = ref.repository
    if upstream == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    try:
        parse_name(repository)
        if ":" in ref.reference:
            parse_digest(ref.reference)
        elif not TAG_RE.fullmatch(ref.reference):
            raise ArchiveError(f"invalid tag in image name {text!r}")
    except RegistryError as exc:
        raise ArchiveError(f"invalid image name {text!r}: {exc.message}") from None
    return ImageName(upstream, repository, ref.reference)


def _descriptors(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The config and layer descriptors of an image manifest."""
    found = [manifest.get("config"), *(manifest.get("layers") or [])]
    return [d for d in found if isinstance(d, dict) and isinstance(d.get("digest"), str)]


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ArchiveError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ArchiveError(f"{what} is not a JSON object")
    return value


def _digest(text: object, what: str) -> Digest:
    try:
        return parse_digest(str(text))
    except RegistryError:
        raise ArchiveError(f"{what}: invalid digest {text!r}") from None


# Reading the cache (export)


class CacheReader:
    """The cache directory as export sees it: blob files and the diskcache metadata, read only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        if not (directory / "meta").is_dir():
            raise ArchiveError(f"no mirror cache at {directory} (set [cache] directory with --config)")
        self.meta = diskcache.Cache(str(directory / "meta"))

    def close(self) -> None:
        self.meta.close()

    def path(self, digest: str) -> Path:
        parsed = parse_digest(digest)
        return self.directory / "blobs" / parsed.algorithm / parsed.hex[:2] / parsed.hex

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str, limit: int = MAX_MANIFEST) -> bytes | None:
        try:
            with open(self.path(digest), "rb") as file:
                data = file.read(limit + 1)
        except FileNotFoundError:
            return None
        if len(data) > limit:
            raise ArchiveError(f"cached {digest} is larger than {limit} bytes")
        parsed = parse_digest(digest)
        if hashlib.new(parsed.algorithm, data).hexdigest() != parsed.hex:
            raise ArchiveError(f"cached {digest} does not match its digest (run `mirror verify`)")
        return data

    def resolve(self, name: ImageName) -> tuple[str, str]:
        """The digest and media type a name stands for in the cache."""
        if name.is_digest:
            media_type = self.meta.get(("manifest", name.reference))
            if not isinstance(media_type, str) or not self.has(name.reference):
                raise ArchiveError(f"{name}: not cached")
            return name.reference, media_type
        stored = self.meta.get(("tag", name.upstream, name.repository, name.reference))
        entries = [e for e in (stored or {}).values() if isinstance(e, TagEntry) and self.has(e.digest)]
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
        return _json(body, f"cached manifest {digest}")

    def image_blobs(self, digest: str, label: str) -> tuple[dict[str, Any], list[str]] | None:
        """An image manifest and its blobs, if all are cached (else what is missing is recorded)."""
        manifest = self.manifest(digest, label)
        if manifest is None:
            return None
        if isinstance(manifest.get("manifests"), list):
            self.missing.append(f"{label}: {digest} is an index inside an index, which export does not follow")
            return None
        blobs = [d["digest"] for d in _descriptors(manifest)]
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
        size = self.cache.path(digest).stat().st_size
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


# Writing tars


class TarWriter:
    """A minimal streaming tar writer on a seekable file.

    A member whose size is not known in advance (a layer being decompressed) gets a
    placeholder header that is rewritten once its data is written, so nothing is held
    in memory or written twice.
    """

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.directories: set[str] = set()

    def _header(self, name: str, size: int, directory: bool = False) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = 0  # the same cache exports to the same bytes
        info.mode = 0o755 if directory else 0o644
        info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")

    def _parents(self, name: str) -> None:
        parent = posixpath.dirname(name)
        if parent and parent not in self.directories:
            self._parents(parent)
            self.directories.add(parent)
            self.file.write(self._header(parent + "/", 0, directory=True))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._parents(name)
        self.file.write(self._header(name, len(data)))
        self.file.write(data)
        self._pad(len(data))

    def add_stream(self, name: str, chunks: Iterator[bytes], size: int | None) -> int:
        """Write a member from chunks; with size None the header is patched afterwards."""
        self._parents(name)
        start = self.file.tell()
        header = self._header(name, size or 0)
        if size is None and len(header) != tarfile.BLOCKSIZE:
            raise ArchiveError(f"member name too long for a streamed tar member: {name}")
        self.file.write(header)
        written = 0
        for chunk in chunks:
            self.file.write(chunk)
            written += len(chunk)
        self._pad(written)
        if size is None:
            end = self.file.tell()
            self.file.seek(start)
            self.file.write(self._header(name, written))
            self.file.seek(end)
        elif written != size:
            raise ArchiveError(f"{name}: wrote {written} bytes, expected {size}")
        return written

    def _pad(self, size: int) -> None:
        remainder = size % tarfile.BLOCKSIZE
        if remainder:
            self.file.write(b"\0" * (tarfile.BLOCKSIZE - remainder))

    def close(self) -> None:
        self.file.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        remainder = self.file.tell() % tarfile.RECORDSIZE
        if remainder:
            self.file.write(b"\0" * (tarfile.RECORDSIZE - remainder))


def _read(file: IO[bytes]) -> Iterator[bytes]:
    while chunk := file.read(CHUNK):
        yield chunk


def _hashed(source: Iterator[bytes], digest: str, what: str) -> Iterator[bytes]:
    """The chunks, hashed on the way; raises after the last one if they do not match `digest`."""
    algorithm, _, expected = digest.partition(":")
    hasher = hashlib.new(algorithm)
    for chunk in source:
        hasher.update(chunk)
        yield chunk
    if hasher.hexdigest() != expected:
        raise ArchiveError(f"{what} does not match its digest {digest}")


def _decompressed(file: BinaryIO) -> Iterator[bytes]:
    """A layer's tar bytes: gunzipped if it is gzip, as is if it is a plain tar."""
    magic = file.read(4)
    file.seek(0)
    if magic[:2] == b"\x1f\x8b":
        with gzip.GzipFile(fileobj=file, mode="rb") as unzipped:
            while chunk := unzipped.read(CHUNK):
                yield chunk
    elif magic == b"\x28\xb5\x2f\xfd":
        raise ArchiveError("a zstd-compressed layer cannot be written in docker format (use --format oci)")
    else:
        yield from _read(file)


@dataclass
class ExportReport:
    images: int = 0
    blobs: int = 0
    bytes: int = 0


def export(
    cache_dir: Path,
    images: list[str],
    output: Path,
    *,
    platforms: list[str] | None = None,
    all_platforms: bool = False,
    fmt: str = "oci",
) -> ExportReport:
    """Write the named cached images to `output`; raises ArchiveError naming everything missing."""
    if fmt == "docker" and all_platforms:
        raise ArchiveError("the docker format holds one platform per image: use --platform, or --format oci")
    cache = CacheReader(cache_dir)
    try:
        exporter = Exporter(cache, platforms, all_platforms)
        planned = [exporter.plan(text, single=fmt == "docker") for text in images]
        if exporter.missing:
            raise ArchiveError("not in the cache:\n  " + "\n  ".join(dict.fromkeys(exporter.missing)))
        plan = [image for image in planned if image is not None]
        temp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as file:
                writer = TarWriter(file)
                report = _write_oci(cache, plan, writer) if fmt == "oci" else _write_docker(cache, plan, writer)
                writer.close()
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, output)
        finally:
            temp.unlink(missing_ok=True)
        report.images = len(plan)
        return report
    finally:
        cache.close()


def _write_oci(cache: CacheReader, plan: list[ExportImage], writer: TarWriter) -> ExportReport:
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
        ],
    }
    writer.add_bytes("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    writer.add_bytes("index.json", json.dumps(index, indent=2).encode())
    digests = dict.fromkeys(d for image in plan for d in [*image.manifests, *image.blobs])
    for digest in digests:
        parsed = parse_digest(digest)
        try:
            file = open(cache.path(digest), "rb")  # noqa: SIM115 - an open file stays readable if evicted
        except FileNotFoundError:
            raise ArchiveError(f"{digest} left the cache during the export (evicted?); try again") from None
        with file:
            size = os.fstat(file.fileno()).st_size
            chunks = _hashed(_read(file), digest, f"cached blob {digest} (run `mirror verify`)")
            writer.add_stream(f"blobs/{parsed.algorithm}/{parsed.hex}", chunks, size)
        report.blobs += 1
        report.bytes += size
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
        config = _json(config_body, f"config {config_digest}")
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
            name = f"{_digest(diff_id, 'diff_id').hex}/layer.tar"
            layer_names.append(name)
            if name in written:
                continue
            try:
                file = open(cache.path(layer["digest"]), "rb")  # noqa: SIM115
            except FileNotFoundError:
                raise ArchiveError(f"{layer['digest']} left the cache during the export; try again") from None
            with file:
                chunks = _hashed(_decompressed(file), diff_id, f"cached layer {layer['digest']}, uncompressed,")
                report.bytes += writer.add_stream(name, chunks, None)
            written.add(name)
            report.blobs += 1
        tag = image.name.docker_tag()
        entries.append({"Config": config_name, "RepoTags": [tag] if tag else [], "Layers": layer_names})
    writer.add_bytes("manifest.json", json.dumps(entries).encode())
    return report


# Reading archives (import)


def _normalize(name: str) -> str:
    return posixpath.normpath(name.lstrip("/")).removeprefix("./")


class ArchiveReader:
    """A tar archive opened for random access: member headers indexed, data read on demand."""

    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise ArchiveError(f"{path}: no such file") from None
        except tarfile.ReadError as exc:
            raise ArchiveError(f"{path}: not a tar archive ({exc}; a compressed one? decompress it first)") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            for member in self.tar:
                self.members[_normalize(member.name)] = member
        except tarfile.TarError as exc:
            self.tar.close()
            raise ArchiveError(f"{path}: damaged tar archive: {exc}") from None

    def close(self) -> None:
        self.tar.close()

    def member(self, name: str) -> tarfile.TarInfo | None:
        """The regular file at `name`, following symbolic and hard links within the archive."""
        member = self.members.get(_normalize(name))
        for _ in range(16):
            if member is None or member.isreg():
                return member
            if member.issym():
                member = self.members.get(_normalize(posixpath.join(posixpath.dirname(member.name), member.linkname)))
            elif member.islnk():
                member = self.members.get(_normalize(member.linkname))
            else:
                return None
        return None

    def open(self, member: tarfile.TarInfo) -> IO[bytes]:
        file = self.tar.extractfile(member)
        if file is None:
            raise ArchiveError(f"{member.name}: not a file")
        return file

    def read(self, name: str, limit: int) -> bytes | None:
        member = self.member(name)
        if member is None:
            return None
        if member.size > limit:
            raise ArchiveError(f"{name}: {member.size} bytes, more than the {limit} allowed")
        with self.open(member) as file:
            return file.read()


def _blob_name(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


@dataclass
class ImportPlan:
    kind: str  # "oci" or "docker"
    blobs: dict[str, tuple[tarfile.TarInfo, int | None]] = field(default_factory=dict)  # → member, size
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # children before parents
    tags: list[tuple[ImageName, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Planner:
    def __init__(self, reader: ArchiveReader, repository: ImageName | None) -> None:
        self.reader = reader
        self.repository = repository

    def plan(self) -> ImportPlan:
        if self.reader.member("index.json") is not None:
            return self.plan_oci()
        if self.reader.member("manifest.json") is not None:
            return self.plan_docker()
        raise ArchiveError("neither an OCI image layout (index.json) nor a `docker save` archive (manifest.json)")

    def name(self, annotations: object, plan: ImportPlan) -> ImageName | None:
        if not isinstance(annotations, dict):
            return None
        ref = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
        if not isinstance(ref, str) or not ref:
            return None
        if not any(c in ref for c in "/:@"):  # the OCI convention: a ref name is a tag only
            if self.repository is None:
                plan.notes.append(f"tag {ref!r} names no repository: not tagged (import with --repository IMAGE)")
                return None
            return ImageName(self.repository.upstream, self.repository.repository, ref)
        name = parse_image_name(ref)
        return None if name.is_digest else name

    # OCI image layout

    def plan_oci(self) -> ImportPlan:
        plan = ImportPlan("oci")
        layout = _json(self.reader.read("oci-layout", 4096) or b"{}", "oci-layout")
        if "imageLayoutVersion" not in layout:
            raise ArchiveError("index.json without an oci-layout file: not an OCI image layout")
        index = _json(self.reader.read("index.json", MAX_MANIFEST) or b"", "index.json")
        for descriptor in index.get("manifests") or []:
            if not isinstance(descriptor, dict):
                raise ArchiveError("index.json: a manifest descriptor is not an object")
            name = self.name(descriptor.get("annotations"), plan)
            label = str(name) if name else f"index.json entry {descriptor.get('digest')}"
            digest = self.walk(descriptor, label, plan)
            if name is not None:
                plan.tags.append((name, digest))
        if not plan.manifests:
            raise ArchiveError("index.json lists no images")
        return plan

    def walk(self, descriptor: dict[str, Any], label: str, plan: ImportPlan) -> str:
        """Plan one manifest and everything it references that the archive holds; its digest."""
        digest = _digest(descriptor.get("digest"), label)
        key = str(digest)
        if key in plan.manifests:
            return key
        body = self.reader.read(_blob_name(digest), MAX_MANIFEST)
        if body is None:
            raise ArchiveError(f"{label}: manifest {key} is not in the archive")
        if hashlib.new(digest.algorithm, body).hexdigest() != digest.hex:
            raise ArchiveError(f"{_blob_name(digest)}: content does not match its digest (a damaged archive)")
        if isinstance(descriptor.get("size"), int) and descriptor["size"] != len(body):
            raise ArchiveError(
                f"{label}: manifest {key} is {len(body)} bytes, its descriptor says {descriptor['size']}"
            )
        manifest = _json(body, f"manifest {key}")
        media_type = descriptor.get("mediaType") or manifest.get("mediaType")
        if isinstance(manifest.get("manifests"), list):
            media_type = media_type or OCI_INDEX
            for child in manifest["manifests"]:
                if not isinstance(child, dict):
                    continue
                child_digest = _digest(child.get("digest"), label)
                if self.reader.member(_blob_name(child_digest)) is None:
                    platform = platform_name(child.get("platform"))
                    plan.notes.append(f"{label}: platform {platform} ({child_digest}) is not in the archive")
                    continue
                self.walk(child, f"{label} ({platform_name(child.get('platform'))})", plan)
        else:
            media_type = media_type or OCI_MANIFEST
            for blob in _descriptors(manifest):
                blob_digest = _digest(blob["digest"], label)
                member = self.reader.member(_blob_name(blob_digest))
                if member is None:
                    raise ArchiveError(f"{label}: blob {blob_digest} of manifest {key} is not in the archive")
                size = blob.get("size")
                plan.blobs[str(blob_digest)] = (member, size if isinstance(size, int) else None)
        plan.manifests[key] = (str(media_type), body)
        return key

    # docker save

    def plan_docker(self) -> ImportPlan:
        plan = ImportPlan("docker")
        entries = json.loads(self.reader.read("manifest.json", MAX_MANIFEST) or b"[]")
        if not isinstance(entries, list) or not entries:
            raise ArchiveError("manifest.json lists no images")
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
                raise ArchiveError("manifest.json: an entry without Config")
            config_name = entry["Config"]
            config_member = self.reader.member(config_name)
            body = self.reader.read(config_name, MAX_CONFIG)
            if body is None or config_member is None:
                raise ArchiveError(f"manifest.json names {config_name}, which is not in the archive")
            config_digest = "sha256:" + hashlib.sha256(body).hexdigest()
            stem = posixpath.basename(config_name).removesuffix(".json").removeprefix("sha256:")
            if len(stem) == 64 and stem != config_digest[7:]:
                raise ArchiveError(f"{config_name}: content does not match its name (a damaged archive)")
            config = _json(body, config_name)
            diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
            layer_names = entry.get("Layers") or []
            if len(diff_ids) != len(layer_names):
                raise ArchiveError(f"{config_name}: {len(diff_ids)} diff_ids for {len(layer_names)} layers")
            layers = []
            for layer_name, diff_id in zip(layer_names, diff_ids, strict=True):
                member = self.reader.member(str(layer_name))
                if member is None:
                    raise ArchiveError(f"manifest.json names layer {layer_name}, which is not in the archive")
                digest = str(_digest(diff_id, config_name))
                plan.blobs[digest] = (member, member.size)
                layers.append({"mediaType": DOCKER_LAYER_UNCOMPRESSED, "size": member.size, "digest": digest})
            plan.blobs[config_digest] = (config_member, len(body))
            manifest = {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {"mediaType": DOCKER_CONFIG, "size": len(body), "digest": config_digest},
                "layers": layers,
            }
            manifest_body = json.dumps(manifest, indent=3).encode()
            digest = manifest_digest(manifest_body)
            plan.manifests[digest] = (DOCKER_MANIFEST, manifest_body)
            for tag in entry.get("RepoTags") or []:
                name = parse_image_name(str(tag))
                if not name.is_digest:
                    plan.tags.append((name, digest))
        return plan


@dataclass
class ImportReport:
    kind: str = "oci"
    images: list[tuple[ImageName, str]] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0
    already_cached: int = 0
    manifests: int = 0
    notes: list[str] = field(default_factory=list)


def _verify(reader: ArchiveReader, plan: ImportPlan) -> None:
    """Hash every blob in the archive; raise on the first that does not match, before anything is stored."""
    for digest, (member, size) in plan.blobs.items():
        algorithm, _, expected = digest.partition(":")
        hasher = hashlib.new(algorithm)
        count = 0
        with reader.open(member) as file:
            for chunk in _read(file):
                hasher.update(chunk)
                count += len(chunk)
        if size is not None and count != size:
            raise ArchiveError(f"{member.name}: {count} bytes, its descriptor says {size} (a damaged archive)")
        if hasher.hexdigest() != expected:
            raise ArchiveError(
                f"{member.name}: content does not match its digest {digest} (a damaged archive); nothing was imported"
            )


async def _commit(cache_dir: Path, reader: ArchiveReader, plan: ImportPlan, report: ImportReport) -> None:
    store = BlobStore(cache_dir)
    store.blobs.mkdir(parents=True, exist_ok=True)
    store.tmp.mkdir(parents=True, exist_ok=True)
    manifests = ManifestCache(cache_dir, store)
    try:
        for digest, (member, size) in plan.blobs.items():
            parsed = parse_digest(digest)
            if store.size_now(parsed) is not None:
                report.already_cached += 1
                continue
            writer = store.writer(parsed)  # temp file, hash, compare, fsync, rename
            try:
                with reader.open(member) as file:
                    for chunk in _read(file):
                        writer.write(chunk)
                await writer.commit(size)
            finally:
                writer.discard()
            report.blobs += 1
            report.bytes += writer.size
        for digest, (media_type, body) in plan.manifests.items():
            await manifests.put(parse_digest(digest), Manifest(digest, media_type, body))
            report.manifests += 1
    finally:
        manifests.close()


def _set_tags(cache_dir: Path, plan: ImportPlan) -> None:
    """Point each tag at its imported manifest; answers for other manifests of the tag are dropped."""
    now = time.time()
    with diskcache.Cache(str(cache_dir / "meta")) as meta:
        for name, digest in plan.tags:
            media_type, body = plan.manifests[digest]
            children = _json(body, digest).get("manifests") or []
            keep = {digest} | {c.get("digest") for c in children if isinstance(c, dict)}
            key = ("tag", name.upstream, name.repository, name.reference)
            with meta.transact():
                stored = meta.get(key)
                entries = {}
                if isinstance(stored, dict):
                    entries = {k: e for k, e in stored.items() if isinstance(e, TagEntry) and e.digest in keep}
                entries[IMPORT_ACCEPT] = TagEntry(digest, media_type, now)
                meta.set(key, entries)


def import_archive(cache_dir: Path, archive: Path, repository: str | None = None) -> ImportReport:
    """Verify the whole archive, then store its blobs, manifests and tags; raises ArchiveError."""
    base = parse_image_name(repository) if repository else None
    reader = ArchiveReader(archive)
    try:
        try:
            plan = Planner(reader, base).plan()
            _verify(reader, plan)
            report = ImportReport(plan.kind, plan.tags, notes=plan.notes)
            asyncio.run(_commit(cache_dir, reader, plan, report))
        except (tarfile.TarError, EOFError) as exc:
            raise ArchiveError(f"{archive}: damaged tar archive: {exc}") from None
        except RegistryError as exc:  # a blob changed between verification and commit
            raise ArchiveError(f"{archive}: {exc.message} {exc.detail or ''}") from None
        _set_tags(cache_dir, plan)
        return report
    finally:
        reader.close()


# Command line


def add_commands(commands: Any) -> None:
    """The `export` and `import` subcommands, on the CLI's subparsers."""
    out = commands.add_parser("export", help="write cached images to an OCI layout or `docker save` tar (offline)")
    out.add_argument("images", nargs="+", metavar="IMAGE", help="e.g. alpine:3.19 or ghcr.io/org/app:1.0")
    out.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.tar")
    out.add_argument("--config", type=Path, help="the config file `mirror serve` uses (for the cache directory)")
    platforms = out.add_mutually_exclusive_group()
    platforms.add_argument("--platform", action="append", metavar="OS/ARCH", help="platforms of an index to export")
    platforms.add_argument("--all-platforms", action="store_true", help="every platform of an index (all cached)")
    out.add_argument("--format", choices=["oci", "docker"], default="oci", help="oci (default) or docker (docker load)")
    into = commands.add_parser("import", help="load an OCI layout or `docker save` tar into the cache, verified")
    into.add_argument("archive", type=Path, metavar="FILE.tar")
    into.add_argument("--config", type=Path, help="the config file `mirror serve` uses (for the cache directory)")
    into.add_argument(
        "--repository",
        metavar="IMAGE",
        help="the image that tag-only names (skopeo oci-archive:FILE:TAG) belong to, e.g. docker.io/library/alpine",
    )


def main(args: argparse.Namespace, config: Config) -> int:
    cache_dir = config.cache.directory
    try:
        if args.command == "export":
            report = export(
                cache_dir,
                args.images,
                args.output,
                platforms=args.platform,
                all_platforms=args.all_platforms,
                fmt=args.format,
            )
            print(
                f"exported {report.images} image(s) to {args.output} ({args.format}): "
                f"{report.blobs} blobs, {report.bytes} bytes",
                file=sys.stderr,
            )
            return 0
        imported = import_archive(cache_dir, args.archive, args.repository)
    except (ArchiveError, OSError) as exc:
        print(f"mirror {args.command}: {exc}", file=sys.stderr)
        return 1
    for note in imported.notes:
        print(f"mirror import: note: {note}", file=sys.stderr)
    for name, _ in imported.images:
        if name.upstream not in config.upstreams:
            print(
                f"mirror import: note: {name.upstream} is not a configured upstream; {name} is not served",
                file=sys.stderr,
            )
    if imported.kind == "docker":
        print(
            "mirror import: note: a docker save archive has uncompressed layers and no manifest; the manifest "
            "is synthesized, so digests differ from the registry's",
            file=sys.stderr,
        )
    for name, digest in imported.images:
        print(f"{name} {digest}")
    print(
        f"imported {args.archive}: {imported.manifests} manifests, {imported.blobs} new blobs "
        f"({imported.bytes} bytes), {imported.already_cached} already cached",
        file=sys.stderr,
    )
    return 0
