"""Session fixtures of the end-to-end suite: two token-authenticated upstreams, one mirror, four clients.

Run it with scripts/e2e, which puts the whole session in a loopback-only network namespace.
Outside it (MIRROR_E2E unset) the tests here are deselected.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from e2e_parts import (
    CLIENTS,
    KINDS,
    RESULTS,
    SHARED,
    Client,
    Containerd,
    ContainerdClient,
    DockerClient,
    DockerEngine,
    NotIsolated,
    Podman,
    PodmanClient,
    Skopeo,
    SkopeoClient,
    Upstream,
    assert_loopback_only,
    client_config,
    results_table,
    seed_kinds,
)
from support import Image, MirrorProcess, Pusher, Registry, seed_standard_images
from token_upstream import StaticCDN, TokenIssuer, enable_token_auth

HERE = Path(__file__).parent
ENABLED = os.environ.get("MIRROR_E2E") == "1"
GHCR_CREDENTIALS = ("alice", "s3cret")
DOCKER_HUB_QUOTA = {
    "RateLimit-Limit": "100;w=21600",
    "RateLimit-Remaining": "42;w=21600",
    "Docker-RateLimit-Source": "198.51.100.23",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without MIRROR_E2E=1 (set by scripts/e2e) the e2e tests are deselected, never run."""
    if ENABLED:
        return
    mine = [item for item in items if HERE in item.path.parents]
    if mine:
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if item not in mine]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ENABLED and (RESULTS or SHARED):
        terminalreporter.write_sep("=", "e2e: upstream requests per client pull")
        terminalreporter.write(results_table())


@pytest.fixture(scope="session", autouse=True)
def results_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The results table, also as a file in the session's temporary directory."""
    yield
    (tmp_path_factory.getbasetemp() / "e2e-results.md").write_text(results_table())


def _terminate(signum: int, frame: FrameType | None) -> None:
    # A SIGTERM (from `timeout` in scripts/e2e) unwinds like Ctrl-C, so every fixture's cleanup runs.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def loopback_only() -> None:
    """FAIL (not skip) unless this process is in a network namespace whose only interface is lo."""
    problem = None
    try:
        assert_loopback_only()
    except NotIsolated as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    signal.signal(signal.SIGTERM, _terminate)


def _start_upstream(root: Path, name: str, seed: int, credentials: tuple[str, str] | None) -> Upstream:
    registry = Registry(root / "registry").start()
    issuer: TokenIssuer | None = None
    cdn: StaticCDN | None = None
    try:
        images: dict[str, dict[str, Image]] = {}
        with Pusher(registry.url) as pusher:
            for index, client in enumerate(CLIENTS):
                base = seed + 10 * index
                if name == "docker.io" and client == "docker":
                    standard = seed_standard_images(registry.url, layer_size=256 * 1024)
                    images[client] = {
                        "schema2": standard["demo"],
                        "oci": standard["oci"],
                        "list": standard["list"],
                        "index": standard["index"],
                    }
                    continue
                if name == "docker.io":
                    names = {
                        "schema2": (f"library/{client}-demo", "latest"),
                        "oci": (f"library/{client}-ocidemo", "latest"),
                        "list": (f"library/{client}-multi", "latest"),
                        "index": (f"library/{client}-ociindex", "latest"),
                    }
                else:
                    names = {kind: ("org/app", f"{client}-{kind}") for kind in ("schema2", "oci", "list", "index")}
                images[client] = seed_kinds(pusher, names, base)
            if name == "docker.io":
                # For the cross-client tag test: one image no other test pulls.
                tagged = pusher.image("library/tagged", "latest", [4096], seed=seed + 900)
                images["cross-client"] = {"schema2": tagged}
                # For the archive test (export, docker load, docker save, import): images only it pulls.
                images["archive"] = seed_kinds(pusher, {k: ("library/archived", k) for k in KINDS}, seed + 950)
                # For the access-control and TLS tests: images only they pull, through mirrors of their own.
                images["auth"] = seed_kinds(pusher, {k: ("library/guarded", k) for k in KINDS}, seed + 970)
                images["tls"] = seed_kinds(pusher, {k: ("library/private-ca", k) for k in KINDS}, seed + 980)
        issuer = TokenIssuer(root / "issuer", credentials=credentials)
        cdn = StaticCDN(registry.root / "data")
        if name == "docker.io":
            registry.headers = DOCKER_HUB_QUOTA  # Docker Hub's pull-quota headers, with every answer
        enable_token_auth(registry, issuer, cdn)
        return Upstream(name, registry, issuer, cdn, images)
    except BaseException:
        registry.stop()
        if issuer is not None:
            issuer.stop()
        if cdn is not None:
            cdn.stop()
        raise


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory, loopback_only: None) -> Iterator[Upstream]:
    """ "docker.io": anonymous token auth, blobs redirected to its CDN."""
    upstream = _start_upstream(tmp_path_factory.mktemp("hub"), "docker.io", 1000, None)
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture(scope="session")
def ghcr(tmp_path_factory: pytest.TempPathFactory, loopback_only: None) -> Iterator[Upstream]:
    """ "ghcr.io": token auth that needs credentials (alice / s3cret), blobs redirected to its CDN."""
    upstream = _start_upstream(tmp_path_factory.mktemp("ghcr"), "ghcr.io", 2000, GHCR_CREDENTIALS)
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture(scope="session")
def upstreams(hub: Upstream, ghcr: Upstream) -> dict[str, Upstream]:
    return {"docker.io": hub, "ghcr.io": ghcr}


@pytest.fixture(scope="session")
def e2e_mirror(tmp_path_factory: pytest.TempPathFactory, hub: Upstream, ghcr: Upstream) -> Iterator[MirrorProcess]:
    """The one mirror every client pulls through."""
    mirror = MirrorProcess(
        tmp_path_factory.mktemp("mirror"),
        {"docker.io": hub.registry.url, "ghcr.io": ghcr.registry.url},
        credentials={"ghcr.io": GHCR_CREDENTIALS},
    )
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()


@pytest.fixture(scope="session")
def docker_client(tmp_path_factory: pytest.TempPathFactory, e2e_mirror: MirrorProcess) -> Iterator[Client]:
    engine = DockerEngine(tmp_path_factory.mktemp("dk", numbered=True), e2e_mirror.url)
    try:
        engine.start()
        yield DockerClient(engine, e2e_mirror)
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def containerd_client(tmp_path_factory: pytest.TempPathFactory, e2e_mirror: MirrorProcess) -> Iterator[Client]:
    root = tmp_path_factory.mktemp("ctd")
    hosts = root / "certs.d"
    client_config("containerd", e2e_mirror.url, "--output", str(hosts))
    containerd = Containerd(root / "daemon")
    try:
        containerd.start()
        yield ContainerdClient(containerd, hosts)
    finally:
        containerd.stop()


@pytest.fixture(scope="session")
def podman_client(tmp_path_factory: pytest.TempPathFactory, e2e_mirror: MirrorProcess) -> Iterator[Client]:
    podman = Podman(tmp_path_factory.mktemp("podman"), e2e_mirror.url)
    try:
        yield PodmanClient(podman)
    finally:
        podman.stop()


@pytest.fixture(scope="session")
def skopeo_client(tmp_path_factory: pytest.TempPathFactory, e2e_mirror: MirrorProcess) -> Client:
    return SkopeoClient(Skopeo(tmp_path_factory.mktemp("skopeo"), e2e_mirror.url))
