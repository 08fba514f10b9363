"""`mirror import`: a docker-archive or oci-archive tar into the cache, verified before anything is visible."""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror.cache import journal
from mirror.cache.blobs import BlobStore
from mirror.cache.directory import CacheDirectory
from mirror.cache.layout import KeptList, TagEntry, referrers_key
from mirror.cache.metadata import Manifest, ManifestCache, manifest_digest
from mirror.commands.archive.names import (
    CONTAINERD_NAME,
    DOCKER_CONFIG,
    DOCKER_LAYER_UNCOMPRESSED,
    IMPORT_ACCEPT,
    MAX_CONFIG,
    REF_NAME,
    SIGNATURE_OF,
    ArchiveError,
    ImageName,
    checked_digest,
    descriptors,
    parse_image_name,
    parse_json,
)
from mirror.commands.archive.tar import ArchiveReader, read_chunks
from mirror.registry.errors import RegistryError
from mirror.registry.mediatypes import (
    DOCKER_MANIFEST,
    MAX_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    platform_name,
    referenced_digests,
)
from mirror.registry.reference import Digest, parse_digest
from mirror.registry.referrers import cosign_signature_tag, with_artifact_type


def _blob_name(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


@dataclass
class ImportPlan:
    kind: str  # "oci" or "docker"
    blobs: dict[str, tuple[tarfile.TarInfo, int | None]] = field(default_factory=dict)  # → member, size
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # children before parents
    tags: list[tuple[ImageName, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    signature_tags: list[tuple[ImageName, str]] = field(default_factory=list)  # cosign's `.sig` tags
    # (upstream, repository, subject digest) -> referrer digest -> its descriptor, as the referrers API lists it
    referrers: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)

    def signatures(self) -> list[str]:
        """The names of the signatures planned, as `mirror pin` takes them."""
        tags = [str(name) for name, _ in self.signature_tags]
        return tags + [f"{u}/{r}@{digest}" for (u, r, _), found in self.referrers.items() for digest in found]


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
        layout = parse_json(self.reader.read("oci-layout", 4096) or b"{}", "oci-layout")
        if "imageLayoutVersion" not in layout:
            raise ArchiveError("index.json without an oci-layout file: not an OCI image layout")
        index = parse_json(self.reader.read("index.json", MAX_MANIFEST) or b"", "index.json")
        for descriptor in index.get("manifests") or []:
            if not isinstance(descriptor, dict):
                raise ArchiveError("index.json: a manifest descriptor is not an object")
            name = self.name(descriptor.get("annotations"), plan)
            label = str(name) if name else f"index.json entry {descriptor.get('digest')}"
            digest = self.walk(descriptor, label, plan)
            annotations = descriptor.get("annotations")
            signed = annotations.get(SIGNATURE_OF) if isinstance(annotations, dict) else None
            if signed is not None:
                self.signature(signed, name, digest, plan)
            elif name is not None:
                plan.tags.append((name, digest))
        if not plan.manifests:
            raise ArchiveError("index.json lists no images")
        return plan

    def signature(self, signed: object, name: ImageName | None, digest: str, plan: ImportPlan) -> None:
        """A signature `mirror export` carried: the `.sig` tag of what it signs, or a referrer whose subject it is."""
        subject = parse_image_name(str(signed))
        if not subject.is_digest:
            raise ArchiveError(f"index.json: {SIGNATURE_OF} {signed!r} names no digest")
        if name is not None:
            expected = ImageName(
                subject.upstream, subject.repository, cosign_signature_tag(parse_digest(subject.reference))
            )
            if name != expected:
                plan.notes.append(f"{name} is not the signature tag of {subject}: not tagged")
            else:
                plan.signature_tags.append((name, digest))
            return
        media_type, body = plan.manifests[digest]
        named = parse_json(body, f"manifest {digest}").get("subject")
        if not isinstance(named, dict) or named.get("digest") != subject.reference:
            plan.notes.append(f"referrer {digest} does not name {subject.reference} as its subject: not listed")
            return
        listed = with_artifact_type({"mediaType": media_type, "digest": digest, "size": len(body)}, body)
        plan.referrers.setdefault((subject.upstream, subject.repository, subject.reference), {})[digest] = listed

    def walk(self, descriptor: dict[str, Any], label: str, plan: ImportPlan) -> str:
        """Plan one manifest and everything it references that the archive holds; its digest."""
        digest = checked_digest(descriptor.get("digest"), label)
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
        manifest = parse_json(body, f"manifest {key}")
        media_type = descriptor.get("mediaType") or manifest.get("mediaType")
        if isinstance(manifest.get("manifests"), list):
            media_type = media_type or OCI_INDEX
            for child in manifest["manifests"]:
                if not isinstance(child, dict):
                    continue
                child_digest = checked_digest(child.get("digest"), label)
                if self.reader.member(_blob_name(child_digest)) is None:
                    platform = platform_name(child.get("platform"))
                    plan.notes.append(f"{label}: platform {platform} ({child_digest}) is not in the archive")
                    continue
                self.walk(child, f"{label} ({platform_name(child.get('platform'))})", plan)
        else:
            media_type = media_type or OCI_MANIFEST
            for blob in descriptors(manifest):
                blob_digest = checked_digest(blob["digest"], label)
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
            config = parse_json(body, config_name)
            diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
            layer_names = entry.get("Layers") or []
            if len(diff_ids) != len(layer_names):
                raise ArchiveError(f"{config_name}: {len(diff_ids)} diff_ids for {len(layer_names)} layers")
            layers = []
            for layer_name, diff_id in zip(layer_names, diff_ids, strict=True):
                member = self.reader.member(str(layer_name))
                if member is None:
                    raise ArchiveError(f"manifest.json names layer {layer_name}, which is not in the archive")
                digest = str(checked_digest(diff_id, config_name))
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
    signatures: list[str] = field(default_factory=list)  # `.sig` tags and referrers by digest


def _verify(reader: ArchiveReader, plan: ImportPlan) -> None:
    """Hash every blob in the archive; raise on the first that does not match, before anything is stored."""
    for digest, (member, size) in plan.blobs.items():
        algorithm, _, expected = digest.partition(":")
        hasher = hashlib.new(algorithm)
        count = 0
        with reader.open(member) as file:
            for chunk in read_chunks(file):
                hasher.update(chunk)
                count += len(chunk)
        if size is not None and count != size:
            raise ArchiveError(f"{member.name}: {count} bytes, its descriptor says {size} (a damaged archive)")
        if hasher.hexdigest() != expected:
            raise ArchiveError(
                f"{member.name}: content does not match its digest {digest} (a damaged archive); nothing was imported"
            )


async def _commit(cache: CacheDirectory, reader: ArchiveReader, plan: ImportPlan, report: ImportReport) -> None:
    store = BlobStore(cache.layout)
    manifests = ManifestCache(cache.metadata, store)
    for digest, (member, size) in plan.blobs.items():
        parsed = parse_digest(digest)
        if store.size_now(parsed) is not None:
            report.already_cached += 1
            continue
        writer = store.writer(parsed)  # temp file, hash, compare, fsync, rename
        try:
            with reader.open(member) as file:
                for chunk in read_chunks(file):
                    writer.write(chunk)
            await writer.commit(size)
        finally:
            writer.discard()
        report.blobs += 1
        report.bytes += writer.size
    for digest, (media_type, body) in plan.manifests.items():
        await manifests.put(parse_digest(digest), Manifest(digest, media_type, body))
        report.manifests += 1


def _set_tags(cache: CacheDirectory, plan: ImportPlan) -> None:
    """Point each tag (`.sig` tags too) at its imported manifest; answers for other manifests of the tag are dropped."""
    now = time.time()
    for name, digest in [*plan.tags, *plan.signature_tags]:
        media_type, body = plan.manifests[digest]
        children = parse_json(body, digest).get("manifests") or []
        keep = {digest} | {c.get("digest") for c in children if isinstance(c, dict)}

        answer = TagEntry(digest, media_type, now, imported=True)

        def retag(
            entries: dict[str, TagEntry], keep: set[object] = keep, answer: TagEntry = answer
        ) -> dict[str, TagEntry]:
            kept = {accept: entry for accept, entry in entries.items() if entry.digest in keep}
            return kept | {IMPORT_ACCEPT: answer}

        cache.metadata.update_tag(name.upstream, name.repository, name.reference, retag)
        journal.record(cache.metadata, name.upstream, name.repository, name.reference, digest, now)
        cache.metadata.link(name.upstream, name.repository, _image_digests(plan, digest))


def _set_referrers(cache: CacheDirectory, plan: ImportPlan) -> None:
    """Each subject's referrers list (kept as the proxy keeps the upstream's), the imported ones added to
    what was kept; each referrer and its blobs linked to the repository."""
    now = time.time()
    for (upstream, repository, subject), found in plan.referrers.items():
        key = referrers_key(upstream, repository, subject)
        kept = cache.metadata.kept_list(key)
        held = [item for item in (kept.items if kept else ()) if isinstance(item, dict)]
        items = {item["digest"]: item for item in held if isinstance(item.get("digest"), str)}
        cache.metadata.set_kept_list(key, KeptList(tuple((items | found).values()), now))
        for digest in found:
            cache.metadata.link(upstream, repository, _image_digests(plan, digest))


def _image_digests(plan: ImportPlan, digest: str) -> set[str]:
    """A manifest and all it names, through an index's children: what is linked to its repository."""
    found = {digest}
    pending = [digest]
    while pending:
        current = plan.manifests.get(pending.pop())
        if current is None:
            continue
        for named in referenced_digests(parse_json(current[1], digest)) - found:
            found.add(named)
            pending.append(named)
    return found


def import_archive(cache_dir: Path, archive: Path, repository: str | None = None) -> ImportReport:
    """Verify the whole archive, then store its blobs, manifests and tags; raises ArchiveError."""
    base = parse_image_name(repository) if repository else None
    reader = ArchiveReader(archive)
    cache: CacheDirectory | None = None
    try:
        try:
            plan = Planner(reader, base).plan()
            _verify(reader, plan)
            report = ImportReport(plan.kind, plan.tags, notes=plan.notes, signatures=plan.signatures())
            cache = CacheDirectory.open(cache_dir)
            asyncio.run(_commit(cache, reader, plan, report))
        except (tarfile.TarError, EOFError) as exc:
            raise ArchiveError(f"{archive}: damaged tar archive: {exc}") from None
        except RegistryError as exc:  # a blob changed between verification and commit
            raise ArchiveError(f"{archive}: {exc.message} {exc.detail or ''}") from None
        _set_tags(cache, plan)
        _set_referrers(cache, plan)
        return report
    finally:
        reader.close()
        if cache is not None:
            cache.close()
