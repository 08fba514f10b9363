"""Who may pull what: access rules per repository, blob links, allow, deny and block, deleted tags.

Real parts: distribution registries (one behind token auth with credentials, as a private
ghcr.io organisation is), skopeo as the client, mirror processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pacing import PacedUpstream
from support import ALL_MANIFESTS, Image, MirrorProcess, Pusher, Registry
from test_access import htpasswd
from test_pull import skopeo_copy, verify_dir_copy
from token_upstream import TokenIssuer, enable_token_auth, token_user
from tools import tool

ACCEPT = {"Accept": ", ".join(ALL_MANIFESTS)}
RULES = """
[[auth.rules]]
users = ["*"]
repositories = ["docker.io/library/*", "ghcr.io/org/public-*"]
[[auth.rules]]
users = ["ci"]
repositories = ["ghcr.io/org/*"]
[[auth.rules]]
users = ["alice"]
repositories = ["docker.io/**"]
"""


@dataclass
class Ghcr:
    registry: Registry
    private: Image
    public: Image


@pytest.fixture(scope="module")
def ghcr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ghcr]:
    """A private organisation: token auth that hands out tokens to its one account only."""
    root = tmp_path_factory.mktemp("ghcr")
    registry = Registry(root / "registry").start()
    issuer = TokenIssuer(root / "issuer", credentials=("bot", "b0t-secret"))
    try:
        with Pusher(registry.url) as pusher:
            private = pusher.image("org/private", "1.0", [96 * 1024, 4096], seed=31)
            public = pusher.image("org/public-app", "1.0", [64 * 1024, 4096], seed=32)
        enable_token_auth(registry, issuer, None)
        yield Ghcr(registry, private, public)
    finally:
        issuer.stop()
        registry.stop()


@pytest.fixture
def ruled(tmp_path: Path, registry: Registry, images: dict[str, Image], ghcr: Ghcr) -> Iterator[MirrorProcess]:
    users = htpasswd(tmp_path / "users.htpasswd", {"ci": "ci-pass", "alice": "alice-pass"})
    mirror = MirrorProcess(
        tmp_path / "m",
        {"docker.io": registry.url, "ghcr.io": ghcr.registry.url},
        credentials={"ghcr.io": ("bot", "b0t-secret")},
        extra_config=f'[auth]\nhtpasswd = "{users}"\n{RULES}',
    ).start()
    try:
        yield mirror
    finally:
        mirror.stop()


def get(mirror: MirrorProcess, path: str, user: str | None) -> httpx.Response:
    auth = (user, f"{user}-pass") if user else None
    return httpx.get(f"{mirror.url}{path}", headers=ACCEPT, auth=auth)


def reads(mirror: MirrorProcess, image: Image, prefix: str, user: str | None) -> list[int]:
    """The statuses of reading an image by tag, by digest and by one blob."""
    blob = next(iter(image.blobs))
    paths = [
        f"/v2/{prefix}{image.repository}/manifests/{image.tag}",
        f"/v2/{prefix}{image.repository}/manifests/{image.digest}",
        f"/v2/{prefix}{image.repository}/blobs/{blob}",
    ]
    return [get(mirror, path, user).status_code for path in paths]


def test_each_reads_exactly_what_it_is_granted_cold_and_warm(
    ruled: MirrorProcess, images: dict[str, Image], ghcr: Ghcr
) -> None:
    demo, private, public = images["demo"], ghcr.private, ghcr.public
    for _ in ("cold", "warm"):
        assert reads(ruled, demo, "", None) == [200, 200, 200]
        assert reads(ruled, public, "ghcr.io/", None) == [200, 200, 200]
        assert reads(ruled, private, "ghcr.io/", None) == [401, 401, 401]
        assert reads(ruled, private, "ghcr.io/", "ci") == [200, 200, 200]
        assert reads(ruled, private, "ghcr.io/", "alice") == [403, 403, 403]
        assert reads(ruled, demo, "", "alice") == [200, 200, 200]
        ruled.wait_idle()
    anonymous = get(ruled, f"/v2/ghcr.io/org/private/manifests/{private.tag}", None)
    assert anonymous.headers["www-authenticate"] == 'Basic realm="mirror"'
    assert anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"
    denied = get(ruled, f"/v2/ghcr.io/org/private/manifests/{private.tag}", "alice")
    assert denied.json()["errors"][0] == {
        "code": "DENIED",
        "message": "alice may not read ghcr.io/org/private: no [[auth.rules]] grants it",
    }
    assert get(ruled, "/v2/", None).status_code == 401, "challenged, so that clients with a login send it"
    assert get(ruled, "/v2/", "ci").status_code == 200
    assert httpx.get(f"{ruled.url}/v2/", auth=("ci", "wrong")).status_code == 401


def test_a_private_blob_is_never_read_through_a_public_name(
    ruled: MirrorProcess, images: dict[str, Image], ghcr: Ghcr
) -> None:
    private = ghcr.private
    assert reads(ruled, private, "ghcr.io/", "ci") == [200, 200, 200]  # now cached
    ruled.wait_idle()
    for blob in private.all_blobs():
        through_public = get(ruled, f"/v2/ghcr.io/org/public-app/blobs/{blob}", None)
        assert through_public.status_code == 404, through_public.text
        assert through_public.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        through_other_registry = get(ruled, f"/v2/library/demo/blobs/{blob}", None)
        assert through_other_registry.status_code == 404
    by_digest = get(ruled, f"/v2/ghcr.io/org/public-app/manifests/{private.digest}", None)
    assert by_digest.status_code == 404 and by_digest.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_real_clients_read_with_their_logins(ruled: MirrorProcess, ghcr: Ghcr, tmp_path: Path) -> None:
    def skopeo(reference: str, creds: str | None, out: Path) -> subprocess.CompletedProcess[str]:
        argv = [tool("skopeo"), "copy", "--src-tls-verify=false"]
        argv += [f"--src-creds={creds}"] if creds else ["--src-no-creds"]
        argv += [f"docker://127.0.0.1:{ruled.port}/{reference}", f"dir:{out}"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    assert skopeo("ghcr.io/org/private:1.0", "ci:ci-pass", tmp_path / "ci").returncode == 0
    verify_dir_copy(tmp_path / "ci", ghcr.private)
    refused = skopeo("ghcr.io/org/private:1.0", "alice:alice-pass", tmp_path / "alice")
    assert refused.returncode != 0 and "denied" in refused.stderr.lower()
    anonymous = skopeo("ghcr.io/org/private:1.0", None, tmp_path / "anonymous")
    assert anonymous.returncode != 0 and "unauthorized" in anonymous.stderr.lower()
    assert skopeo("ghcr.io/org/public-app:1.0", None, tmp_path / "public").returncode == 0
    verify_dir_copy(tmp_path / "public", ghcr.public)


# Allow, deny and block


def test_allow_deny_and_block(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    demo, oci = images["demo"], images["oci"]
    keys = (
        'allow = ["library/*", "team/**"]\ndeny = ["library/multi*", "team/secret/**"]\n'
        f'block = ["{oci.digest}", "{next(iter(demo.blobs))}"]\n'
    )
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, upstream_keys={"docker.io": keys}).start()
    try:
        mark = registry.mark()
        refusals = {
            "/v2/library/multi/manifests/latest": (
                "docker.io/library/multi is refused by [upstreams.\"docker.io\"] deny 'library/multi*'"
            ),
            f"/v2/library/multi/manifests/{images['list'].digest}": "deny 'library/multi*'",
            "/v2/other/thing/manifests/latest": 'docker.io/other/thing is not in [upstreams."docker.io"] allow',
            "/v2/team/secret/deep/x/manifests/1": "deny 'team/secret/**'",
            f"/v2/library/ocidemo/manifests/{oci.digest}": f"{oci.digest} is blocked",
            f"/v2/library/demo/blobs/{next(iter(demo.blobs))}": "is blocked",
        }
        for path, message in refusals.items():
            response = httpx.get(mirror.url + path, headers=ACCEPT)
            assert response.status_code == 403, path
            assert response.json()["errors"][0]["code"] == "DENIED"
            assert message in response.json()["errors"][0]["message"]
        assert registry.requests_since(mark) == [], "nothing refused was asked of the upstream"
        by_tag = httpx.get(f"{mirror.url}/v2/library/ocidemo/manifests/latest", headers=ACCEPT)
        assert by_tag.status_code == 403, "a tag that resolves to a blocked digest"
        assert httpx.get(f"{mirror.url}/v2/team/app/manifests/1", headers=ACCEPT).status_code == 404, "allowed: asked"
    finally:
        mirror.stop()


def test_a_block_refuses_what_is_already_cached_after_a_restart(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    oci = images["oci"]
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url})
    try:
        mirror.start()
        assert httpx.get(f"{mirror.url}/v2/library/ocidemo/manifests/latest", headers=ACCEPT).status_code == 200
        mirror.stop()
        mirror.upstream_keys = {"docker.io": f'block = ["{oci.digest}"]'}
        mirror.start()
        for reference in ("latest", oci.digest):
            answer = httpx.get(f"{mirror.url}/v2/library/ocidemo/manifests/{reference}", headers=ACCEPT)
            assert answer.status_code == 403 and "blocked" in answer.json()["errors"][0]["message"]
    finally:
        mirror.stop()


# Credentials per namespace


def test_two_namespaces_of_one_upstream_with_their_own_logins(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "hub").start()
    issuer = TokenIssuer(tmp_path / "issuer", accounts={"myorg-bot": "p1", "team-bot": "p2", "general": "p3"})
    try:
        with Pusher(registry.url) as pusher:
            mine = pusher.image("myorg/app", "1.0", [4096], seed=34)
            theirs = pusher.image("myorg/team/tool", "1.0", [4096], seed=35)
            other = pusher.image("library/base", "1.0", [4096], seed=36)
        enable_token_auth(registry, issuer, None)
        table = '[[upstreams."docker.io".credentials]]\nrepositories = ["{}"]\nusername = "{}"\npassword = "{}"\n'
        keys = 'username = "general"\npassword = "p3"\n'  # the upstream's own login, for the rest
        keys += table.format("myorg/**", "myorg-bot", "p1") + table.format("myorg/team/*", "team-bot", "p2")
        mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, upstream_keys={"docker.io": keys}).start()
        try:
            for image in (mine, theirs, other):
                url = f"{mirror.url}/v2/{image.repository}/manifests/{image.tag}"
                assert httpx.get(url, headers=ACCEPT).status_code == 200
        finally:
            mirror.stop()
        asked = {(token_user(r), r.path.split("scope=")[1].split("&")[0]) for r in issuer.requests}
        assert asked == {
            ("myorg-bot", "repository%3Amyorg%2Fapp%3Apull"),
            ("team-bot", "repository%3Amyorg%2Fteam%2Ftool%3Apull"),  # the most specific pattern
            ("general", "repository%3Alibrary%2Fbase%3Apull"),
        }
    finally:
        issuer.stop()
        registry.stop()


# Tags deleted upstream


@pytest.mark.parametrize("keep", [False, True])
def test_a_tag_deleted_upstream(tmp_path: Path, keep: bool) -> None:
    registry = Registry(tmp_path / "registry").start()
    try:
        with Pusher(registry.url) as pusher:
            image = pusher.image("library/gone", "v1", [4096], seed=33)
        keys = {"docker.io": "keep_deleted_tags = true"} if keep else {}
        mirror = MirrorProcess(
            tmp_path / "m", {"docker.io": registry.url}, extra_config='tag_ttl = "0s"', upstream_keys=keys
        ).start()
        try:
            url = f"{mirror.url}/v2/library/gone/manifests/v1"
            assert httpx.get(url, headers=ACCEPT).status_code == 200
            deleted = httpx.delete(f"{registry.url}/v2/library/gone/manifests/{image.digest}")
            assert deleted.status_code == 202
            answer = httpx.get(url, headers=ACCEPT)
            if keep:
                assert answer.status_code == 200 and answer.headers["x-cache"] == "STALE"
                assert answer.content == image.manifest
                assert "no longer has library/gone:v1; keeping the cached one" in mirror.log_path.read_text()
            else:
                assert answer.status_code == 404
                assert answer.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        finally:
            mirror.stop()
    finally:
        registry.stop()


# Removing


def mirror_rm(mirror: MirrorProcess, *targets: str, blobs: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mirror", "rm", "--config", str(mirror.root / "config.toml"), *targets]
    return subprocess.run(argv + (["--blobs"] if blobs else []), capture_output=True, text=True, timeout=60)


def test_rm_while_another_pull_streams(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    demo, listed = images["demo"], images["list"]
    with PacedUpstream(registry, tmp_path / "paced", rate="256k") as paced:
        mirror = MirrorProcess(tmp_path / "m", {"docker.io": paced.url}).start()
        try:
            skopeo_copy(mirror, "library/demo:latest", tmp_path / "demo-1")
            mirror.wait_idle()
            url = f"{mirror.url}/v2/library/demo/manifests/latest"
            assert httpx.get(url, headers={"Accept": demo.media_type}).headers["x-cache"] == "HIT"  # from memory
            with ThreadPoolExecutor(1) as pool:
                slow = pool.submit(skopeo_copy, mirror, "library/multi:latest", tmp_path / "multi")
                time.sleep(0.5)
                assert not slow.done(), "the other pull still streams"
                removed = mirror_rm(mirror, "demo", blobs=True)
                assert removed.returncode == 0, removed.stderr
                slow.result()
            verify_dir_copy(tmp_path / "multi", listed)
            assert "removed tag docker.io/library/demo:latest" in removed.stdout
            for digest in demo.all_blobs():
                assert f"removed blob {digest}" in removed.stdout or f"removed manifest {digest}" in removed.stdout
                assert not mirror.blob_path(digest).exists()
            again = httpx.get(url, headers={"Accept": demo.media_type})
            assert again.status_code == 200 and again.headers["x-cache"] == "MISS", "fetched again, not from memory"
            mark = len(paced.requests())
            skopeo_copy(mirror, "library/demo:latest", tmp_path / "demo-2")
            verify_dir_copy(tmp_path / "demo-2", demo)
            fetched = {r.uri.rsplit("/", 1)[1] for r in paced.requests()[mark:] if "/blobs/" in r.uri}
            assert fetched == set(demo.blobs), "every blob fetched again"
        finally:
            mirror.stop()


def test_rm_on_the_directory_and_a_block_after_it(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    oci = images["oci"]
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}).start()
    try:
        skopeo_copy(mirror, "library/ocidemo:latest", tmp_path / "pull")
        mirror.wait_idle()
    finally:
        mirror.stop()
    removed = mirror_rm(mirror, f"ocidemo@{oci.digest}", "library/nothing:here")  # no server: the directory
    assert removed.returncode == 0, removed.stderr
    assert f"removed manifest {oci.digest}" in removed.stdout and "not cached: library/nothing:here" in removed.stderr
    assert not mirror.blob_path(oci.digest).exists()
    assert all(mirror.blob_path(d).exists() for d in oci.blobs), "without --blobs, layers stay"
    mirror.upstream_keys = {"docker.io": f'block = ["{oci.digest}"]'}
    mirror.start()
    try:
        mark = registry.mark()
        answer = httpx.get(f"{mirror.url}/v2/library/ocidemo/manifests/latest", headers=ACCEPT)
        assert answer.status_code == 403 and "blocked" in answer.json()["errors"][0]["message"]
        assert [m for m, p, _ in registry.requests_since(mark) if "/manifests/" in p] == ["GET"], "asked, then refused"
    finally:
        mirror.stop()


def test_rules_hold_on_the_protocol_fast_path(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    """No logins at all, anonymous rules only: warm tags are answered by the protocol, and only those granted."""
    rules = '[[auth.rules]]\nusers = ["*"]\nrepositories = ["docker.io/library/demo"]\n'
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=rules).start()
    try:
        for _ in range(3):
            assert get(mirror, "/v2/library/demo/manifests/latest", None).status_code == 200
            refused = get(mirror, "/v2/library/multi/manifests/latest", None)
            assert refused.status_code == 401
            assert get(mirror, f"/v2/library/multi/manifests/{images['list'].digest}", None).status_code == 401
        assert mirror.stats()["protocol_answers"] >= 1, "the warm tag came from the protocol's fast path"
    finally:
        mirror.stop()


def test_a_subject_does_not_link_a_private_layer_to_a_public_name(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    """OCI 1.1 registries take a `subject` they do not hold: naming one must prove nothing."""
    with Pusher(registry.url) as pusher:
        secret = pusher.image("team/secret", "1", [64 * 1024, 4096], seed=41)
        layer = next(iter(secret.blobs))
        config = pusher.blob("library/planted", b"{}")
        planted = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.example.sbom",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
            "layers": [],
            "subject": {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 1},
        }
        pusher.manifest("library/planted", "v1", json.dumps(planted).encode(), planted["mediaType"])
    users = htpasswd(tmp_path / "users.htpasswd", {"bob": "bob-pass"})
    rules = (
        '[[auth.rules]]\nusers = ["*"]\nrepositories = ["docker.io/library/*"]\n'
        '[[auth.rules]]\nusers = ["bob"]\nrepositories = ["docker.io/team/**"]\n'
    )
    mirror = MirrorProcess(
        tmp_path / "m", {"docker.io": registry.url}, extra_config=f'[auth]\nhtpasswd = "{users}"\n{rules}'
    ).start()
    try:
        assert get(mirror, "/v2/library/planted/manifests/v1", None).status_code == 200
        assert get(mirror, f"/v2/team/secret/blobs/{layer}", "bob").status_code == 200  # now cached
        mirror.wait_idle()
        through_subject = get(mirror, f"/v2/library/planted/blobs/{layer}", None)
        assert through_subject.status_code == 404, through_subject.text
        assert through_subject.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    finally:
        mirror.stop()


def test_two_readings_of_a_registry_are_refused(ruled: MirrorProcess, ghcr: Ghcr) -> None:
    """`?ns=bogus&ns=ghcr.io` once read org/private anonymously: the check took the first, the route the last."""
    private = ghcr.private
    blob = next(iter(private.blobs))
    for tail in (f"manifests/{private.tag}", f"blobs/{blob}", "tags/list"):
        for path in (
            f"/v2/org/private/{tail}?ns=bogus&ns=ghcr.io",
            f"/v2/org/private/{tail}?ns=registry.k8s.io&ns=ghcr.io",
            f"/v2/ghcr.io/org/private/{tail}?ns=",
            f"/v2/org/private/{tail}?ns=ghcr.io&%6Es=docker.io",
        ):
            for method in ("GET", "HEAD"):
                response = httpx.request(method, f"{ruled.url}{path}", headers=ACCEPT)
                assert response.status_code == 400, (method, path, response.status_code)
        assert get(ruled, f"/v2/org/private/{tail}?ns=ghcr.io", None).status_code == 401
        assert get(ruled, f"/v2/org/private/{tail}?ns=ghcr.io", "ci").status_code == 200
