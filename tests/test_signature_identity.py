"""signedIdentity as containers/image applies it: names expanded as Docker expands them, then each
rule's own comparison (cosign signs the repository without a tag: only matchRepository and the
repository rules accept that for a pull by tag)."""

from __future__ import annotations

import pytest

from mirror.signatures.identity import DockerReference, IdentityError, accepts, parse_docker_reference
from mirror.signatures.policy import SignedIdentity

DIGEST = "sha256:" + "a" * 64


def ref(text: str) -> DockerReference:
    return parse_docker_reference(text)


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("alpine", "docker.io/library/alpine"),
        ("index.docker.io/library/alpine", "docker.io/library/alpine"),
        ("team/app:v1", "docker.io/team/app:v1"),
        ("ghcr.io/org/app@" + DIGEST, "ghcr.io/org/app@" + DIGEST),
        ("localhost:5000/app:1", "localhost:5000/app:1"),
        ("registry.lan:5000/a/b:1@" + DIGEST, "registry.lan:5000/a/b:1@" + DIGEST),
    ],
)
def test_names_are_expanded_as_docker_expands_them(text: str, expanded: str) -> None:
    assert str(ref(text)) == expanded


@pytest.mark.parametrize("text", ["", "UPPER/case", "app:bad tag", "app@sha256:short", "a" * 600, "docker.io/"])
def test_what_is_not_a_reference_is_refused(text: str) -> None:
    with pytest.raises(IdentityError):
        parse_docker_reference(text)


def test_match_repo_digest_or_exact_the_default() -> None:
    rule = SignedIdentity("matchRepoDigestOrExact")
    by_digest = DockerReference("docker.io/team/app", None, DIGEST)
    assert accepts(rule, by_digest, ref("docker.io/team/app")) is None
    assert (
        accepts(rule, by_digest, ref("docker.io/team/other"))
        == "the signature is for another repository (docker.io/team/other)"
    )
    by_tag = DockerReference("docker.io/team/app", "v1", None)
    assert accepts(rule, by_tag, ref("docker.io/team/app:v1")) is None
    assert accepts(rule, by_tag, ref("docker.io/team/app:v2")) is not None
    assert accepts(rule, by_tag, ref("docker.io/team/app")) is not None  # cosign's claim: no tag


def test_match_exact_and_match_repository() -> None:
    by_tag = DockerReference("docker.io/team/app", "v1", None)
    assert accepts(SignedIdentity("matchExact"), by_tag, ref("team/app:v1")) is None
    assert accepts(SignedIdentity("matchExact"), DockerReference("docker.io/team/app"), ref("team/app")) is not None
    assert accepts(SignedIdentity("matchRepository"), by_tag, ref("docker.io/team/app")) is None
    assert accepts(SignedIdentity("matchRepository"), by_tag, ref("docker.io/team/app2")) is not None


def test_exact_reference_and_exact_repository() -> None:
    image = DockerReference("mirror.lan/team/app", "v1", None)
    exact = SignedIdentity("exactReference", docker_reference="docker.io/team/app:v1")
    assert accepts(exact, image, ref("docker.io/team/app:v1")) is None
    assert accepts(exact, image, ref("docker.io/team/app:v2")) is not None
    repository = SignedIdentity("exactRepository", docker_repository="docker.io/team/app")
    assert accepts(repository, image, ref("docker.io/team/app:anything")) is None
    assert accepts(repository, image, ref("docker.io/team/other")) is not None


def test_remap_identity_replaces_the_prefix_then_matches() -> None:
    rule = SignedIdentity("remapIdentity", prefix="docker.io/team", signed_prefix="quay.io/upstream")
    image = DockerReference("docker.io/team/app", None, DIGEST)
    assert accepts(rule, image, ref("quay.io/upstream/app")) is None
    assert accepts(rule, image, ref("docker.io/team/app")) is not None
    # A prefix matches whole path components only: docker.io/teamx is not under docker.io/team.
    other = DockerReference("docker.io/teamx/app", None, DIGEST)
    assert accepts(rule, other, ref("quay.io/upstreamx/app")) is not None
    assert accepts(rule, other, ref("docker.io/teamx/app")) is None
