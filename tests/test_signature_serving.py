"""The signature policy while serving: an index signed once carries its platforms, audit mode serves
and counts, a warm verdict costs the upstream nothing, a reload decides again, `mirror ls` shows the
verdicts, and an air-gapped site enforces the same policy from an imported archive."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from signing import Key, attach_bundle, attach_cosign, cosign_signature, sign_bundle
from support import OCI_INDEX, OCI_MANIFEST, Image, MirrorProcess, Pusher, Registry
from test_archive import UNREACHABLE, mirror_cli
from test_reload import hangup

ACCEPT = {"Accept": ", ".join([OCI_MANIFEST, OCI_INDEX])}


@dataclass
class Signed:
    namespace: str
    root: Path
    key: Key = field(default_factory=Key.generate)
    images: dict[str, Image] = field(default_factory=dict)

    def repository(self, name: str) -> str:
        return f"{self.namespace}/{name}"

    def policy(self, key: Key | None = None, path: str = "policy.json") -> Path:
        public = (key or self.key).write_public(self.root / f"{path}.pub")
        requirement = {"type": "sigstoreSigned", "keyPath": str(public), "signedIdentity": {"type": "matchRepository"}}
        policy = {
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {"docker": {f"docker.io/{self.namespace}": [requirement]}},
        }
        (self.root / path).write_text(json.dumps(policy))
        return self.root / path

    def config(self, mode: str = "enforce", tag_ttl: str = "5m") -> str:
        return f'tag_ttl = "{tag_ttl}"\n[signatures]\npolicy = "{self.root / "policy.json"}"\nmode = "{mode}"\n'


@pytest.fixture(scope="module")
def signed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Signed:
    site = Signed(f"served{uuid.uuid4().hex[:6]}", tmp_path_factory.mktemp("served"))
    site.policy()
    with Pusher(registry.url) as pusher:
        for number, name in enumerate(["signed", "unsigned", "bundled"]):
            image = pusher.image(site.repository(name), "v1", [3000], seed=900 + number, oci=True)
            site.images[name] = image
        amd64 = pusher.image(site.repository("multi"), "amd64", [3000], seed=910, oci=True)
        arm64 = pusher.image(site.repository("multi"), "arm64", [3000], seed=911, oci=True, platform=("linux", "arm64"))
        site.images["multi"] = pusher.index(site.repository("multi"), "v1", [amd64, arm64], oci=True)
        bare_amd64 = pusher.image(site.repository("bare"), "amd64", [3000], seed=912, oci=True)
        bare_arm64 = pusher.image(
            site.repository("bare"), "arm64", [3000], seed=913, oci=True, platform=("linux", "arm64")
        )
        site.images["bare"] = pusher.index(site.repository("bare"), "v1", [bare_amd64, bare_arm64], oci=True)
        bundled = site.images["bundled"]
        bundle = sign_bundle(site.key, f"docker.io/{site.repository('bundled')}", bundled.digest)
        attach_bundle(pusher, site.repository("bundled"), bundled.digest, OCI_MANIFEST, len(bundled.manifest), bundle)
        for name in ("signed", "multi"):  # the index is signed once, its children not at all
            repository, digest = site.repository(name), site.images[name].digest
            attach_cosign(pusher, repository, digest, [cosign_signature(site.key, f"docker.io/{repository}", digest)])
    return site


def get(mirror: MirrorProcess, repository: str, reference: str) -> httpx.Response:
    return httpx.get(f"{mirror.url}/v2/{repository}/manifests/{reference}", headers=ACCEPT)


def blob_status(mirror: MirrorProcess, repository: str, image: Image) -> set[int]:
    return {httpx.get(f"{mirror.url}/v2/{repository}/blobs/{digest}").status_code for digest in image.blobs}


def test_an_index_signed_once_carries_both_platforms(signed: Signed, registry: Registry, tmp_path: Path) -> None:
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=signed.config()).start()
    try:
        multi, bare = signed.images["multi"], signed.images["bare"]
        assert get(mirror, signed.repository("multi"), "v1").status_code == 200
        for child in multi.children:  # amd64 and arm64, each by digest, and every blob of each
            assert get(mirror, signed.repository("multi"), child.digest).status_code == 200
            assert blob_status(mirror, signed.repository("multi"), child) == {200}
        refused = get(mirror, signed.repository("bare"), "v1")
        assert refused.status_code == 403 and "was found" in refused.json()["errors"][0]["message"]
        for child in bare.children:  # an unsigned index's children are not let through by it
            assert get(mirror, signed.repository("bare"), child.digest).status_code == 403
            assert blob_status(mirror, signed.repository("bare"), child) == {403}
    finally:
        mirror.stop()


def test_audit_mode_serves_the_refused_and_counts_them(signed: Signed, registry: Registry, tmp_path: Path) -> None:
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=signed.config("audit")).start()
    try:
        unsigned = signed.images["unsigned"]
        response = get(mirror, signed.repository("unsigned"), "v1")
        assert response.status_code == 200 and response.headers["docker-content-digest"] == unsigned.digest
        assert blob_status(mirror, signed.repository("unsigned"), unsigned) == {200}
        assert get(mirror, signed.repository("signed"), "v1").status_code == 200
        metrics = httpx.get(f"{mirror.url}/metrics").text
        assert 'mirror_upstream_signature_verdicts_total{upstream="docker.io",result="audited"} 1' in metrics
        assert 'mirror_upstream_signature_verdicts_total{upstream="docker.io",result="accepted"} 1' in metrics
        assert "(audit mode: served anyway)" in mirror.log_path.read_text()
        listed = mirror_cli("ls", "--config", str(mirror.root / "config.toml"))
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
        assert rows[f"docker.io/{signed.repository('unsigned')}"].endswith("audit: refused")
        assert rows[f"docker.io/{signed.repository('signed')}"].endswith(
            f"verified ({signed.root / 'policy.json.pub'})"
        )
    finally:
        mirror.stop()


def test_a_warm_verdict_costs_the_upstream_nothing(signed: Signed, registry: Registry, tmp_path: Path) -> None:
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=signed.config()).start()
    try:
        repository = signed.repository("signed")
        assert get(mirror, repository, "v1").status_code == 200
        mark = len(registry.requests())
        with httpx.Client(base_url=mirror.url, headers=ACCEPT) as client:
            for _ in range(1000):
                assert client.get(f"/v2/{repository}/manifests/v1").status_code == 200
        asked = [path for _, path, _ in registry.requests_since(mark) if f"/v2/{repository}/" in path]
        assert asked == [], asked  # no manifest, no signature, no referrers: 1,000 pulls within tag_ttl
    finally:
        mirror.stop()


def test_a_reload_decides_again(signed: Signed, registry: Registry, tmp_path: Path) -> None:
    config = signed.config().replace("policy.json", "reloaded.json")
    signed.policy(path="reloaded.json")
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=config).start()
    try:
        repository = signed.repository("signed")
        assert get(mirror, repository, "v1").status_code == 200
        signed.policy(Key.generate(), path="reloaded.json")  # another key: the signature no longer verifies
        hangup(mirror, "SIGHUP: config reloaded")
        refused = get(mirror, repository, "v1")
        assert refused.status_code == 403 and "the signature does not verify" in refused.text
        signed.policy(path="reloaded.json")
        hangup(mirror, "SIGHUP: config reloaded")
        assert get(mirror, repository, "v1").status_code == 200
    finally:
        mirror.stop()


def test_an_air_gapped_site_enforces_the_same_policy(signed: Signed, registry: Registry, tmp_path: Path) -> None:
    source = MirrorProcess(tmp_path / "source", {"docker.io": registry.url}).start()
    archive = tmp_path / "images.tar"
    try:
        for name in ("signed", "unsigned", "multi"):
            assert get(source, signed.repository(name), "v1").status_code == 200
            for child in signed.images[name].children[:1]:
                assert get(source, signed.repository(name), child.digest).status_code == 200
        for name in ("signed", "unsigned"):
            assert blob_status(source, signed.repository(name), signed.images[name]) == {200}
        assert blob_status(source, signed.repository("multi"), signed.images["multi"].children[0]) == {200}
        names = [f"{signed.repository(name)}:v1" for name in ("signed", "unsigned", "multi")]
        exported = mirror_cli("export", *names, "-o", str(archive), "--config", str(source.root / "config.toml"))
        assert exported.returncode == 0, exported.stderr
        # Export under the policy refuses what the server would refuse, naming it.
        policy_config = source.root / "policy.toml"
        text = (source.root / "config.toml").read_text() + f'[signatures]\npolicy = "{signed.root / "policy.json"}"\n'
        policy_config.write_text(text)
        again = mirror_cli("export", *names, "-o", str(tmp_path / "again.tar"), "--config", str(policy_config))
        assert again.returncode != 0 and "refused by the signature policy" in again.stderr
        assert f"docker.io/{signed.repository('unsigned')}@" in again.stderr
        assert f"{signed.repository('signed')}@" not in again.stderr
    finally:
        source.stop()
    offline = MirrorProcess(tmp_path / "offline", {"docker.io": UNREACHABLE}, extra_config=signed.config())
    offline.write_config()
    imported = mirror_cli("import", str(archive), "--config", str(offline.root / "config.toml"))
    assert imported.returncode == 0, imported.stderr
    offline.start()
    try:
        assert get(offline, signed.repository("signed"), "v1").status_code == 200
        assert blob_status(offline, signed.repository("signed"), signed.images["signed"]) == {200}
        assert get(offline, signed.repository("multi"), "v1").status_code == 200
        refused = get(offline, signed.repository("unsigned"), "v1")
        # No signature came with it, and the upstream cannot be asked: refused (fails closed).
        assert refused.status_code == 403 and "could not be read" in refused.json()["errors"][0]["message"]
        assert blob_status(offline, signed.repository("unsigned"), signed.images["unsigned"]) == {403}
    finally:
        offline.stop()


def test_by_tag_then_by_digest_as_docker_and_containerd_ask(signed: Signed, registry: Registry, tmp_path: Path) -> None:
    """HEAD by tag, then GET by digest: the second is decided on its own, and the cosign tag the first
    found missing (kept in the negative cache) means "unsigned in that format", not "unreadable"."""
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=signed.config()).start()
    try:
        for name, status, says in [("bundled", 200, ""), ("unsigned", 403, "was found")]:
            repository, digest = signed.repository(name), signed.images[name].digest
            head = httpx.head(f"{mirror.url}/v2/{repository}/manifests/v1", headers=ACCEPT)
            assert head.status_code == status
            by_digest = get(mirror, repository, digest)
            assert by_digest.status_code == status, by_digest.text
            assert says in by_digest.text
    finally:
        mirror.stop()
