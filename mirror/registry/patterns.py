"""Repository patterns as allow, deny, access rules and credentials write them: `library/*`, `myorg/**`.

Matched segment by segment, without regular expressions: `*` within one path component,
`**` (a whole component) across any number of them. Each literal run is found leftmost with
`str.find`, which is all a pattern of stars needs, so a match costs time linear in the name
whatever the pattern (`docker.io/*-*-*-*-*` once let one request hold the event loop 4.6 s).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PatternError(ValueError):
    pass


_USAGE = "expected a repository pattern like 'library/*' or 'myorg/**'"


@dataclass(frozen=True, slots=True)
class _Glob:
    """One path component's pattern: literal parts between `*`s (one part: no star)."""

    parts: tuple[str, ...]

    def match(self, text: str) -> bool:
        parts = self.parts
        if len(parts) == 1:
            return text == parts[0]
        first, last = parts[0], parts[-1]
        if len(text) < len(first) + len(last) or not text.startswith(first) or not text.endswith(last):
            return False
        at, end = len(first), len(text) - len(last)
        for part in parts[1:-1]:
            found = text.find(part, at, end)
            if found < 0:
                return False
            at = found + len(part)
        return True


@dataclass(frozen=True, slots=True)
class Pattern:
    """A compiled pattern: runs of component globs, with any number of components between runs."""

    written: str
    runs: tuple[tuple[_Glob, ...], ...]  # split at each `**`: one run means no `**`

    def match(self, name: str) -> bool:
        segments = name.split("/")
        runs = self.runs
        if len(runs) == 1:
            return len(segments) == len(runs[0]) and _matches_at(runs[0], segments, 0)
        first, last = runs[0], runs[-1]
        if len(segments) < len(first) + len(last):
            return False
        if not _matches_at(first, segments, 0) or not _matches_at(last, segments, len(segments) - len(last)):
            return False
        at, end = len(first), len(segments) - len(last)
        for run in runs[1:-1]:
            found = next((i for i in range(at, end - len(run) + 1) if _matches_at(run, segments, i)), None)
            if found is None:
                return False
            at = found + len(run)
        return True


def _matches_at(run: tuple[_Glob, ...], segments: list[str], start: int) -> bool:
    return all(glob.match(segments[start + i]) for i, glob in enumerate(run))


def compile_pattern(pattern: str) -> Pattern:
    """`*` matches within one path component, `**` across components (also none: `org/**` matches `org`)."""
    if not pattern or pattern != pattern.strip() or pattern.startswith("/") or pattern.endswith("/"):
        raise PatternError(f"{_USAGE}, got {pattern!r}")
    runs: list[list[_Glob]] = [[]]
    for segment in pattern.split("/"):
        if segment == "**":
            runs.append([])
        elif not segment or "**" in segment:
            raise PatternError(f"{_USAGE} (** stands alone between slashes), got {pattern!r}")
        else:
            runs[-1].append(_Glob(tuple(segment.split("*"))))
    return Pattern(pattern, tuple(tuple(run) for run in runs))


@dataclass(frozen=True)
class Patterns:
    """A list of patterns, as written; `match` names the first that matches."""

    written: tuple[str, ...] = ()
    _compiled: tuple[Pattern, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, written: tuple[str, ...] | list[str]) -> Patterns:
        return cls(tuple(written), tuple(compile_pattern(p) for p in written))

    def match(self, name: str) -> str | None:
        for compiled in self._compiled:
            if compiled.match(name):
                return compiled.written
        return None

    def __bool__(self) -> bool:
        return bool(self.written)


_TAG_GLOB_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-*")


def compile_tag_glob(text: str) -> _Glob:
    """A tag glob (`v*`, `*.*.*`): tag characters and `*` (any run of them), up to 128."""
    if not text or len(text) > 128 or not set(text) <= _TAG_GLOB_CHARS:
        raise PatternError(f"expected a tag glob like 'v*' or '*.*.*', got {text[:140]!r}")
    return _Glob(tuple(text.split("*")))


@dataclass(frozen=True)
class TagGlobs:
    """Tag globs, matched without regular expressions (each literal run found with `str.find`)."""

    globs: tuple[tuple[str, _Glob], ...] = field(default=())

    @classmethod
    def of(cls, texts: tuple[str, ...] | list[str]) -> TagGlobs:
        return cls(tuple((text, compile_tag_glob(text)) for text in texts))

    def match(self, tag: str) -> str | None:
        """The first glob the tag matches, as written; None when none does."""
        return next((text for text, glob in self.globs if glob.match(tag)), None)
