"""`mirror prefetch`: warm the cache through the running mirror's own registry API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from mirror.commands.configfile import add_config_option
from mirror.config import Config
from mirror.link import BACKGROUND_PRIORITY
from mirror.registry.mediatypes import ACCEPT_ALL, DEFAULT_PLATFORM, INDEX_TYPES, platform_matches, platform_name
from mirror.registry.reference import DOCKER_HUB, ImageRef, parse_image


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    warm = commands.add_parser("prefetch", help="warm the cache with images, through the running mirror")
    warm.add_argument("images", nargs="*", metavar="IMAGE", help="e.g. alpine:3.19 or ghcr.io/org/app:1.0")
    warm.add_argument("--file", type=Path, help="a file with one image per line (# comments allowed)")
    warm.add_argument(
        "--platform", action="append", metavar="OS/ARCH", help=f"platforms to fetch (default {DEFAULT_PLATFORM})"
    )
    warm.add_argument("--all-platforms", action="store_true", help="fetch every platform of an index")
    add_config_option(warm, "the config file `mirror serve` uses (for its address)")
    warm.add_argument("--url", help="the mirror's URL (default: from the config's listen address)")
    warm.set_defaults(run=prefetch_images)


def prefetch_images(args: argparse.Namespace, config: Config) -> int:
    """`mirror prefetch`: the images named and those in --file, through the mirror at --url or the config's address."""
    images = list(args.images)
    if args.file is not None:
        lines = args.file.read_text().splitlines()
        images += [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    if not images:
        print("mirror prefetch: name at least one image, or --file", file=sys.stderr)
        return 2
    url = args.url or f"http://{config.local_address}"
    platforms = None if args.all_platforms else set(args.platform or [DEFAULT_PLATFORM])
    return run(url, images, platforms)


@dataclass
class Progress:
    out: TextIO
    total: int = 0
    done: int = 0
    cached_blobs: int = 0
    fetched_blobs: int = 0
    started: float = field(default_factory=time.monotonic)

    def show(self, final: bool = False) -> None:
        if not final and not self.out.isatty():
            return  # a log file gets the summary, not a line per chunk
        elapsed = max(time.monotonic() - self.started, 1e-6)
        speed = self.done / elapsed
        eta = (self.total - self.done) / speed if speed > 0 and self.total > self.done else 0.0
        line = f"{self.done / 1e6:9.1f} / {self.total / 1e6:.1f} MB  {speed / 1e6:7.1f} MB/s  ETA {eta:5.0f}s"
        self.out.write(f"\r{line}" + ("\n" if final else ""))
        self.out.flush()


class Prefetcher:
    def __init__(self, url: str, platforms: set[str] | None, out: TextIO = sys.stderr) -> None:
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=httpx.Timeout(60, connect=10), trust_env=False)
        self.platforms = platforms  # None: every platform
        self.progress = Progress(out)

    def close(self) -> None:
        self.client.close()

    def _path(self, image: ImageRef, kind: str, reference: str) -> str:
        prefix = f"{image.registry}/" if image.registry else ""
        return f"/v2/{prefix}{image.repository}/{kind}/{reference}"

    def _manifest(self, image: ImageRef, reference: str) -> tuple[dict[str, Any], str]:
        response = self.client.get(self._path(image, "manifests", reference), headers={"Accept": ACCEPT_ALL})
        if response.status_code != 200:
            name = f"{image.registry or DOCKER_HUB}/{image.repository}{'@' if ':' in reference else ':'}{reference}"
            raise RuntimeError(f"{name}: {_error_message(response)}")
        return json.loads(response.content), response.headers.get("content-type", "").split(";")[0]

    def blobs_of(self, image: ImageRef) -> list[tuple[str, int]]:
        """(digest, size) of every config and layer for the chosen platforms."""
        manifest, media_type = self._manifest(image, image.reference)
        manifests = [manifest]
        if media_type in INDEX_TYPES or isinstance(manifest.get("manifests"), list):
            manifests = []
            for child in manifest.get("manifests", []):
                name = platform_name(child.get("platform"))
                if self.platforms is None or any(platform_matches(name, want) for want in self.platforms):
                    manifests.append(self._manifest(image, child["digest"])[0])
        blobs = []
        for m in manifests:
            for descriptor in [m.get("config"), *m.get("layers", [])]:
                if isinstance(descriptor, dict) and "digest" in descriptor:
                    blobs.append((descriptor["digest"], int(descriptor.get("size", 0))))
        return blobs

    def fetch(self, image: ImageRef, blobs: list[tuple[str, int]]) -> None:
        for digest, _ in blobs:
            # Lowest urgency (RFC 9218): the mirror lets clients' downloads go first.
            path = self._path(image, "blobs", digest)
            with self.client.stream("GET", path, headers={"Priority": BACKGROUND_PRIORITY}) as response:
                if response.status_code != 200:
                    response.read()
                    raise RuntimeError(f"blob {digest} of {image.repository}: {_error_message(response)}")
                if response.headers.get("x-cache") == "HIT":
                    self.progress.cached_blobs += 1
                else:
                    self.progress.fetched_blobs += 1
                for chunk in response.iter_raw(1024 * 1024):
                    self.progress.done += len(chunk)
                    self.progress.show()


def run(url: str, images: list[str], platforms: set[str] | None, out: TextIO = sys.stderr) -> int:
    prefetcher = Prefetcher(url, platforms, out)
    try:
        plan = []
        for text in images:
            image = parse_image(text)
            blobs = list(dict.fromkeys(prefetcher.blobs_of(image)))
            plan.append((image, blobs))
            prefetcher.progress.total += sum(size for _, size in blobs)
        for image, blobs in plan:
            prefetcher.fetch(image, blobs)
        progress = prefetcher.progress
        progress.show(final=True)
        out.write(
            f"prefetched {len(images)} image(s): {progress.fetched_blobs} blobs fetched, "
            f"{progress.cached_blobs} already cached\n"
        )
        return 0
    except (RuntimeError, httpx.HTTPError) as exc:
        out.write(f"\nmirror prefetch: {exc}\n")
        return 1
    finally:
        prefetcher.close()


def _error_message(response: httpx.Response) -> str:
    """A registry error answer as one line: `404 MANIFEST_UNKNOWN: manifest unknown`, not its JSON."""
    try:
        error = response.json()["errors"][0]
        text = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, IndexError, TypeError):
        text = response.reason_phrase
    return f"{response.status_code} {' '.join(str(text).split())[:300]}"
