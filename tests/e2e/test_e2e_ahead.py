"""README "Fetch ahead" with real clients: Docker Engine and containerd pull an image of ten small
layers, cold, from an upstream that paces each connection (nginx `limit_rate`, 1 MiB/s: one
stream is slow, loopback is not the limit), three ways: through a mirror with fetch ahead, through
a second mirror (fresh cache) with `fetch_ahead = false`, and from the paced nginx itself.

Docker Engine downloads three layers at a time (`max-concurrent-downloads` 3), in manifest order,
so direct or through a mirror that streams each blob once it takes about four rounds of one layer.
The mirror with fetch ahead starts the whole image at the client's first layer request, and the
pull takes about one. containerd's `ctr images pull` has no limit by default (it asks for every
blob of the image at once, and fetch ahead has nothing to add); with `--max-concurrent-downloads 3`,
the default of containerd's CRI plugin (what Kubernetes pulls with), it behaves as Docker does.

Each client pulls by an explicit reference, so that one daemon can reach all three: Docker as
`<mirror>/docker.io/ahead/app` (a mirror's path-style registry, as in tests/e2e/e2e_parts.py)
and `<nginx>/ahead/app` (127.0.0.0/8 is an insecure registry to Docker by default); containerd as
`docker.io/ahead/app` with the hosts.toml `mirror client-config containerd` writes for each mirror,
and `<nginx>/ahead/app` with a plain-HTTP hosts.toml. Every layer is just under the mirror's 4 MiB
piece, so every route fetches each blob in one stream: the only difference is when it starts.

The times go to e2e-ahead-times.md in the session's temporary directory (and to stdout with -s),
and the mirrors' access-log lines and the upstream's blob GETs of each pull to e2e-ahead-requests.txt.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_parts import Client, Containerd, ContainerdClient, DockerClient, DockerEngine, client_config
from pacing import PacedRequest, PacedUpstream
from support import Image, MirrorProcess, Pusher, Registry

pytestmark = pytest.mark.e2e

RATE = "1m"  # nginx limit_rate: 1 MiB/s per connection
LAYERS = 10
# Random bytes do not compress: each gzip layer is just under 4 MiB, one piece of the mirror's.
LAYER_CONTENT = 4 * 1024 * 1024 - 64 * 1024
REPOSITORY, TAG = "ahead/app", "v1"
MIN_GAIN = 1.5  # a loose behaviour check; the benchmark's scenario 11 measures the ratio
# Client case -> ctr's --max-concurrent-downloads (None: Docker Engine, which downloads 3 at a time).
CASES: dict[str, int | None] = {"docker": None, "containerd": 0, "containerd-3": 3}
ROUTES = ("fetch ahead", "no fetch ahead", "direct")


@dataclass
class Pull:
    """One timed cold pull and what it cost the paced upstream."""

    case: str
    route: str
    reference: str
    seconds: float
    upstream: list[PacedRequest]
    fetched_ahead: int = 0  # the mirror's blobs_fetched_ahead during the pull
    client_requests: list[str] | None = None  # the mirror's access-log lines for /v2/

    def blob_gets(self) -> Counter[str]:
        return Counter(
            r.uri.split("?")[0].rsplit("/", 1)[1] for r in self.upstream if r.method == "GET" and "/blobs/" in r.uri
        )

    def blob_bytes(self) -> int:
        return sum(r.body_bytes for r in self.upstream if r.method == "GET" and "/blobs/" in r.uri)


PULLS: list[Pull] = []


@pytest.fixture(scope="module", autouse=True)
def report_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    base = tmp_path_factory.getbasetemp()
    lines = [
        f"Cold pulls of {REPOSITORY}:{TAG} ({LAYERS} layers of ~4 MiB), upstream paced at {RATE}/s per connection.",
        "",
        "| client | route | seconds | upstream blob GETs | upstream blob bytes | mirror: fetched ahead |",
        "|---|---|---|---|---|---|",
    ]
    for p in PULLS:
        ahead = "-" if p.route == "direct" else str(p.fetched_ahead)
        gets = sum(p.blob_gets().values())
        lines.append(f"| {p.case} | {p.route} | {p.seconds:.2f} | {gets} | {p.blob_bytes():,} | {ahead} |")
    (base / "e2e-ahead-times.md").write_text("\n".join(lines) + "\n")
    (base / "e2e-ahead-requests.txt").write_text("".join(requests_text(p) for p in PULLS))
    print("\n" + "\n".join(lines))


def requests_text(pull: Pull) -> str:
    """What one pull asked of the mirror, and when each upstream blob GET ran (relative to the pull's start)."""
    start = min((r.started for r in pull.upstream), default=0.0)
    upstream = [
        f"  +{r.started - start:5.2f}s {r.seconds:5.2f}s {r.status} {r.body_bytes:>9} {r.uri.split('?')[0]}"
        for r in sorted(pull.upstream, key=lambda r: r.started)
    ]
    text = f"## {pull.case}, {pull.route}: {pull.reference} in {pull.seconds:.2f}s\n\n"
    if pull.client_requests is not None:
        text += "client -> mirror:\n" + "".join(f"  {line}\n" for line in pull.client_requests)
    return text + "upstream (nginx), by start:\n" + "\n".join(upstream) + "\n\n"


# The paced upstream and the mirrors in front of it


@dataclass
class Origin:
    registry: Registry
    paced: PacedUpstream
    image: Image

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.image.blobs.values())


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, loopback_only: None) -> Iterator[Origin]:
    """A real registry holding the image, behind nginx pacing each connection at RATE."""
    root = tmp_path_factory.mktemp("ahead-origin")
    registry = Registry(root / "registry").start()
    try:
        with Pusher(registry.url) as pusher:
            image = pusher.image(REPOSITORY, TAG, [LAYER_CONTENT] * LAYERS, seed=8100)
        assert all(len(data) < 4 * 1024 * 1024 for data in image.blobs.values())
        with PacedUpstream(registry, root / "paced", rate=RATE) as paced:
            yield Origin(registry, paced, image)
    finally:
        registry.stop()


@contextmanager
def mirrors(root: Path, origin: Origin) -> Iterator[dict[str, MirrorProcess]]:
    """Two fresh mirrors of "docker.io" = the paced upstream: one with fetch ahead, one without."""
    with ExitStack() as stack:
        started = {}
        for route, enabled in (("fetch ahead", "true"), ("no fetch ahead", "false")):
            mirror = MirrorProcess(
                root / route.replace(" ", "-"),
                {"docker.io": origin.paced.url},
                extra_config=f"fetch_ahead = {enabled}\n",
            )
            mirror.start()
            stack.callback(mirror.stop)
            started[route] = mirror
        yield started


# The clients: one daemon per case, one (client, reference) per route


class LimitedCtr(ContainerdClient):
    """`ctr images pull` as the suite's containerd client does, with --max-concurrent-downloads."""

    def __init__(self, containerd: Containerd, hosts_dir: Path, downloads: int) -> None:
        super().__init__(containerd, hosts_dir)
        self.downloads = downloads

    def pull(self, reference: str) -> None:
        self.containerd.ctr(
            "images", "pull", "--hosts-dir", str(self.hosts_dir), "--snapshotter", "native",
            "--platform", "linux/amd64", "--max-concurrent-downloads", str(self.downloads), reference,
        )  # fmt: skip


class CheckedDocker(DockerClient):
    """DockerClient, also checking that the image Docker keeps is the upstream's manifest digest."""

    def check(self, reference: str, image: Image) -> None:
        super().check(reference, image)
        found = self.engine.docker("image", "inspect", "--format", "{{json .RepoDigests}}", reference).stdout
        name = reference.rsplit(":", 1)[0]
        assert f"{name}@{image.digest}" in json.loads(found), found


@contextmanager
def routes(
    case: str, root: Path, origin: Origin, mirrors: dict[str, MirrorProcess]
) -> Iterator[dict[str, tuple[Client, str]]]:
    """For each route: the client that pulls it and the reference it pulls."""
    nginx = f"127.0.0.1:{origin.paced.port}"
    downloads = CASES[case]
    if downloads is None:
        engine = DockerEngine(root / "dk", mirrors["fetch ahead"].url)
        try:
            engine.start()
            docker = CheckedDocker(engine, mirrors["fetch ahead"])
            found: dict[str, tuple[Client, str]] = {
                route: (docker, f"127.0.0.1:{mirror.port}/docker.io/{REPOSITORY}:{TAG}")
                for route, mirror in mirrors.items()
            }
            yield {**found, "direct": (docker, f"{nginx}/{REPOSITORY}:{TAG}")}
        finally:
            engine.stop()
        return
    containerd = Containerd(root / "daemon")
    hosts: dict[str, Path] = {}
    for route, mirror in mirrors.items():
        hosts[route] = root / route.replace(" ", "-")
        client_config("containerd", mirror.url, "--output", str(hosts[route]))
    hosts["direct"] = root / "direct"
    (hosts["direct"] / nginx).mkdir(parents=True)
    (hosts["direct"] / nginx / "hosts.toml").write_text(f'server = "http://{nginx}"\n')
    references = {route: f"docker.io/{REPOSITORY}:{TAG}" for route in mirrors} | {
        "direct": f"{nginx}/{REPOSITORY}:{TAG}"
    }
    try:
        containerd.start()
        yield {route: (LimitedCtr(containerd, hosts[route], downloads), references[route]) for route in ROUTES}
    finally:
        containerd.stop()


def timed_pull(
    case: str, route: str, client: Client, reference: str, origin: Origin, mirror: MirrorProcess | None
) -> Pull:
    """A cold pull, checked and removed from the client: its time and what the upstream served."""
    mark = len(origin.paced.requests())
    since = mirror.log_path.stat().st_size if mirror is not None else 0
    ahead_before = mirror.stats()["blobs_fetched_ahead"] if mirror is not None else 0
    start = time.monotonic()
    client.pull(reference)
    seconds = time.monotonic() - start
    pull = Pull(case, route, reference, seconds, [])
    if mirror is not None:
        mirror.wait_idle()  # the client has the last byte before the mirror's fsync
        pull.fetched_ahead = mirror.stats()["blobs_fetched_ahead"] - ahead_before
        with open(mirror.log_path, "rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        pull.client_requests = [line for line in text.splitlines() if " /v2/" in line]
    pull.upstream = [r for r in origin.paced.requests()[mark:] if r.uri.startswith("/v2/")]
    PULLS.append(pull)
    client.check(reference, origin.image)
    client.remove(reference)
    return pull


# The test


@pytest.mark.parametrize("case", CASES)
def test_fetch_ahead_pulls_an_image_of_small_layers_faster(
    case: str, origin: Origin, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Cold pulls with fetch ahead, without it, and direct: each the upstream's image; the mirrors asked
    the upstream once per blob; with three downloads at a time, fetch ahead at least 1.5x faster."""
    root = tmp_path_factory.mktemp(f"ahead-{case}")
    with mirrors(root / "mirrors", origin) as started, routes(case, root / "client", origin, started) as clients:
        pulls = {}
        for route in ROUTES:
            client, reference = clients[route]
            pulls[route] = timed_pull(case, route, client, reference, origin, started.get(route))

    for route in ("fetch ahead", "no fetch ahead"):
        pull = pulls[route]
        assert pull.blob_gets() == Counter(dict.fromkeys(origin.image.blobs, 1)), (route, requests_text(pull))
        assert pull.blob_bytes() <= 1.01 * origin.size, (route, pull.blob_bytes(), origin.size)
    assert pulls["no fetch ahead"].fetched_ahead == 0
    ahead, plain = pulls["fetch ahead"].seconds, pulls["no fetch ahead"].seconds
    if CASES[case] == 0:
        return  # every blob at once already: nothing left for fetch ahead to start early
    assert pulls["fetch ahead"].fetched_ahead > 0, requests_text(pulls["fetch ahead"])
    assert ahead * MIN_GAIN <= plain, f"{case}: fetch ahead {ahead:.2f}s, without {plain:.2f}s"
