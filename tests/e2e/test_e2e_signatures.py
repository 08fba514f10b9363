"""README "Signature policy" with real clients: Docker Engine, containerd, podman and skopeo pull
through a mirror that enforces a containers-policy.json requiring the team's key for
docker.io/team and accepting anything elsewhere.

The images live in a "docker.io" of their own (token auth, CDN redirects, as the suite's hub),
signed with the signing kit (tests/signing): team/signed with cosign's `.sig` tag, team/bundled
with a Sigstore bundle among its referrers (signed by sigstore-js), team/multi a two-platform OCI
index signed once, on the index; team/unsigned has no signature and team/other-key one by another
key; library/plain is unsigned and outside the guarded scope. Each client pulls what is signed and
fails on the rest, and the mirror's access log must show that it refused that very manifest with
403 and why, and the client must have seen that answer: every client here falls back to the
registry itself (registry-1.docker.io) when the mirror refuses, which fails in this namespace
anyway, so a failed pull alone proves nothing.

Pull times go to e2e-signature-times.md, and what the clients printed when refused to
e2e-signature-messages.txt, both in the session's temporary directory (and to stdout with -s).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from e2e_parts import (
    CLIENTS,
    LAYER_SIZE,
    Client,
    ClientMessages,
    Containerd,
    ContainerdClient,
    DockerClient,
    DockerEngine,
    Podman,
    PodmanClient,
    Skopeo,
    SkopeoClient,
    Upstream,
    client_config,
)
from signing import Key, attach_bundle, attach_cosign, cosign_signature, sign_bundle
from support import OCI_INDEX, OCI_MANIFEST, Image, MirrorProcess, Pusher, Registry
from token_upstream import StaticCDN, TokenIssuer, enable_token_auth

pytestmark = pytest.mark.e2e

SCOPE = "docker.io/team"
ACCEPTED = ("signed", "bundled", "multi", "plain")
REFUSED = {  # image -> a piece of the refusal's reason
    "unsigned": "no sigstore signature of docker.io/team/unsigned@sha256:",
    "other-key": "the signature does not verify",
}
MESSAGES = ClientMessages()
TIMES: list[tuple[str, str, str, float]] = []  # (client, reference, outcome, seconds)


@pytest.fixture(scope="module", autouse=True)
def report_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    base = tmp_path_factory.getbasetemp()
    MESSAGES.write(base / "e2e-signature-messages.txt")
    lines = ["| client | reference | outcome | seconds |", "|---|---|---|---|"]
    lines += [f"| {client} | `{ref}` | {outcome} | {seconds:.2f} |" for client, ref, outcome, seconds in TIMES]
    (base / "e2e-signature-times.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


# The signed "docker.io" and the enforcing mirror


def seed_signed(pusher: Pusher, team: Key, other: Key) -> dict[str, Image]:
    """The module's images, signed (or not) as the module docstring says."""
    images = {
        "signed": pusher.image("team/signed", "v1", [LAYER_SIZE, 4096], seed=7100),
        "bundled": pusher.image("team/bundled", "v1", [LAYER_SIZE, 4096], seed=7110, oci=True),
        "unsigned": pusher.image("team/unsigned", "v1", [LAYER_SIZE, 4096], seed=7120),
        "other-key": pusher.image("team/other-key", "v1", [LAYER_SIZE, 4096], seed=7130, oci=True),
        "plain": pusher.image("library/plain", "v1", [LAYER_SIZE, 4096], seed=7140),
    }
    children = [
        pusher.image("team/multi", "v1-amd64", [LAYER_SIZE, 4096], seed=7150, oci=True),
        pusher.image("team/multi", "v1-arm64", [LAYER_SIZE, 4096], seed=7151, oci=True, platform=("linux", "arm64")),
    ]
    images["multi"] = pusher.index("team/multi", "v1", children, oci=True)
    for name, key in (("signed", team), ("other-key", other), ("multi", team)):
        image = images[name]
        attach_cosign(
            pusher,
            image.repository,
            image.digest,
            [cosign_signature(key, f"docker.io/{image.repository}", image.digest)],
        )
    bundled = images["bundled"]
    bundle = sign_bundle(team, f"docker.io/{bundled.repository}", bundled.digest)
    attach_bundle(pusher, bundled.repository, bundled.digest, OCI_MANIFEST, len(bundled.manifest), bundle)
    return images


@pytest.fixture(scope="module")
def team_key() -> Key:
    return Key.generate()


@pytest.fixture(scope="module")
def signed_hub(tmp_path_factory: pytest.TempPathFactory, team_key: Key, loopback_only: None) -> Iterator[Upstream]:
    """ "docker.io" as the suite's hub is (anonymous tokens, blobs on a CDN), holding the signed images."""
    root = tmp_path_factory.mktemp("signed-hub")
    registry = Registry(root / "registry").start()
    issuer: TokenIssuer | None = None
    cdn: StaticCDN | None = None
    try:
        with Pusher(registry.url) as pusher:
            images = seed_signed(pusher, team_key, Key.generate())
        issuer = TokenIssuer(root / "issuer")
        cdn = StaticCDN(registry.root / "data")
        enable_token_auth(registry, issuer, cdn)
        upstream = Upstream("docker.io", registry, issuer, cdn, {"signatures": images})
    except BaseException:
        registry.stop()
        for part in (issuer, cdn):
            if part is not None:
                part.stop()
        raise
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture(scope="module")
def images(signed_hub: Upstream) -> dict[str, Image]:
    return signed_hub.images["signatures"]


@pytest.fixture(scope="module")
def enforcing(tmp_path_factory: pytest.TempPathFactory, signed_hub: Upstream, team_key: Key) -> Iterator[MirrorProcess]:
    root = tmp_path_factory.mktemp("enforcing")
    identity = {"type": "matchRepository"}  # cosign signs the repository, and the clients pull by tag
    policy = {
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {
            "docker": {
                SCOPE: [
                    {
                        "type": "sigstoreSigned",
                        "keyPath": str(team_key.write_public(root / "team.pub")),
                        "signedIdentity": identity,
                    }
                ]
            }
        },
    }
    (root / "policy.json").write_text(json.dumps(policy, indent=2))
    extra = f'[signatures]\npolicy = "{root / "policy.json"}"\nmode = "enforce"\n'
    mirror = MirrorProcess(root / "mirror", {"docker.io": signed_hub.registry.url}, extra_config=extra)
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()


# The clients, set up against the enforcing mirror as conftest sets them up against the suite's


@contextmanager
def started_client(name: str, root: Path, mirror: MirrorProcess) -> Iterator[Client]:
    if name == "docker":
        engine = DockerEngine(root, mirror.url)
        try:
            engine.start()
            yield DockerClient(engine, mirror)
        finally:
            engine.stop()
    elif name == "containerd":
        client_config("containerd", mirror.url, "--output", str(root / "certs.d"))
        containerd = Containerd(root / "daemon")
        try:
            containerd.start()
            yield ContainerdClient(containerd, root / "certs.d")
        finally:
            containerd.stop()
    elif name == "podman":
        podman = Podman(root, mirror.url)
        try:
            yield PodmanClient(podman)
        finally:
            podman.stop()
    else:
        yield SkopeoClient(Skopeo(root, mirror.url))


@pytest.fixture(scope="module", params=CLIENTS)
def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, enforcing: MirrorProcess
) -> Iterator[Client]:
    with started_client(request.param, tmp_path_factory.mktemp(f"sig-{request.param}"), enforcing) as started:
        yield started


def timed_pull(client: Client, reference: str, outcome: str) -> float:
    start = time.monotonic()
    try:
        client.pull(reference)
    finally:
        TIMES.append((client.name, reference, outcome, time.monotonic() - start))
    return TIMES[-1][3]


def failed_pull(client: Client, reference: str) -> str:
    """Pull `reference`, which must fail; what the client printed."""
    start = time.monotonic()
    try:
        client.pull(reference)
    except AssertionError as exc:  # e2e_parts.run: the command's exit status, stdout and stderr
        return str(exc)
    finally:
        TIMES.append((client.name, reference, "refused", time.monotonic() - start))
    raise AssertionError(f"{client.name} pulled {reference}, which the policy refuses")


def access_lines(mirror: MirrorProcess, since: int, repository: str) -> list[str]:
    """The mirror's access-log lines since byte `since` for the manifests of `repository`."""
    with open(mirror.log_path, "rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    return [line for line in text.splitlines() if f" /v2/{repository}/manifests/" in line]


# The tests


@pytest.mark.parametrize("name", ACCEPTED)
def test_signed_images_pull(name: str, client: Client, images: dict[str, Image], enforcing: MirrorProcess) -> None:
    """Signed by cosign, by a bundle, an index signed once (pulled on the client's platform,
    linux/amd64), and an unsigned image outside the guarded scope: each pulls, is the upstream's,
    and the mirror refused none of the requests for it (by tag or by digest)."""
    image = images[name]
    reference = client.reference("docker.io", image)
    since = enforcing.log_path.stat().st_size
    timed_pull(client, reference, "pulled")
    enforcing.wait_idle()
    client.check(reference, image)
    client.remove(reference)
    lines = access_lines(enforcing, since, image.repository)
    assert lines, f"{client.name} did not pull {reference} through the mirror"
    assert not [line for line in lines if "refused=" in line], lines


@pytest.mark.parametrize("name", REFUSED)
def test_refused_images_do_not_pull(
    name: str, client: Client, images: dict[str, Image], enforcing: MirrorProcess
) -> None:
    """The client's pull fails, the mirror's log says it answered that manifest 403 with the reason,
    and the client saw that answer (not only its fallback to the unreachable registry-1.docker.io)."""
    image = images[name]
    reference = client.reference("docker.io", image)
    since = enforcing.log_path.stat().st_size
    daemon_since = client.engine.log.stat().st_size if isinstance(client, DockerClient) else 0
    printed = failed_pull(client, reference).split("\nstderr: ", 1)[-1].strip()
    MESSAGES[f"{client.name} pull {reference}"] = printed
    lines = access_lines(enforcing, since, image.repository)
    assert lines, f"{client.name} never asked the mirror for {image.repository}:\n{printed}"
    served = [line for line in lines if re.search(r'" (200|307) ', line)]
    assert not served, f"the mirror served a manifest it should refuse: {served}"
    refusals = [line for line in lines if '" 403 ' in line and "refused=" in line]
    assert refusals, f"no 403 with a reason in the mirror's log for {image.repository}: {lines}"
    assert all(REFUSED[name] in line for line in refusals), refusals
    if client.name == "containerd":  # a refused HEAD has no body: containerd has the status alone
        assert f"failed with status code [manifests {image.tag}]: 403 Forbidden" in printed, printed
    else:
        saw = client_saw(client, printed, daemon_since)
        assert "denied: " in saw and REFUSED[name] in saw, saw


def client_saw(client: Client, printed: str, daemon_since: int) -> str:
    """What the client said about the mirror's answer: Docker prints only its fallback's error, and
    logs the mirror's in dockerd's log; podman and skopeo print it."""
    if isinstance(client, DockerClient):
        with open(client.engine.log, "rb") as log:
            log.seek(daemon_since)
            said = [line for line in log.read().decode(errors="replace").splitlines() if "next endpoint" in line]
        return "\n".join(said)
    return printed


@pytest.mark.parametrize("name", REFUSED)
def test_the_refusal_names_image_scope_and_reason(
    name: str, images: dict[str, Image], enforcing: MirrorProcess
) -> None:
    """What the clients got: 403 DENIED, naming the image by digest, the policy's scope and the reason,
    by tag and by digest alike (after the clients above asked by tag)."""
    image = images[name]
    accept = {"Accept": f"{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"}
    for reference in (image.tag, image.digest):
        response = httpx.get(f"{enforcing.url}/v2/{image.repository}/manifests/{reference}", headers=accept)
        assert response.status_code == 403, response.text
        error = response.json()["errors"][0]
        assert error["code"] == "DENIED"
        assert f"docker.io/{image.repository}@{image.digest}" in error["message"]
        assert f"scope '{SCOPE}'" in error["message"]
        assert REFUSED[name] in error["message"], (reference, error["message"])
    layer = json.loads(image.manifest)["layers"][0]["digest"]
    blob = httpx.get(f"{enforcing.url}/v2/{image.repository}/blobs/{layer}")
    assert blob.status_code == 403 and blob.json()["errors"][0]["code"] == "DENIED"


def test_the_other_platform_is_served_by_digest(
    tmp_path_factory: pytest.TempPathFactory, images: dict[str, Image], enforcing: MirrorProcess
) -> None:
    """The index's signature covers its arm64 child too: skopeo --override-arch arm64 copies it, and
    a GET by digest through the mirror serves it."""
    index, arm64 = images["multi"], images["multi"].children[1]
    skopeo = Skopeo(tmp_path_factory.mktemp("sig-skopeo-arm64"), enforcing.url)
    out = skopeo.root / "arm64"
    reference = f"docker.io/{index.repository}:{index.tag}"
    start = time.monotonic()
    skopeo.skopeo("--override-arch", "arm64", "copy", "--retry-times", "0", f"docker://{reference}", f"dir:{out}")
    TIMES.append(("skopeo --override-arch arm64", reference, "pulled", time.monotonic() - start))
    assert (out / "manifest.json").read_bytes() == arm64.manifest
    for digest, data in arm64.blobs.items():
        assert (out / digest.split(":")[1]).read_bytes() == data
    accept = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
    response = httpx.get(f"{enforcing.url}/v2/{index.repository}/manifests/{arm64.digest}", headers=accept)
    assert response.status_code == 200, response.text
    assert response.content == arm64.manifest
