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
import sys
from pathlib import Path

from mirror.cache.pins import PinError
from mirror.commands.archive.export import export
from mirror.commands.archive.importing import import_archive
from mirror.commands.archive.names import ArchiveError, ImageName
from mirror.commands.changes import pin_through_server_or_directory
from mirror.commands.configfile import add_config_option
from mirror.config import Config


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `export` and `import` subcommands, on the CLI's subparsers."""
    out = commands.add_parser("export", help="write cached images to an OCI layout or `docker save` tar (offline)")
    out.add_argument("images", nargs="+", metavar="IMAGE", help="e.g. alpine:3.19 or ghcr.io/org/app:1.0")
    out.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.tar")
    add_config_option(out, "the config file `mirror serve` uses (for the cache directory)")
    out.set_defaults(run=main)
    platforms = out.add_mutually_exclusive_group()
    platforms.add_argument("--platform", action="append", metavar="OS/ARCH", help="platforms of an index to export")
    platforms.add_argument("--all-platforms", action="store_true", help="every platform of an index (all cached)")
    out.add_argument("--format", choices=["oci", "docker"], default="oci", help="oci (default) or docker (docker load)")
    into = commands.add_parser("import", help="load an OCI layout or `docker save` tar into the cache, verified")
    into.add_argument("archive", type=Path, metavar="FILE.tar")
    add_config_option(into, "the config file `mirror serve` uses (for the cache directory)")
    into.set_defaults(run=main)
    into.add_argument(
        "--repository",
        metavar="IMAGE",
        help="the image that tag-only names (skopeo oci-archive:FILE:TAG) belong to, e.g. docker.io/library/alpine",
    )
    into.add_argument(
        "--no-pin", action="store_true", help="let the imported images be evicted (by default they never are)"
    )


def _pin_imported(config: Config, images: list[tuple[ImageName, str]]) -> None:
    """Imported images may be the only copy anywhere (a site without internet): pinned, within max_size.

    Through the running server when there is one, so that it stops evicting them at once."""
    names = [str(name) for name, _ in images]
    try:
        pinned = pin_through_server_or_directory(config, names)
    except (PinError, SystemExit) as exc:
        print(f"mirror import: note: not pinned: {exc}", file=sys.stderr)
        return
    print(f"mirror import: pinned {len(pinned)} image(s); `mirror unpin` lets them go", file=sys.stderr)


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
    if not args.no_pin:
        _pin_imported(config, imported.images)
    print(
        f"imported {args.archive}: {imported.manifests} manifests, {imported.blobs} new blobs "
        f"({imported.bytes} bytes), {imported.already_cached} already cached",
        file=sys.stderr,
    )
    return 0
