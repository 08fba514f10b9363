"""Signatures travel with `mirror export` and `mirror import` (issue 25): cosign's `.sig` tag and sigstore
bundle referrers, pushed to a real registry, exported through a running mirror and served offline after import.

The signatures here need not verify (the verifier has its own tests): cosign's attachment is written from its
documented layout, the bundle referrer as `@sigstore/oci` attaches one, and distribution 2.8 (no referrers API)
gets the fallback tag's index, as a client keeps it up to date.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import ALL_MANIFESTS, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Image, MirrorProcess, Pusher, Registry, sha256
from test_archive import UNREACHABLE, mirror_cli

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY = "application/vnd.oci.empty.v1+json"
SBOM = "application/spdx+json"
SIGNATURE_OF = "dev.mirror.signature.of"


@dataclass
class Signed:
    """An image and what signs it, as pushed."""

    image: Image
    sig_tag: str
    sig_manifest: bytes
    sig_payload: bytes
    bundle_manifest: bytes
    bundle: bytes
    sbom_manifest: bytes


def descriptor(media_type: str, data: bytes, **more: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **more}


def push_cosign_signature(pusher: Pusher, image: Image, payload_size: int | None = None) -> tuple[str, bytes, bytes]:
    """cosign's attachment: an OCI manifest at `sha256-<hex>.sig`, one simple-signing layer with its signature
    annotation; `payload_size` pads the payload (a hostile, oversized one). The tag, manifest and payload."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": f"example.test/{image.repository}"},
                "image": {"docker-manifest-digest": image.digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    if payload_size is not None:
        payload += b" " * (payload_size - len(payload))
    config = json.dumps(
        {"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": [sha256(payload)]}}
    ).encode()
    for blob in (payload, config):
        pusher.blob(image.repository, blob)
    signature = base64.b64encode(b"not a real signature: the verifier's tests sign for real").decode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [
                descriptor(SIMPLE_SIGNING, payload, annotations={"dev.cosignproject.cosign/signature": signature})
            ],
        }
    ).encode()
    tag = "sha256-" + image.digest.removeprefix("sha256:") + ".sig"
    pusher.manifest(image.repository, tag, manifest, OCI_MANIFEST)
    return tag, manifest, payload


def push_referrer(pusher: Pusher, image: Image, artifact_type: str, content: bytes) -> bytes:
    """A referrer of `image` (artifactType, the empty config, one layer, the subject), pushed by digest."""
    pusher.blob(image.repository, b"{}")
    pusher.blob(image.repository, content)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": descriptor(EMPTY, b"{}"),
            "layers": [descriptor(artifact_type, content)],
            "subject": descriptor(OCI_MANIFEST, image.manifest),
            "annotations": {"dev.sigstore.bundle.content": "message-signature"},
        }
    ).encode()
    pusher.manifest(image.repository, sha256(manifest), manifest, OCI_MANIFEST)
    return manifest


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry of this module's own: what it pushes stays out of the session registry's catalog."""
    registry = Registry(tmp_path_factory.mktemp("signatures-registry")).start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def signed(registry: Registry) -> Signed:
    with Pusher(registry.url) as pusher:
        image = pusher.image("team/app", "v1", [4096, 2048], seed=71, oci=True)
        tag, sig_manifest, payload = push_cosign_signature(pusher, image)
        bundle = json.dumps({"mediaType": BUNDLE, "verificationMaterial": {}, "messageSignature": {}}).encode()
        bundle_manifest = push_referrer(pusher, image, BUNDLE, bundle)
        sbom_manifest = push_referrer(pusher, image, SBOM, b'{"spdxVersion": "SPDX-2.3"}')
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                descriptor(OCI_MANIFEST, bundle_manifest, artifactType=BUNDLE),
                descriptor(OCI_MANIFEST, sbom_manifest, artifactType=SBOM),
            ],
        }
        fallback = "sha256-" + image.digest.removeprefix("sha256:")
        pusher.manifest(image.repository, fallback, json.dumps(index).encode(), OCI_INDEX)
    return Signed(image, tag, sig_manifest, payload, bundle_manifest, bundle, sbom_manifest)


@pytest.fixture
def source(registry: Registry, tmp_path: Path) -> Iterator[MirrorProcess]:
    process = MirrorProcess(tmp_path / "source", {"docker.io": registry.url}).start()
    try:
        yield process
    finally:
        process.stop()


def pull(mirror: MirrorProcess, image: Image) -> None:
    """The image through the mirror (manifest and blobs): what export takes from its cache."""
    with httpx.Client(base_url=f"{mirror.url}/v2/{image.repository}") as client:
        answer = client.get(f"/manifests/{image.tag}", headers={"Accept": ", ".join(ALL_MANIFESTS)})
        assert answer.status_code == 200, answer.text
        for digest in image.blobs:
            assert client.get(f"/blobs/{digest}").status_code == 200
    mirror.wait_idle()


def index_entries(archive: Path) -> list[dict[str, Any]]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        entries: list[dict[str, Any]] = json.loads(member.read())["manifests"]
        return entries


def offline(root: Path) -> MirrorProcess:
    """A mirror whose upstream cannot be reached, tags stale after 1 s; its config written, not started."""
    process = MirrorProcess(root, {"docker.io": UNREACHABLE}, extra_config='tag_ttl = "1s"')
    process.write_config()
    return process


def import_into(mirror: MirrorProcess, archive: Path) -> subprocess.CompletedProcess[str]:
    result = mirror_cli("import", str(archive), "--config", str(mirror.root / "config.toml"))
    assert result.returncode == 0, result.stderr
    return result


def test_signatures_travel_and_are_served_offline(source: MirrorProcess, signed: Signed, tmp_path: Path) -> None:
    image = signed.image
    pull(source, image)
    archive = tmp_path / "signed.tar"
    config = str(source.root / "config.toml")
    # The running mirror is asked for the signatures: it fetches them from the upstream.
    result = mirror_cli("export", "team/app:v1", "-o", str(archive), "--config", config)
    assert result.returncode == 0, result.stderr
    assert "1 image(s) and 2 signature(s)" in result.stderr

    entries = index_entries(archive)
    by_digest = {entry["digest"]: entry for entry in entries}
    assert set(by_digest) == {image.digest, sha256(signed.sig_manifest), sha256(signed.bundle_manifest)}
    subject = f"docker.io/team/app@{image.digest}"
    assert by_digest[sha256(signed.sig_manifest)]["annotations"] == {
        SIGNATURE_OF: subject,
        "org.opencontainers.image.ref.name": f"docker.io/team/app:{signed.sig_tag}",
        "io.containerd.image.name": f"docker.io/team/app:{signed.sig_tag}",
    }
    assert by_digest[sha256(signed.bundle_manifest)]["artifactType"] == BUNDLE
    assert by_digest[sha256(signed.bundle_manifest)]["annotations"] == {SIGNATURE_OF: subject}

    # With no server, the same signatures come from the cache (the server's fetch put them there).
    source.stop()
    again = tmp_path / "again.tar"
    result = mirror_cli("export", "team/app:v1", "-o", str(again), "--config", config)
    assert result.returncode == 0, result.stderr
    assert "signatures from the cache only" in result.stderr
    assert again.read_bytes() == archive.read_bytes()

    target = offline(tmp_path / "offline")
    imported = import_into(target, archive)
    assert imported.stdout.split() == ["docker.io/team/app:v1", image.digest]  # the signatures are no images
    assert "pinned 1 image(s) and 2 signature(s)" in imported.stderr  # kept as the image is
    target.start()
    try:
        check_served_offline(target, signed)
        time.sleep(1.2)  # past tag_ttl: the upstream is asked, fails, and the imported answers stand
        check_served_offline(target, signed)
    finally:
        target.stop()


def check_served_offline(mirror: MirrorProcess, signed: Signed) -> None:
    image = signed.image
    with httpx.Client(base_url=f"{mirror.url}/v2/{image.repository}") as client:
        accept = {"Accept": ", ".join(ALL_MANIFESTS)}
        answer = client.get(f"/manifests/{signed.sig_tag}", headers=accept)
        assert answer.status_code == 200, answer.text
        assert answer.content == signed.sig_manifest
        assert client.get(f"/blobs/{sha256(signed.sig_payload)}").content == signed.sig_payload

        answer = client.get(f"/referrers/{image.digest}")
        assert answer.status_code == 200, answer.text
        listed = answer.json()["manifests"]
        assert [(d["digest"], d["artifactType"]) for d in listed] == [(sha256(signed.bundle_manifest), BUNDLE)]
        answer = client.get(f"/manifests/{sha256(signed.bundle_manifest)}", headers=accept)
        assert answer.status_code == 200, answer.text
        assert answer.content == signed.bundle_manifest
        assert client.get(f"/blobs/{sha256(signed.bundle)}").content == signed.bundle
        # The SBOM, no signature, did not travel.
        assert client.get(f"/manifests/{sha256(signed.sbom_manifest)}", headers=accept).status_code != 200


def test_an_unsigned_image_travels_as_before(source: MirrorProcess, registry: Registry, tmp_path: Path) -> None:
    with Pusher(registry.url) as pusher:
        image = pusher.image("team/plain", "v1", [4096], seed=72, oci=True)
    pull(source, image)
    archive = tmp_path / "plain.tar"
    result = mirror_cli("export", "team/plain:v1", "-o", str(archive), "--config", str(source.root / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert "0 signature(s)" in result.stderr and "note" not in result.stderr
    (entry,) = index_entries(archive)
    assert entry["digest"] == image.digest and SIGNATURE_OF not in entry["annotations"]

    target = offline(tmp_path / "offline")
    imported = import_into(target, archive)
    assert imported.stdout.split() == ["docker.io/team/plain:v1", image.digest]
    assert "pinned 1 image(s);" in imported.stderr and "(0 signatures)" in imported.stderr
    target.start()
    try:
        answer = httpx.get(f"{target.url}/v2/team/plain/referrers/{image.digest}")
        assert answer.status_code == 503, answer.text  # nothing kept, and the upstream cannot be asked
        tag = "sha256-" + image.digest.removeprefix("sha256:") + ".sig"
        assert httpx.get(f"{target.url}/v2/team/plain/manifests/{tag}").status_code == 503
    finally:
        target.stop()


def test_an_oversized_signature_is_left_out(source: MirrorProcess, registry: Registry, tmp_path: Path) -> None:
    with Pusher(registry.url) as pusher:
        image = pusher.image("team/hostile", "v1", [4096], seed=73, oci=True)
        push_cosign_signature(pusher, image, payload_size=5 * 1024 * 1024)  # over the 4 MiB taken
        # A referrers list that lies: an SBOM listed as a bundle (distribution checks that the index's entries exist).
        sbom = push_referrer(pusher, image, SBOM, b'{"spdxVersion": "SPDX-2.3"}')
        index = {"schemaVersion": 2, "manifests": [descriptor(OCI_MANIFEST, sbom, artifactType=BUNDLE)]}
        fallback = "sha256-" + image.digest.removeprefix("sha256:")
        pusher.manifest(image.repository, fallback, json.dumps(index).encode(), OCI_INDEX)
    pull(source, image)
    archive = tmp_path / "hostile.tar"
    result = mirror_cli("export", "team/hostile:v1", "-o", str(archive), "--config", str(source.root / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert "its cosign signature is not exported" in result.stderr and "4194304" in result.stderr
    assert f"its sigstore bundle {sha256(sbom)} is not exported" in result.stderr
    assert "not a sigstore bundle's" in result.stderr
    assert "1 image(s) and 0 signature(s)" in result.stderr
    assert [entry["digest"] for entry in index_entries(archive)] == [image.digest]


def test_the_signatures_of_an_index_and_its_children_travel(
    source: MirrorProcess, registry: Registry, tmp_path: Path
) -> None:
    with Pusher(registry.url) as pusher:
        amd64 = pusher.image("team/multi", "amd64", [4096], seed=74, oci=True)
        arm64 = pusher.image("team/multi", "arm64", [4096], seed=75, oci=True, platform=("linux", "arm64"))
        index = pusher.index("team/multi", "v1", [amd64, arm64], oci=True)
        index_sig = push_cosign_signature(pusher, index)[0]  # `cosign sign --recursive`: the index and each child
        child_sig = push_cosign_signature(pusher, amd64)[0]
    pull(source, amd64)  # only linux/amd64 is cached: only it travels, with its signature
    with httpx.Client(base_url=f"{source.url}/v2/team/multi") as client:
        assert client.get("/manifests/v1", headers={"Accept": OCI_INDEX}).status_code == 200
    archive = tmp_path / "multi.tar"
    result = mirror_cli("export", "team/multi:v1", "-o", str(archive), "--config", str(source.root / "config.toml"))
    assert result.returncode == 0, result.stderr
    signed = {
        entry["annotations"]["org.opencontainers.image.ref.name"]: entry["annotations"][SIGNATURE_OF]
        for entry in index_entries(archive)
        if SIGNATURE_OF in entry.get("annotations", {})
    }
    assert signed == {
        f"docker.io/team/multi:{index_sig}": f"docker.io/team/multi@{index.digest}",
        f"docker.io/team/multi:{child_sig}": f"docker.io/team/multi@{amd64.digest}",
    }

    target = offline(tmp_path / "offline")
    import_into(target, archive)
    target.start()
    try:
        for tag in (index_sig, child_sig):
            assert httpx.get(f"{target.url}/v2/team/multi/manifests/{tag}").status_code == 200
    finally:
        target.stop()
