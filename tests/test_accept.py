"""When one client's cached tag answer may be reused for another client's Accept set."""

from __future__ import annotations

import pytest

from mirror.cache.metadata import same_answer
from mirror.registry.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    accept_key,
    accepted_types,
)

DOCKERD = frozenset({DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX})
CONTAINERD = DOCKERD | {"*/*"}
OLD = frozenset({DOCKER_MANIFEST})


@pytest.mark.parametrize(
    ("first", "media_type", "second", "shared"),
    [
        (DOCKERD, DOCKER_MANIFEST_LIST, CONTAINERD, True),  # an index, readable by both
        (DOCKERD, DOCKER_MANIFEST, CONTAINERD, True),  # the tag is a plain manifest
        (DOCKERD, DOCKER_MANIFEST_LIST, OLD, False),  # the old client cannot read an index
        (OLD, DOCKER_MANIFEST, DOCKERD, False),  # the tag may be an index the old client got resolved
        (OLD, DOCKER_MANIFEST, OLD | {OCI_MANIFEST}, True),  # neither accepts an index
        (DOCKERD, OCI_MANIFEST, OLD, False),  # the old client cannot read OCI
        (frozenset(), DOCKER_MANIFEST, DOCKERD, False),  # no Accept at all: only an exact match
    ],
)
def test_same_answer(first: frozenset[str], media_type: str, second: frozenset[str], shared: bool) -> None:
    assert same_answer(accept_key(first), media_type, second) is shared


def test_accept_parsing_merges_lines_and_drops_q0() -> None:
    accepted = accepted_types(
        [f"{DOCKER_MANIFEST}, {OCI_INDEX};q=0.5", f"{OCI_MANIFEST}", f"{DOCKER_MANIFEST_LIST}; q=0"]
    )
    assert accepted == {DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST}
