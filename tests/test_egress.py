"""Out through the corporate edge, with real parts: squid (basic auth, ssl-bump), nginx (mTLS), a private CA.

The upstream is a real distribution registry over TLS, named `registry.egress.test`: only squid
resolves that name, so the mirror reaches it through the proxy or not at all, and the registry's
access log shows squid's source address on every request that came through it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from egress_parts import (
    CDN_HOST,
    DIRECT_ADDRESS,
    DIRECT_HOST,
    PROXY_OUTGOING,
    PROXY_PASSWORD,
    PROXY_USER,
    UPSTREAM_ADDRESS,
    UPSTREAM_HOST,
    CertificateAuthority,
    Nginx,
    Squid,
    private_names,
    with_system_ca,
)
from support import ALL_MANIFESTS, Image, MirrorProcess, Registry, seed_standard_images
from test_pull import skopeo_copy, verify_dir_copy
from token_upstream import StaticCDN


@dataclass
class Edge:
    ca: CertificateAuthority  # signed the upstream's certificate
    registry: Registry  # https://registry.egress.test, blobs redirected to the CDN
    cdn: StaticCDN  # http://cdn.egress.test
    direct: Registry  # http://direct.egress.test, for NO_PROXY
    images: dict[str, Image]
    squid: Squid

    @property
    def upstream_url(self) -> str:
        return f"https://{UPSTREAM_HOST}:{self.registry.port}"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    root = tmp_path_factory.mktemp("edge")
    ca = CertificateAuthority(root / "ca", "upstream-ca")
    registry = Registry(root / "registry", host=UPSTREAM_ADDRESS)
    direct = Registry(root / "direct", host=DIRECT_ADDRESS)
    started: list[Registry | StaticCDN | Squid] = [registry, direct]  # stopped whatever happens below
    try:
        registry.start()
        direct.start()
        images = seed_standard_images(registry.url)
        seed_standard_images(direct.url)
        cdn = StaticCDN(registry.root / "data")
        started.append(cdn)
        # Restart over TLS, with blob downloads redirected to a CDN that only squid can name.
        registry.stop()
        registry.tls = ca.issue("registry", hosts=(UPSTREAM_HOST,))
        registry.extra_config = (
            "middleware:\n  storage:\n    - name: redirect\n"
            f"      options:\n        baseurl: http://{CDN_HOST}:{cdn.server.port}/\n"
        )
        registry.start()
        squid = Squid({UPSTREAM_HOST: UPSTREAM_ADDRESS, CDN_HOST: "127.0.0.1"})
        started.append(squid)
        squid.start()
        yield Edge(ca, registry, cdn, direct, images, squid)
    finally:
        for part in reversed(started):
            part.stop()


def edge_mirror(tmp_path: Path, upstreams: dict[str, str], **options: object) -> MirrorProcess:
    """A mirror whose /etc/hosts names only the direct upstream, and that asks no DNS server."""
    names = private_names(tmp_path / "names", {DIRECT_HOST: DIRECT_ADDRESS})
    wrapper = [*names, *options.pop("wrapper", [])]  # type: ignore[misc]  # a list of str
    return MirrorProcess(tmp_path / "mirror", upstreams, wrapper=wrapper, **options)  # type: ignore[arg-type]


@pytest.fixture
def started() -> Iterator[list[MirrorProcess]]:
    """Mirrors a test starts, stopped by PID at its end whatever happened."""
    mirrors: list[MirrorProcess] = []
    yield mirrors
    for mirror in mirrors:
        mirror.stop()


def pull(mirror: MirrorProcess, reference: str, out: Path, image: Image) -> None:
    skopeo_copy(mirror, reference, out)
    verify_dir_copy(out, image)


def refused(mirror: MirrorProcess, reference: str, setting: str) -> str:
    """What a client gets when the way to the upstream is mis-set: a 503 naming the setting. Its message."""
    url = f"{mirror.url}/v2/{reference.replace(':', '/manifests/')}"
    response = httpx.get(url, headers={"Accept": ", ".join(ALL_MANIFESTS)}, timeout=60)
    assert response.status_code == 503
    error = response.json()["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    assert error["detail"] == {"upstream": "docker.io", "setting": setting}
    message: str = error["message"]
    return message


def config_text(mirror: MirrorProcess) -> str:
    """What `mirror config` prints for this mirror's file and environment."""
    return subprocess.run(
        [sys.executable, "-m", "mirror", "config", "--config", str(mirror.root / "config.toml")],
        capture_output=True,
        text=True,
        check=True,
        env={**mirror.env, "PATH": "/usr/bin:/bin"},
    ).stdout


def test_pull_through_squid_with_the_proxy_setting(edge: Edge, tmp_path: Path, started: list[MirrorProcess]) -> None:
    keys = f'proxy = "{edge.squid.url}"\nca_file = "{edge.ca.cert_path}"\n'
    mirror = edge_mirror(tmp_path, {"docker.io": edge.upstream_url}, upstream_keys={"docker.io": keys})
    started.append(mirror.start())
    mark, seen = edge.registry.mark(), len(edge.squid.requests())
    image = edge.images["demo"]

    pull(mirror, "library/demo:latest", tmp_path / "out", image)

    addresses = edge.registry.client_addresses()[mark:]
    assert addresses and set(addresses) == {PROXY_OUTGOING}, "every upstream request came through squid"
    mirror.stop()  # squid logs a CONNECT when its tunnel closes
    tunnel = ("CONNECT", f"{UPSTREAM_HOST}:{edge.registry.port}", PROXY_USER)
    deadline = time.monotonic() + 10
    while tunnel not in {(m, url, user) for m, url, user, _ in edge.squid.requests()[seen:]}:
        assert time.monotonic() < deadline, "https goes through CONNECT, as the proxy user"
        time.sleep(0.1)
    through = edge.squid.requests()[seen:]
    cdn_gets = {url.split("/")[-2] for method, url, _, _ in through if method == "GET" and CDN_HOST in url}
    assert {digest.split(":")[1] for digest in image.blobs} <= cdn_gets, "CDN redirects take the same proxy"
    assert edge.cdn.blob_gets(), "the CDN served the blobs"

    shown = config_text(mirror)
    assert f'proxy = "http://{PROXY_USER}:***@127.0.0.1:{edge.squid.port}"' in shown
    for text in (shown, mirror.log_path.read_text(), "\n".join(edge.squid.log_lines())):
        assert PROXY_PASSWORD not in text


def test_environment_proxy_and_no_proxy(edge: Edge, tmp_path: Path, started: list[MirrorProcess]) -> None:
    mirror = edge_mirror(
        tmp_path,
        {"docker.io": edge.upstream_url, DIRECT_HOST: f"http://{DIRECT_HOST}:{edge.direct.port}"},
        upstream_keys={"docker.io": f'ca_file = "{edge.ca.cert_path}"\n'},
        env={"HTTPS_PROXY": edge.squid.url, "http_proxy": edge.squid.url, "NO_PROXY": f"example.org, {DIRECT_HOST}"},
    )
    started.append(mirror.start())
    mark, direct_mark, seen = edge.registry.mark(), edge.direct.mark(), len(edge.squid.requests())

    pull(mirror, "library/demo:latest", tmp_path / "proxied", edge.images["demo"])
    pull(mirror, f"{DIRECT_HOST}/library/ocidemo:latest", tmp_path / "direct", edge.images["oci"])

    assert set(edge.registry.client_addresses()[mark:]) == {PROXY_OUTGOING}, "HTTPS_PROXY was used"
    direct_addresses = edge.direct.client_addresses()[direct_mark:]
    assert direct_addresses and PROXY_OUTGOING not in direct_addresses, "NO_PROXY sent this upstream direct"
    assert not [r for r in edge.squid.requests()[seen:] if DIRECT_HOST in r[1]]
    assert f"# HTTPS_PROXY=http://{PROXY_USER}:***@127.0.0.1:{edge.squid.port}" in config_text(mirror)
    mirror.stop()
    assert PROXY_PASSWORD not in mirror.log_path.read_text()


def test_wrong_proxy_password_is_a_clear_error(edge: Edge, tmp_path: Path, started: list[MirrorProcess]) -> None:
    wrong = f"http://{PROXY_USER}:Not-The-Password@127.0.0.1:{edge.squid.port}"
    keys = f'proxy = "{wrong}"\nca_file = "{edge.ca.cert_path}"\n'
    mirror = edge_mirror(tmp_path, {"docker.io": edge.upstream_url}, upstream_keys={"docker.io": keys})
    started.append(mirror.start())

    message = refused(mirror, "library/demo:latest", "proxy")

    assert "407" in message and "egress proxy" in message
    mirror.stop()
    assert "Not-The-Password" not in message + mirror.log_path.read_text()


@pytest.fixture(scope="module")
def bumping(edge: Edge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Squid, CertificateAuthority]]:
    """squid-openssl inspecting TLS: it re-signs the upstream's certificate with its own CA."""
    proxy_ca = CertificateAuthority(tmp_path_factory.mktemp("proxy-ca"), "proxy-ca")
    squid = Squid(
        {UPSTREAM_HOST: UPSTREAM_ADDRESS, CDN_HOST: "127.0.0.1"}, bump_ca=proxy_ca, upstream_ca=edge.ca.cert_path
    )
    try:
        yield squid.start(), proxy_ca
    finally:
        squid.stop()


@pytest.mark.parametrize("trust", ["ca_file", "SSL_CERT_FILE", "system store"])
def test_tls_inspecting_proxy_once_its_ca_is_trusted(
    trust: str,
    edge: Edge,
    bumping: tuple[Squid, CertificateAuthority],
    tmp_path: Path,
    started: list[MirrorProcess],
) -> None:
    squid, proxy_ca = bumping
    keys = f'proxy = "{squid.url}"\n'
    env, wrapper = {}, []
    if trust == "ca_file":
        keys += f'ca_file = "{proxy_ca.cert_path}"\n'
    elif trust == "SSL_CERT_FILE":
        env = {"SSL_CERT_FILE": str(proxy_ca.cert_path)}
    else:  # installed with update-ca-certificates, into a store mounted over /etc/ssl/certs for the mirror only
        env = {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt", "SSL_CERT_DIR": "/etc/ssl/certs"}
        wrapper = with_system_ca(tmp_path / "trust", proxy_ca.cert_path)
    mirror = edge_mirror(
        tmp_path, {"docker.io": edge.upstream_url}, upstream_keys={"docker.io": keys}, env=env, wrapper=wrapper
    )
    started.append(mirror.start())
    seen = len(squid.requests())

    pull(mirror, "library/ocidemo:latest", tmp_path / "out", edge.images["oci"])

    inspected = [url for method, url, _, _ in squid.requests()[seen:] if method == "GET"]
    manifest_url = f"https://{UPSTREAM_HOST}:{edge.registry.port}/v2/library/ocidemo/manifests/latest"
    assert manifest_url in inspected, "squid saw inside the TLS connection"


def test_tls_inspecting_proxy_without_its_ca_names_the_fix(
    edge: Edge, bumping: tuple[Squid, CertificateAuthority], tmp_path: Path, started: list[MirrorProcess]
) -> None:
    squid, _ = bumping
    # The upstream's own CA is trusted, but squid presents certificates signed by its CA.
    keys = f'proxy = "{squid.url}"\nca_file = "{edge.ca.cert_path}"\n'
    mirror = edge_mirror(tmp_path, {"docker.io": edge.upstream_url}, upstream_keys={"docker.io": keys})
    started.append(mirror.start())

    message = refused(mirror, "library/demo:latest", "ca_file")

    assert f"{UPSTREAM_HOST}:{edge.registry.port}" in message
    assert "not trusted" in message and '[upstreams."docker.io"] ca_file' in message
    assert mirror.stats()["upstream_retries"] == 0, "a certificate error is not worth a retry"


@pytest.fixture(scope="module")
def mutual(edge: Edge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nginx, Path, Path]]:
    """nginx with ssl_verify_client on, in front of the plain-HTTP registry; and a client certificate."""
    root = tmp_path_factory.mktemp("mtls")
    clients = CertificateAuthority(root / "client-ca", "client-ca")
    cert, key = clients.issue("mirror-client", client=True)
    nginx = Nginx(
        root / "nginx",
        f"{DIRECT_ADDRESS}:{edge.direct.port}",
        edge.ca.issue("nginx", hosts=("127.0.0.1",)),
        clients.cert_path,
    )
    try:
        yield nginx.start(), cert, key
    finally:
        nginx.stop()


def test_mutual_tls_with_a_client_certificate(
    edge: Edge, mutual: tuple[Nginx, Path, Path], tmp_path: Path, started: list[MirrorProcess]
) -> None:
    nginx, cert, key = mutual
    keys = f'ca_file = "{edge.ca.cert_path}"\nclient_cert = "{cert}"\nclient_key = "{key}"\n'
    mirror = MirrorProcess(tmp_path / "with", {"docker.io": nginx.url}, upstream_keys={"docker.io": keys})
    started.append(mirror.start())
    pull(mirror, "library/multi:latest", tmp_path / "out", edge.images["list"])

    without = MirrorProcess(
        tmp_path / "without",
        {"docker.io": nginx.url},
        upstream_keys={"docker.io": f'ca_file = "{edge.ca.cert_path}"\n'},
    )
    started.append(without.start())
    assert "client_cert and client_key" in refused(without, "library/multi:latest", "client_cert")
