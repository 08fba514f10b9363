"""Seed the upstream through the v2 push API: random gzip tar layers, a config, a schema2 manifest.

Layers are built like tests/support.py's make_layer (a tar holding random bytes, gzipped),
but written to temp files and pushed as a stream, so multi-GB blobs never sit in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CHUNK = 1024 * 1024


@dataclass
class Image:
    repository: str
    tag: str
    manifest: bytes
    blobs: list[dict[str, Any]] = field(default_factory=list)  # descriptors: digest, size

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @property
    def size(self) -> int:
        """Every byte a full pull transfers: manifest, config and layers."""
        return len(self.manifest) + sum(int(blob["size"]) for blob in self.blobs)

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.blobs[1:]

    def as_dict(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "tag": self.tag,
            "manifest_digest": self.digest,
            "size": self.size,
            "blobs": self.blobs,
        }


@dataclass
class Blob:
    repository: str
    digest: str
    size: int


def _random_stream(size: int, seed: int) -> Iterator[bytes]:
    """`size` incompressible bytes, quickly: one random block, each MiB stamped with its index."""
    block = bytearray(os.urandom(CHUNK))
    index = 0
    left = size
    while left > 0:
        block[:16] = seed.to_bytes(8, "little") + index.to_bytes(8, "little")
        piece = bytes(block[: min(CHUNK, left)])
        left -= len(piece)
        index += 1
        yield piece


def write_layer(path: Path, size: int, seed: int) -> tuple[str, int, str]:
    """A gzip tar layer holding `size` random bytes; returns (digest, compressed size, diff_id)."""

    class _Hashing:
        def __init__(self, raw: Any) -> None:
            self.raw, self.hasher = raw, hashlib.sha256()

        def write(self, data: bytes) -> int:
            self.hasher.update(data)
            return int(self.raw.write(data))

        def flush(self) -> None:
            self.raw.flush()

    class _Reader:
        def __init__(self, chunks: Iterator[bytes]) -> None:
            self.chunks, self.current, self.offset = chunks, b"", 0

        def read(self, n: int = -1) -> bytes:
            out = []
            want = n if n >= 0 else 1 << 62
            while want > 0:
                if self.offset >= len(self.current):
                    try:
                        self.current, self.offset = next(self.chunks), 0
                    except StopIteration:
                        break
                piece = self.current[self.offset : self.offset + want]
                self.offset += len(piece)
                want -= len(piece)
                out.append(piece)
            return b"".join(out)

    with open(path, "wb") as raw:
        hashed_gz = _Hashing(raw)
        with gzip.GzipFile(fileobj=hashed_gz, mode="wb", compresslevel=1, mtime=0) as gz:
            hashed_tar = _Hashing(gz)
            with tarfile.open(fileobj=hashed_tar, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                info = tarfile.TarInfo(f"data/layer-{seed}.bin")
                info.size, info.mtime, info.mode = size, 1_700_000_000, 0o644
                tar.addfile(info, _Reader(_random_stream(size, seed)))
    return "sha256:" + hashed_gz.hasher.hexdigest(), path.stat().st_size, "sha256:" + hashed_tar.hasher.hexdigest()


def write_raw_blob(path: Path, size: int, seed: int) -> str:
    hasher = hashlib.sha256()
    with open(path, "wb") as out:
        for chunk in _random_stream(size, seed):
            hasher.update(chunk)
            out.write(chunk)
    return "sha256:" + hasher.hexdigest()


class Pusher:
    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=600)

    def close(self) -> None:
        self.client.close()

    def exists(self, repository: str, digest: str) -> bool:
        return self.client.head(f"/v2/{repository}/blobs/{digest}").status_code == 200

    def push_file(self, repository: str, path: Path, digest: str) -> None:
        if self.exists(repository, digest):
            return
        start = self.client.post(f"/v2/{repository}/blobs/uploads/")
        if start.status_code != 202:
            raise RuntimeError(f"upload start: HTTP {start.status_code} {start.text[:200]}")
        size = path.stat().st_size

        def body() -> Iterator[bytes]:
            with open(path, "rb") as data:
                while chunk := data.read(4 * CHUNK):
                    yield chunk

        done = self.client.put(
            httpx.URL(start.headers["location"]).copy_merge_params({"digest": digest}),
            content=body(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        if done.status_code != 201:
            raise RuntimeError(f"upload of {digest}: HTTP {done.status_code} {done.text[:200]}")

    def push_bytes(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.exists(repository, digest):
            return digest
        start = self.client.post(f"/v2/{repository}/blobs/uploads/")
        if start.status_code != 202:
            raise RuntimeError(f"upload start: HTTP {start.status_code} {start.text[:200]}")
        done = self.client.put(
            httpx.URL(start.headers["location"]).copy_merge_params({"digest": digest}),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if done.status_code != 201:
            raise RuntimeError(f"upload of {digest}: HTTP {done.status_code} {done.text[:200]}")
        return digest

    def manifest(self, repository: str, tag: str, body: bytes, media_type: str = DOCKER_MANIFEST) -> None:
        response = self.client.put(
            f"/v2/{repository}/manifests/{tag}", content=body, headers={"Content-Type": media_type}
        )
        if response.status_code != 201:
            raise RuntimeError(f"manifest push: HTTP {response.status_code} {response.text[:200]}")


def push_image(pusher: Pusher, work: Path, repository: str, tag: str, layer_sizes: list[int], seed: int) -> Image:
    work.mkdir(parents=True, exist_ok=True)
    layers = []
    for i, size in enumerate(layer_sizes):
        path = work / f"layer-{seed}-{i}.tar.gz"
        digest, compressed, diff_id = write_layer(path, size, seed * 1000 + i)
        pusher.push_file(repository, path, digest)
        path.unlink()
        layers.append((digest, compressed, diff_id))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": [f"SEED={seed}"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id for _, _, diff_id in layers]},
            "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
        },
        sort_keys=True,
    ).encode()
    config_digest = pusher.push_bytes(repository, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": config_digest},
            "layers": [{"mediaType": DOCKER_LAYER, "size": size, "digest": digest} for digest, size, _ in layers],
        },
        indent=3,
    ).encode()
    pusher.manifest(repository, tag, manifest)
    blobs = [{"digest": config_digest, "size": len(config)}] + [
        {"digest": digest, "size": size} for digest, size, _ in layers
    ]
    return Image(repository, tag, manifest, blobs)


def push_raw_blob(pusher: Pusher, work: Path, repository: str, size: int, seed: int) -> Blob:
    """One big blob of random bytes (no manifest needed: blobs are fetched by digest)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"blob-{seed}.bin"
    digest = write_raw_blob(path, size, seed)
    pusher.push_file(repository, path, digest)
    path.unlink()
    return Blob(repository, digest, size)
