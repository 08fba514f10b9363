"""Repository patterns: `*` within a component, `**` across them, matched in time linear in the name."""

from __future__ import annotations

import time

import pytest

from mirror.registry.patterns import PatternError, Patterns, TagGlobs, compile_pattern, compile_tag_glob


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("library/*", "library/alpine", True),
        ("library/*", "library/a/b", False),
        ("myorg/**", "myorg", True),
        ("myorg/**", "myorg/team/app", True),
        ("myorg/**", "myorgx/app", False),
        ("**", "any/thing/at/all", True),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/x/y/c", False),
        ("a/**/b/**/c", "a/1/b/2/3/c", True),
        ("a/**/b/**/c", "a/1/c/2/b", False),
        ("org/public-*", "org/public-app", True),
        ("org/*-app", "org/app", False),
        ("org/*-*-*", "org/a-b", False),
        ("org/*-*-*", "org/a-b-c-d", True),
        ("docker.io/library/alpine", "docker.io/library/alpine", True),
        ("docker.io/library/alpine", "docker.io/library/alpine2", False),
    ],
)
def test_patterns_match_by_component(pattern: str, name: str, matches: bool) -> None:
    assert compile_pattern(pattern).match(name) is matches


@pytest.mark.parametrize("pattern", ["", " a", "/a", "a/", "a//b", "a/**b", "***", "a/b**"])
def test_malformed_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(PatternError):
        compile_pattern(pattern)


def test_a_pattern_of_many_stars_cannot_stall_the_server() -> None:
    """`*-*-*-*-*` against a long name of dashes took 4.6 s as a backtracking regex; now it is a scan."""
    patterns = Patterns.of(["docker.io/*-*-*-*-*-*-*-*-*-*-*x", "docker.io/**/*-*-*-*-*y"])
    names = ["docker.io/" + "-" * 240, "docker.io/" + "/".join(["a-b-c"] * 40)]
    started = time.perf_counter()
    for name in names * 100:
        assert patterns.match(name) is None
    assert time.perf_counter() - started < 1.0, "200 matches of 255-character names"


def test_tag_globs_match_whole_tags_without_regexes() -> None:
    globs = TagGlobs.of(["v*", "*.*.*"])
    assert [globs.match(tag) for tag in ("v1", "v1.2", "1.2.3", "1.2", "latest", "x.y.z-rc1")] == [
        "v*",
        "v*",
        "*.*.*",
        None,
        None,
        "*.*.*",
    ]
    assert TagGlobs.of(["latest"]).match("latest") == "latest" and TagGlobs.of(["latest"]).match("latest2") is None
    for bad in ("", "v[1]", "v?", "a/b", "x" * 129):
        with pytest.raises(PatternError):
            compile_tag_glob(bad)
    many = TagGlobs.of(["*-*-*-*-*-*-*-*-*-*-*-*x"])
    started = time.monotonic()
    assert many.match("-" * 128) is None
    assert time.monotonic() - started < 0.5  # linear in the tag, whatever the stars
