from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_upstream import FakeUpstream
from pacing import PacedUpstream
from support import Image, MirrorProcess, Registry, seed_standard_images
from tools import audit_subprocesses, missing_for_suite, suite


def pytest_sessionstart(session: pytest.Session) -> None:
    # A missing tool is a broken test machine, not a reason to skip: fail loudly.
    missing = missing_for_suite()
    if missing:
        raise pytest.UsageError(
            f"missing tools of the {suite()} suite: {', '.join(missing)} "
            f"(scripts/install-deps {suite()} installs them; scripts/tools.toml declares them)"
        )
    audit_subprocesses()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One real distribution registry for the session, seeded with the standard images."""
    registry = Registry(tmp_path_factory.mktemp("registry")).start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def images(registry: Registry) -> dict[str, Image]:
    return seed_standard_images(registry.url)


@pytest.fixture
def mirror(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> Iterator[MirrorProcess]:
    """A fresh mirror with an empty cache in front of the session registry."""
    process = MirrorProcess(tmp_path / "mirror", {"docker.io": registry.url}).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture
def fake_mirror(tmp_path: Path, fake_upstream: FakeUpstream) -> Iterator[MirrorProcess]:
    """A fresh mirror whose only upstream is the fake one."""
    process = MirrorProcess(tmp_path / "fake-mirror", {"docker.io": fake_upstream.url}).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def paced_upstream(tmp_path: Path, registry: Registry) -> Iterator[Callable[[str], PacedUpstream]]:
    """Starts nginx pacing each connection at a rate ("8m": 8 MiB/s) in front of the session registry."""
    started: list[PacedUpstream] = []

    def start(rate: str) -> PacedUpstream:
        upstream = PacedUpstream(registry, tmp_path / f"paced-{len(started)}", rate=rate)
        started.append(upstream.start())
        return upstream

    try:
        yield start
    finally:
        for upstream in started:
            upstream.stop()
