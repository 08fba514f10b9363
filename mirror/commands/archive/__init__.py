"""`mirror export` and `mirror import`: image archives for sites without internet.

Export reads the cache directory and writes either an OCI image layout tar (the exact
manifests and blobs, digests preserved, and the signatures of each: cosign's `.sig` tag and
sigstore bundle referrers, asked of the running server when there is one, which fetches them
from the upstream) or a `docker save` tar (layers decompressed, as `docker load` wants them).
Import reads an OCI layout tar, or a `docker save` tar, verifies every digest before anything
is committed, then stores the blobs through `BlobStore.writer` (temp file, hash, compare,
fsync, rename), the manifests through `ManifestCache.put`, and the tags (`.sig` tags too) and
referrers lists last, so a running mirror never sees a tag whose content is missing. Both
stream: memory stays flat whatever the archive's size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

from mirror.cache.pins import PinError
from mirror.commands.changes import admin_auth, local_url, pin_through_server_or_directory
from mirror.commands.configfile import add_config_option
from mirror.config import Config


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `export` and `import` subcommands, on the CLI's subparsers."""
    out = commands.add_parser(
        "export",
        help="write cached images to an OCI layout or `docker save` tar",
        description="Write cached images to a tar. The OCI format carries their signatures too (cosign's "
        "`sha256-<hex>.sig` tag, sigstore bundles among the referrers), so an offline mirror that imports it can "
        "enforce the same signature policy; they are asked of the running mirror at the config's address "
        "(which fetches them from the upstream), else taken from the cache. A missing signature is no error.",
    )
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


def _pin_imported(config: Config, images: list[str], signatures: list[str]) -> None:
    """Imported images and their signatures may be the only copy anywhere (a site without internet):
    pinned, within max_size.

    Through the running server when there is one, so that it stops evicting them at once."""
    try:
        pinned = pin_through_server_or_directory(config, images + signatures)
    except (PinError, SystemExit) as exc:
        print(f"mirror import: note: not pinned: {exc}", file=sys.stderr)
        return
    signed = len(set(pinned) & set(signatures))
    also = f" and {signed} signature(s)" if signed else ""
    print(f"mirror import: pinned {len(pinned) - signed} image(s){also}; `mirror unpin` lets them go", file=sys.stderr)


def _server(config: Config) -> httpx.Client:
    """The running mirror on this host, as export asks it for signatures (the admin login of the environment)."""
    return httpx.Client(
        base_url=local_url(config, ""),
        auth=admin_auth(),
        timeout=httpx.Timeout(60, connect=2),
        trust_env=False,
        verify=False,  # our own server on this host, maybe with a certificate for another name
    )


def main(args: argparse.Namespace, config: Config) -> int:
    # Imported here: `mirror serve` registers every command's parser, and needs none of this (tarfile, gzip).
    from mirror.commands.archive.export import export
    from mirror.commands.archive.importing import import_archive
    from mirror.commands.archive.names import ArchiveError

    cache_dir = config.cache.directory
    try:
        if args.command == "export":
            with _server(config) as server:
                report = export(
                    cache_dir,
                    args.images,
                    args.output,
                    platforms=args.platform,
                    all_platforms=args.all_platforms,
                    fmt=args.format,
                    server=server,
                    signature_policy=config.signatures,
                )
            for note in report.notes:
                print(f"mirror export: note: {note}", file=sys.stderr)
            print(
                f"exported {report.images} image(s) and {report.signatures} signature(s) to {args.output} "
                f"({args.format}): {report.blobs} blobs, {report.bytes} bytes",
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
        _pin_imported(config, [str(name) for name, _ in imported.images], imported.signatures)
    print(
        f"imported {args.archive}: {imported.manifests} manifests ({len(imported.signatures)} signatures), "
        f"{imported.blobs} new blobs ({imported.bytes} bytes), {imported.already_cached} already cached",
        file=sys.stderr,
    )
    return 0
