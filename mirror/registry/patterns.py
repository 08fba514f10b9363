"""Repository patterns as allow, deny and access rules write them: `library/*`, `myorg/**`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class PatternError(ValueError):
    pass


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """`*` matches within one path component, `**` across components (also none: `org/**` matches `org`)."""
    if not pattern or pattern != pattern.strip() or pattern.startswith("/") or "***" in pattern:
        raise PatternError(f"expected a repository pattern like 'library/*' or 'myorg/**', got {pattern!r}")
    out = ""
    rest = pattern
    while rest:
        if rest.startswith("/**") and (len(rest) == 3):
            out += "(?:/.*)?"
            rest = rest[3:]
        elif rest.startswith("**"):
            out += ".*"
            rest = rest[2:]
        elif rest.startswith("*"):
            out += "[^/]*"
            rest = rest[1:]
        else:
            out += re.escape(rest[0])
            rest = rest[1:]
    return re.compile(out + r"\Z")


@dataclass(frozen=True)
class Patterns:
    """A list of patterns, as written; `match` names the first that matches."""

    written: tuple[str, ...] = ()
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, written: tuple[str, ...] | list[str]) -> Patterns:
        return cls(tuple(written), tuple(compile_pattern(p) for p in written))

    def match(self, name: str) -> str | None:
        for text, compiled in zip(self.written, self._compiled, strict=True):
            if compiled.match(name):
                return text
        return None

    def __bool__(self) -> bool:
        return bool(self.written)
