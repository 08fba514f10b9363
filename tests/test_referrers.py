"""The OCI read side with a real OCI client: artifacts pushed by ORAS (the ORAS Python SDK), referrers, zstd."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import oras.client
import oras.oci
import pytest
from fake_upstream import FakeUpstream
from support import MirrorProcess, Pusher, Registry, sha256

EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM_CONFIG = "application/vnd.example.sbom.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass
class Pushed:
    registry: Registry
    image_digest: str
    signature: dict[str, object]  # the referrer's descriptor, as the fallback index lists it
    sbom_digest: str
    files: dict[str, bytes]  # tag -> the one file ORAS pushed under it


def oras_client(host: str) -> oras.client.OrasClient:
    return oras.client.OrasClient(hostname=host, insecure=True)


def host_of(url: str) -> str:
    return url.removeprefix("http://")


def push_file(client: oras.client.OrasClient, target: str, path: Path, media_type: str, config: str) -> None:
    client.push(target=target, files=[f"{path}:{media_type}"], manifest_config=config, disable_path_validation=True)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    """An image, a signature and an SBOM referring to it, a Helm-chart-shaped artifact and a zstd
    image, pushed with ORAS to a registry of this module's own (its tests stop it)."""
    root = tmp_path_factory.mktemp("referrers")
    registry = Registry(root / "registry").start()
    try:
        host = host_of(registry.url)
        client = oras_client(host)
        with Pusher(registry.url) as pusher:
            image = pusher.image("library/signed", "v1", [2048], seed=21, oci=True)
        subject = oras.oci.Subject(mediaType=OCI_MANIFEST, digest=image.digest, size=len(image.manifest))
        files: dict[str, bytes] = {}

        # The signature: artifactType, the empty config and a subject, through ORAS's own calls.
        payload = root / "signature.json"
        payload.write_bytes(b'{"critical": {"image": {"docker-manifest-digest": "%s"}}}' % image.digest.encode())
        container = client.get_container(f"{host}/library/signed:signature")
        layer = oras.oci.NewLayer(str(payload), media_type="application/vnd.dev.cosign.simplesigning.v1+json")
        client.upload_blob(str(payload), container, layer)
        empty = root / "empty.json"
        empty.write_bytes(b"{}")
        config = {"mediaType": EMPTY_CONFIG, "digest": sha256(b"{}"), "size": 2}
        client.upload_blob(str(empty), container, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SIGNATURE,
            "config": config,
            "layers": [layer],
            "subject": {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest)},
            "annotations": {"org.example.signed-by": "ci"},
        }
        client.upload_manifest(manifest, container)
        signature_body = httpx.get(
            f"{registry.url}/v2/library/signed/manifests/signature", headers={"Accept": OCI_MANIFEST}
        ).content
        signature = {
            "mediaType": OCI_MANIFEST,
            "digest": sha256(signature_body),
            "size": len(signature_body),
            "artifactType": SIGNATURE,
        }

        # An SBOM pushed with `oras push` semantics: no artifactType, its config's type says what it is.
        sbom = root / "sbom.spdx.json"
        sbom.write_bytes(b'{"spdxVersion": "SPDX-2.3", "name": "signed"}')
        client.push(
            target=f"{host}/library/signed:sbom",
            files=[f"{sbom}:application/spdx+json"],
            manifest_config=f"{root / 'no-config'}:{SBOM_CONFIG}",
            subject=subject,
            disable_path_validation=True,
        )
        sbom_body = httpx.get(
            f"{registry.url}/v2/library/signed/manifests/sbom", headers={"Accept": OCI_MANIFEST}
        ).content
        files["sbom"] = sbom.read_bytes()

        # distribution 2.8 has no referrers API: a client keeps the fallback tag's index up to date.
        # Here the SBOM's descriptor lacks artifactType, which the mirror must fill in.
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [signature, {"mediaType": OCI_MANIFEST, "digest": sha256(sbom_body), "size": len(sbom_body)}],
        }
        with Pusher(registry.url) as pusher:
            fallback = "sha256-" + image.digest.split(":")[1]
            pusher.manifest("library/signed", fallback, json.dumps(index).encode(), OCI_INDEX)

        # A Helm-chart-shaped artifact, and an image whose layer is zstd.
        chart = root / "mychart-0.1.0.tgz"
        chart.write_bytes(os.urandom(4096))
        chart_config = root / "chart-config.json"
        chart_config.write_bytes(b'{"name": "mychart", "version": "0.1.0", "apiVersion": "v2"}')
        push_file(
            client,
            f"{host}/charts/mychart:0.1.0",
            chart,
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            f"{chart_config}:application/vnd.cncf.helm.config.v1+json",
        )
        files["0.1.0"] = chart.read_bytes()
        zstd_layer = root / "layer.tar.zst"
        zstd_layer.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(8192))  # zstd's magic, then bytes
        push_file(
            client,
            f"{host}/library/zstd:v1",
            zstd_layer,
            "application/vnd.oci.image.layer.v1.tar+zstd",
            f"{root / 'none'}:application/vnd.oci.image.config.v1+json",
        )
        files["v1"] = zstd_layer.read_bytes()
        yield Pushed(registry, image.digest, signature, sha256(sbom_body), files)
    finally:
        registry.stop()


@pytest.fixture
def mirror(pushed: Pushed, tmp_path: Path) -> Iterator[MirrorProcess]:
    process = MirrorProcess(tmp_path / "m", {"docker.io": pushed.registry.url}, extra_config='tag_ttl = "1s"').start()
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("target", "tag"), [("library/signed", "sbom"), ("charts/mychart", "0.1.0"), ("library/zstd", "v1")]
)
def test_oras_pulls_artifacts_through_the_mirror_byte_for_byte(
    pushed: Pushed, mirror: MirrorProcess, tmp_path: Path, target: str, tag: str
) -> None:
    out = tmp_path / "pulled"
    paths = oras_client(host_of(mirror.url)).pull(target=f"{host_of(mirror.url)}/{target}:{tag}", outdir=str(out))
    assert [Path(p).read_bytes() for p in paths] == [pushed.files[tag]]
    upstream = httpx.get(f"{pushed.registry.url}/v2/{target}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    through = httpx.get(f"{mirror.url}/v2/{target}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert through.content == upstream.content and through.headers["content-type"] == OCI_MANIFEST


def test_referrers_from_the_fallback_tag(pushed: Pushed, mirror: MirrorProcess) -> None:
    url = f"{mirror.url}/v2/library/signed/referrers/{pushed.image_digest}"
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.headers["content-type"] == OCI_INDEX
    assert "oci-filters-applied" not in answer.headers
    listed = {d["digest"]: d for d in answer.json()["manifests"]}
    assert list(listed) == sorted([pushed.signature["digest"], pushed.sbom_digest]), "in digest order"
    assert listed[pushed.signature["digest"]]["artifactType"] == SIGNATURE
    assert listed[pushed.sbom_digest]["artifactType"] == SBOM_CONFIG, "filled in from the referrer's config"
    filtered = httpx.get(url, params={"artifactType": SIGNATURE})
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    assert [d["digest"] for d in filtered.json()["manifests"]] == [pushed.signature["digest"]]
    assert httpx.head(url).content == b""

    nothing = httpx.get(f"{mirror.url}/v2/library/signed/referrers/sha256:{'0' * 64}")
    assert nothing.status_code == 200 and nothing.json()["manifests"] == []
    bad = httpx.get(f"{mirror.url}/v2/library/signed/referrers/sha256:xyz")
    assert bad.status_code == 400


def test_referrers_when_the_upstream_is_down(tmp_path: Path) -> None:
    """Cached: served stale. Not cached: 503, never an empty index (a policy engine would read "unsigned")."""
    upstream = Registry(tmp_path / "upstream").start()
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": upstream.url}, extra_config='tag_ttl = "1s"').start()
    try:
        with Pusher(upstream.url) as pusher:
            image = pusher.image("library/alone", "v1", [512], seed=22, oci=True)
            referrer = pusher.image("library/alone", "v2", [512], seed=23, oci=True)
            other = pusher.image("library/alone", "v3", [512], seed=24, oci=True)
            signature = {
                "mediaType": OCI_MANIFEST,
                "digest": referrer.digest,
                "size": len(referrer.manifest),
                "artifactType": SIGNATURE,
            }
            index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [signature]}).encode()
            pusher.manifest("library/alone", "sha256-" + image.digest.split(":")[1], index, OCI_INDEX)
        url = f"{mirror.url}/v2/library/alone/referrers/"
        assert httpx.get(url + image.digest).json()["manifests"] == [signature]
        upstream.stop()
        time.sleep(1.2)  # past tag_ttl
        assert httpx.get(url + image.digest).json()["manifests"] == [signature]
        unknown = httpx.get(url + other.digest)
        assert unknown.status_code == 503
    finally:
        mirror.stop()
        upstream.stop()


def test_blob_digests_of_pulled_artifacts_are_verified(pushed: Pushed, mirror: MirrorProcess) -> None:
    for tag, data in pushed.files.items():
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        repository = {"sbom": "library/signed", "0.1.0": "charts/mychart", "v1": "library/zstd"}[tag]
        assert httpx.get(f"{mirror.url}/v2/{repository}/blobs/{digest}").content == data
        mirror.wait_idle()  # committed once verified, just after the last byte went out
        assert mirror.blob_path(digest).read_bytes() == data


def test_mirror_ls_shows_what_an_artifact_is(pushed: Pushed, mirror: MirrorProcess, tmp_path: Path) -> None:
    oras_client(host_of(mirror.url)).pull(target=f"{host_of(mirror.url)}/charts/mychart:0.1.0", outdir=str(tmp_path))
    mirror.wait_idle()
    rows = {row["repository"]: row for row in httpx.get(f"{mirror.url}/api/images").json()}
    assert rows["charts/mychart"]["artifact_type"] == "application/vnd.cncf.helm.config.v1+json"
    assert rows["charts/mychart"]["platforms"] == []
    listing = subprocess.run(
        [sys.executable, "-m", "mirror", "ls", "--config", str(mirror.root / "config.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listing.returncode == 0, listing.stderr
    assert any(
        "docker.io/charts/mychart" in line and "application/vnd.cncf.helm.config.v1+json" in line
        for line in listing.stdout.splitlines()
    )


def test_an_upstream_with_the_referrers_api(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    """Its answer is used as is (filtered here), kept for tag_ttl, and served stale when the API fails."""
    subject = "sha256:" + "5" * 64
    listed: list[dict[str, object]] = [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "6" * 64, "size": 10, "artifactType": SIGNATURE},
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "7" * 64, "size": 11, "artifactType": SBOM_CONFIG},
    ]
    fake_upstream.referrers = {subject: listed}
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": fake_upstream.url}, extra_config='tag_ttl = "1s"').start()
    try:
        url = f"{mirror.url}/v2/library/x/referrers/{subject}"
        assert httpx.get(url).json()["manifests"] == listed
        sboms = httpx.get(url, params={"artifactType": SBOM_CONFIG})
        assert sboms.json()["manifests"] == listed[1:] and sboms.headers["oci-filters-applied"] == "artifactType"
        # Paged by the mirror in digest order; the next page's Link keeps the client's ?ns=.
        first = httpx.get(url, params={"n": "1", "ns": "docker.io"})
        assert first.json()["manifests"] == listed[:1]
        last = str(listed[0]["digest"]).replace(":", "%3A")
        assert first.headers["link"] == f'</v2/library/x/referrers/{subject}?n=1&last={last}&ns=docker.io>; rel="next"'
        second = httpx.get(mirror.url + first.headers["link"][1:].partition(">")[0])
        assert second.json()["manifests"] == listed[1:] and "link" not in second.headers
        assert httpx.get(url, params={"n": "0"}).json()["manifests"] == []
        assert fake_upstream.requests[("REFERRERS", subject)] == 1, "kept for tag_ttl"
        assert fake_upstream.requests[("GET", "sha256-" + "5" * 64)] == 0, "no fallback tag when the API answers"
        fake_upstream.referrers_status = 503
        time.sleep(1.2)
        assert httpx.get(url).json()["manifests"] == listed, "stale when the API fails"
        other = httpx.get(f"{mirror.url}/v2/library/x/referrers/sha256:{'8' * 64}")
        assert other.status_code == 503, "never an empty index for an answer the mirror does not have"
    finally:
        mirror.stop()
