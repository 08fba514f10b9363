"""Docker Engine, containerd, podman and skopeo pull through one mirror from two token-auth upstreams.

Each client pulls images of its own (so each gets cold pulls), of four kinds (Docker schema2,
OCI manifest, Docker manifest list, OCI index), from "docker.io" (anonymous tokens, CDN
redirects) and "ghcr.io" (tokens need credentials, which only the mirror has); removes them;
and pulls them again (warm). Then every client pulls the same image (shared through the
mirror), and the totals are checked: no blob left an upstream twice, no credential reached a CDN.
"""

from __future__ import annotations

import httpx
import pytest
from e2e_parts import (
    CLIENTS,
    KINDS,
    RESULTS,
    SHARED,
    Client,
    Upstream,
    assert_each_blob_served_at_most_once,
    cold_and_warm,
    measure,
)
from support import MirrorProcess

pytestmark = pytest.mark.e2e

CASES = [(client, registry, kind) for client in CLIENTS for registry in ("docker.io", "ghcr.io") for kind in KINDS]


@pytest.mark.parametrize(("client_name", "registry", "kind"), CASES, ids=["-".join(case) for case in CASES])
def test_cold_then_warm_pull(
    client_name: str,
    registry: str,
    kind: str,
    request: pytest.FixtureRequest,
    upstreams: dict[str, Upstream],
    e2e_mirror: MirrorProcess,
) -> None:
    client: Client = request.getfixturevalue(f"{client_name}_client")
    image = upstreams[registry].images[client_name][kind]
    RESULTS.append(cold_and_warm(client, registry, kind, image, list(upstreams.values()), e2e_mirror))
    assert_each_blob_served_at_most_once(list(upstreams.values()))


@pytest.mark.parametrize("client_name", CLIENTS)
def test_shared_image_comes_from_the_mirror(
    client_name: str,
    request: pytest.FixtureRequest,
    upstreams: dict[str, Upstream],
    e2e_mirror: MirrorProcess,
) -> None:
    """docker.io/library/demo:latest, pulled by every client: the upstream sends its blobs once in all."""
    client: Client = request.getfixturevalue(f"{client_name}_client")
    image = upstreams["docker.io"].images["docker"]["schema2"]
    reference = client.reference("docker.io", image)
    with measure(list(upstreams.values()), e2e_mirror) as cost:
        client.pull(reference)
    e2e_mirror.wait_idle()
    SHARED.append((client_name, reference, cost))
    client.check(reference, image)
    client.remove(reference)
    assert cost.mirror["requests"] > 0
    assert_each_blob_served_at_most_once(list(upstreams.values()))
    served = upstreams["docker.io"].blobs_served()
    for digest in image.blobs:
        assert served[0][digest] + served[1][digest] <= 2  # one registry 307 + one CDN GET at most


def test_a_tag_one_client_pulled_is_fresh_for_another(
    containerd_client: Client, podman_client: Client, upstreams: dict[str, Upstream], e2e_mirror: MirrorProcess
) -> None:
    """Within tag_ttl, a tag containerd just pulled costs podman nothing upstream, not even a manifest GET."""
    image = upstreams["docker.io"].images["cross-client"]["schema2"]
    containerd_client.pull(containerd_client.reference("docker.io", image))
    e2e_mirror.wait_idle()
    reference = podman_client.reference("docker.io", image)
    with measure(list(upstreams.values()), e2e_mirror) as cost:
        podman_client.pull(reference)
    podman_client.check(reference, image)
    podman_client.remove(reference)
    containerd_client.remove(containerd_client.reference("docker.io", image))
    assert cost.registry_blob_gets == 0
    assert cost.registry_log == [], cost.registry_log


def test_credentials_never_reach_a_cdn(upstreams: dict[str, Upstream], e2e_mirror: MirrorProcess) -> None:
    for upstream in upstreams.values():
        assert upstream.cdn.requests, f"{upstream.name}: the CDN was never used"
        leaked = [
            (r.path, r.headers["Authorization"][:16]) for r in upstream.cdn.requests if "Authorization" in r.headers
        ]
        assert leaked == [], f"{upstream.name} CDN got Authorization headers: {leaked[:3]} ({len(leaked)} requests)"
    # Only the issuer that asks for credentials got them, and the password is in no log.
    ghcr_basic = [
        r for r in upstreams["ghcr.io"].issuer.requests if r.headers.get("Authorization", "").startswith("Basic")
    ]
    assert ghcr_basic, "the mirror never sent its ghcr.io credentials to the token issuer"
    assert not [r for r in upstreams["docker.io"].issuer.requests if "Authorization" in r.headers]
    assert "s3cret" not in e2e_mirror.log_path.read_text(errors="replace")
    # And, over the whole session, no blob left an upstream twice.
    assert_each_blob_served_at_most_once(list(upstreams.values()))


def test_docker_hub_quota_in_view(
    docker_client: Client, upstreams: dict[str, Upstream], e2e_mirror: MirrorProcess
) -> None:
    """Docker pulls through the mirror; the quota Docker Hub's look-alike reports shows per upstream."""
    image = upstreams["docker.io"].images["docker"]["schema2"]
    docker_client.pull(docker_client.reference("docker.io", image))
    hub = e2e_mirror.stats()["upstreams"]["docker.io"]
    assert (hub["ratelimit_limit"], hub["ratelimit_remaining"], hub["ratelimit_window_seconds"]) == (100, 42, 21600)
    assert hub["ratelimit_source"] == "198.51.100.23"
    assert hub["manifest_gets"] >= 1
    metrics = httpx.get(f"{e2e_mirror.url}/metrics").text
    assert 'mirror_upstream_ratelimit_remaining{upstream="docker.io"} 42' in metrics
    assert 'mirror_upstream_ratelimit_remaining{upstream="ghcr.io"}' not in metrics, "ghcr.io sent no quota"
