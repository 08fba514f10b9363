"""A cache directory opened for reading and upkeep: the one way tools and routes reach the cache's files.

The server opens it once (`Mirror`) and shares it with its routes; the command-line tools
(`ls`, `gc`, `verify`, `export`, `import`) open their own. Either way the format is checked
(and upgraded) first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO

from mirror.cache.format import prepare
from mirror.cache.index import MetadataIndex
from mirror.cache.layout import CacheLayout
from mirror.registry.errors import RegistryError
from mirror.registry.mediatypes import MAX_MANIFEST
from mirror.registry.reference import parse_digest


class CacheDirectory:
    def __init__(self, layout: CacheLayout, metadata: MetadataIndex) -> None:
        self.layout = layout
        self.metadata = metadata

    @classmethod
    def open(cls, root: Path) -> CacheDirectory:
        """Open (creating or upgrading) the cache at root; raises CacheFormatError for a newer format."""
        layout = CacheLayout(root)
        prepare(layout)
        return cls(layout, MetadataIndex(layout))

    @staticmethod
    def exists(root: Path) -> bool:
        """Whether root holds a cache at all (tools that only read should not create one)."""
        return CacheLayout(root).meta.is_dir()

    def close(self) -> None:
        self.metadata.close()

    def blob_path(self, digest: str) -> Path:
        return self.layout.blob_path(parse_digest(digest))

    def has(self, digest: str) -> bool:
        try:
            return self.blob_path(digest).is_file()
        except RegistryError:
            return False

    def size(self, digest: str) -> int | None:
        try:
            return self.blob_path(digest).stat().st_size
        except (OSError, RegistryError):
            return None

    def open_blob(self, digest: str) -> BinaryIO | None:
        """The blob's file, or None; an open file stays readable if the blob is evicted meanwhile."""
        try:
            return open(self.blob_path(digest), "rb")
        except (FileNotFoundError, RegistryError):
            return None

    def read(self, digest: str, limit: int = MAX_MANIFEST) -> bytes | None:
        """A small blob's bytes, verified against its digest; None if absent, too large or damaged."""
        file = self.open_blob(digest)
        if file is None:
            return None
        with file:
            data = file.read(limit + 1)
        parsed = parse_digest(digest)
        if len(data) > limit or hashlib.new(parsed.algorithm, data).hexdigest() != parsed.hex:
            return None
        return data

    def read_json(self, digest: str) -> dict[str, Any] | None:
        data = self.read(digest)
        try:
            value = json.loads(data) if data is not None else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
