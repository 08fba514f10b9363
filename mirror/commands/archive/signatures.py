"""The signatures that travel with an exported image (issue 25): found, bounded and held for the archive.

For a manifest digest D exported from repository R: cosign's attachment (the manifest at tag
`sha256-<hex>.sig` in R and the blobs it names), and the sigstore bundles among D's referrers
(their manifests and blobs). Tags and referrer lists are asked of the running server when one
answers (it fetches them from the upstream into its cache, through its own single-flight and
kept lists), else read from the cache; digests are read from the cache first. Every value is
untrusted: each manifest and blob is at most 4 MiB and checked against its digest, at most
MAX_REFERRERS referrers and MAX_BLOBS blobs per manifest are looked at, at most
MAX_BYTES per digest are held, and a signature that is absent or refused is a note, never an error.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from mirror.cache.directory import CacheDirectory
from mirror.cache.layout import referrers_key
from mirror.commands.archive.names import (
    CONTAINERD_NAME,
    REF_NAME,
    SIGNATURE_OF,
    ArchiveError,
    ImageName,
    descriptors,
    parse_json,
)
from mirror.registry.errors import RegistryError
from mirror.registry.mediatypes import DOCKER_MANIFEST, MAX_MANIFEST, OCI_INDEX, OCI_MANIFEST
from mirror.registry.reference import parse_digest
from mirror.registry.referrers import (
    cosign_signature_tag,
    fallback_tag,
    index_descriptors,
    is_sigstore_bundle,
    with_artifact_type,
)

MAX_SIZE = MAX_MANIFEST  # one signature manifest or blob: 4 MiB (real ones are a few KiB)
MAX_REFERRERS = 64  # referrer descriptors looked at per digest
MAX_BLOBS = 64  # blobs per signature manifest
MAX_BYTES = 32 * 1024 * 1024  # all signatures of one digest, manifests and blobs
SIGNATURE_ACCEPT = ", ".join([OCI_MANIFEST, DOCKER_MANIFEST])


class Refused(Exception):
    """A signature not carried: too large, too many, damaged, or incomplete (the message says which)."""


@dataclass
class Signature:
    """One signature manifest to write: cosign's `.sig` tag (`tag` set) or a bundle referrer (`tag` None)."""

    subject: ImageName  # upstream/repository@D, the manifest it signs
    digest: str
    media_type: str
    size: int
    tag: str | None
    artifact_type: str | None = None
    blobs: list[str] = field(default_factory=list)

    def descriptor(self) -> dict[str, Any]:
        """Its entry in index.json: a tag's name for the `.sig` (any importer tags it), and what it signs."""
        annotations = {SIGNATURE_OF: str(self.subject)}
        if self.tag is not None:
            name = f"{self.subject.upstream}/{self.subject.repository}:{self.tag}"
            annotations |= {REF_NAME: name, CONTAINERD_NAME: name}
        entry: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type is not None:
            entry["artifactType"] = self.artifact_type
        return entry | {"annotations": annotations}


class Spool:
    """Signature bytes, verified, in a temporary file until the archive is written: memory stays flat."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._places: dict[str, tuple[int, int]] = {}

    def __contains__(self, digest: str) -> bool:
        return digest in self._places

    def add(self, digest: str, data: bytes) -> None:
        if digest not in self._places:
            self._places[digest] = (self._file.seek(0, 2), len(data))
            self._file.write(data)

    def read(self, digest: str) -> bytes:
        offset, size = self._places[digest]
        self._file.seek(offset)
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()


def _verified(digest: str, data: bytes, what: str) -> bytes:
    parsed = parse_digest(digest)
    if hashlib.new(parsed.algorithm, data).hexdigest() != parsed.hex:
        raise Refused(f"{what} does not match its digest {digest}")
    return data


def _is_digest(text: object) -> bool:
    try:
        parse_digest(str(text))
    except RegistryError:
        return False
    return isinstance(text, str)


class ServerReader:
    """The running mirror's registry API, which asks the upstream for what its cache lacks."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.gone: str | None = None  # why the server is no longer asked

    def get(self, image: ImageName, kind: str, reference: str, accept: str) -> tuple[bytes, str] | None:
        """The body (at most MAX_SIZE) and Content-Type of a 200 answer; None for any other."""
        if self.gone is not None:
            return None
        path = f"/v2/{image.repository}/{kind}/{reference}"
        try:
            with self.client.stream("GET", path, params={"ns": image.upstream}, headers={"Accept": accept}) as answer:
                if answer.status_code == 401:
                    self.gone = "the server wants a login (MIRROR_ADMIN_CREDENTIALS)"
                if answer.status_code != 200:
                    return None
                if int(answer.headers.get("content-length") or 0) > MAX_SIZE:
                    raise Refused(f"{kind[:-1]} {reference} is larger than {MAX_SIZE} bytes")
                body = bytearray()
                for chunk in answer.iter_raw():
                    body += chunk
                    if len(body) > MAX_SIZE:
                        raise Refused(f"{kind[:-1]} {reference} is larger than {MAX_SIZE} bytes")
                return bytes(body), answer.headers.get("content-type", "").partition(";")[0].strip()
        except httpx.TransportError as exc:
            self.gone = f"no server answers ({type(exc).__name__})"
            return None
        except (httpx.HTTPError, ValueError):
            return None


class SignatureFinder:
    """The signatures of exported digests, from the server or the cache, into a spool."""

    def __init__(self, cache: CacheDirectory, server: ServerReader | None, spool: Spool) -> None:
        self.cache = cache
        self.server = server
        self.spool = spool
        self.notes: list[str] = []
        self._budget = 0

    def find(self, subject: ImageName) -> list[Signature]:
        """What signs `subject` (upstream/repository@digest); what is refused becomes a note."""
        self._budget = MAX_BYTES
        found = []
        try:
            found += self._cosign(subject)
        except (Refused, ArchiveError, RegistryError) as exc:
            self.notes.append(f"{subject}: its cosign signature is not exported: {exc}")
        try:
            referrers = list(self._bundle_referrers(subject))
        except (Refused, ArchiveError, RegistryError) as exc:
            self.notes.append(f"{subject}: its referrers are not looked at: {exc}")
            referrers = []
        for descriptor in referrers:
            try:
                found.append(self._referrer(subject, descriptor))
            except (Refused, ArchiveError, RegistryError) as exc:
                self.notes.append(f"{subject}: its sigstore bundle {descriptor['digest']} is not exported: {exc}")
        return found

    def _cosign(self, subject: ImageName) -> list[Signature]:
        tag = cosign_signature_tag(parse_digest(subject.reference))
        got = self._manifest(subject, tag)
        if got is None:
            return []
        digest, media_type, body = got
        manifest = parse_json(body, f"signature manifest {digest}")
        return [Signature(subject, digest, media_type, len(body), tag, None, self._blobs(subject, manifest))]

    def _referrer(self, subject: ImageName, descriptor: dict[str, Any]) -> Signature:
        got = self._manifest(subject, descriptor["digest"])
        if got is None:
            raise Refused("its manifest is neither cached nor served")
        digest, media_type, body = got
        manifest = parse_json(body, f"referrer {digest}")
        named = manifest.get("subject")
        if not isinstance(named, dict) or named.get("digest") != subject.reference:
            raise Refused(f"its manifest's subject is not {subject.reference}")
        artifact_type = with_artifact_type({}, body).get("artifactType")
        if not is_sigstore_bundle({"artifactType": artifact_type}):
            raise Refused(f"its manifest's artifactType is {artifact_type!r}, not a sigstore bundle's")
        blobs = self._blobs(subject, manifest)
        return Signature(subject, digest, media_type, len(body), None, artifact_type, blobs)

    def _bundle_referrers(self, subject: ImageName) -> Iterator[dict[str, Any]]:
        """The referrers of `subject` that say they are sigstore bundles (at most MAX_REFERRERS looked at)."""
        listed = self._referrers(subject)
        if len(listed) > MAX_REFERRERS:
            self.notes.append(f"{subject}: {len(listed)} referrers; only the first {MAX_REFERRERS} looked at")
        for descriptor in listed[:MAX_REFERRERS]:
            if not isinstance(descriptor, dict) or not _is_digest(descriptor.get("digest")):
                continue
            if "artifactType" not in descriptor:  # a fallback index read from the cache
                body = self.cache.read(descriptor["digest"], MAX_SIZE)
                descriptor = with_artifact_type(descriptor, body) if body is not None else descriptor
            if is_sigstore_bundle(descriptor):
                yield descriptor

    def _referrers(self, subject: ImageName) -> list[Any]:
        """The referrers list: the server's answer, else the kept list, else the cached fallback tag's index."""
        answer = self.server.get(subject, "referrers", subject.reference, OCI_INDEX) if self.server else None
        if answer is None:
            kept = self.cache.metadata.kept_list(referrers_key(subject.upstream, subject.repository, subject.reference))
            if kept is not None:
                return list(kept.items)
            fallback = self._cached_tag(subject, fallback_tag(parse_digest(subject.reference)))
            answer = (fallback[2], OCI_INDEX) if fallback is not None else None
        if answer is None:
            return []
        try:
            return index_descriptors(answer[0])
        except RegistryError:  # not an index: no referrers
            return []

    def _manifest(self, subject: ImageName, reference: str) -> tuple[str, str, bytes] | None:
        """(digest, media type, body) of a manifest: a tag asked of the server first, a digest of the cache."""
        if ":" in reference:
            body = self.cache.read(reference, MAX_SIZE)
            media_type = self.cache.metadata.media_type(reference)
            if body is not None and media_type is not None:
                return self._take(reference, body), media_type, body
        answer = self.server.get(subject, "manifests", reference, SIGNATURE_ACCEPT) if self.server else None
        if answer is not None:
            body, content_type = answer
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            if ":" in reference:
                _verified(reference, body, f"manifest {reference}")
                digest = reference
            declared = parse_json(body, f"manifest {digest}").get("mediaType")
            media_type = content_type if content_type in (OCI_MANIFEST, DOCKER_MANIFEST) else declared
            if media_type not in (OCI_MANIFEST, DOCKER_MANIFEST):
                raise Refused(f"manifest {digest} is a {media_type or content_type!r}, not an image manifest")
            return self._take(digest, body), str(media_type), body
        return None if ":" in reference else self._cached_tag(subject, reference)

    def _cached_tag(self, subject: ImageName, tag: str) -> tuple[str, str, bytes] | None:
        entries = self.cache.metadata.tag(subject.upstream, subject.repository, tag).values()
        for entry in sorted(entries, key=lambda e: e.fetched_at, reverse=True):
            body = self.cache.read(entry.digest, MAX_SIZE)
            if body is not None:
                return self._take(entry.digest, body), entry.media_type, body
        return None

    def _blobs(self, subject: ImageName, manifest: dict[str, Any]) -> list[str]:
        """The config and layers of a signature manifest, each held in the spool; Refused if any is not."""
        if isinstance(manifest.get("manifests"), list):
            raise Refused("an index, not a signature manifest")
        named = descriptors(manifest)
        if len(named) > MAX_BLOBS:
            raise Refused(f"{len(named)} blobs, more than {MAX_BLOBS}")
        for descriptor in named:
            digest = descriptor["digest"]
            if not _is_digest(digest):
                raise Refused(f"a blob's digest {digest[:100]!r} is not a digest")
            size = descriptor.get("size")
            if not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
                raise Refused(f"blob {digest} declares {size!r} bytes (at most {MAX_SIZE} are taken)")
            if digest in self.spool:
                continue
            data = self.cache.read(digest, MAX_SIZE)
            if data is None and self.server is not None:
                answer = self.server.get(subject, "blobs", digest, "*/*")
                data = _verified(digest, answer[0], f"blob {digest}") if answer is not None else None
            if data is None:
                raise Refused(f"blob {digest} is neither cached nor served")
            if len(data) != size:
                raise Refused(f"blob {digest} is {len(data)} bytes, its descriptor says {size}")
            self._take(digest, data)
        return [descriptor["digest"] for descriptor in named]

    def _take(self, digest: str, data: bytes) -> str:
        """Hold `data` for the archive, within the digest's budget."""
        if digest not in self.spool:
            if len(data) > self._budget:
                raise Refused(f"more than {MAX_BYTES} bytes of signatures")
            self._budget -= len(data)
            self.spool.add(digest, data)
        return digest
