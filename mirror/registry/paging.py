"""The spec's paging of lists (tags, catalog): lexical order, `n`, `last` and the next page's start."""

from __future__ import annotations

from collections.abc import Sequence

from mirror.registry.errors import PaginationNumberInvalid

# The most entries one page holds when the client names no `n`, or a larger one.
MAX_PAGE = 10_000


def lexical(name: str) -> tuple[str, str]:
    """The spec's order, "lexical (case-insensitive alphanumeric)": case folded, then as written, so it is total."""
    return name.casefold(), name


def parse_page_size(value: str | None) -> int | None:
    """`n` as a number of entries; None when absent. Anything but a non-negative integer is a 400."""
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()):
        raise PaginationNumberInvalid(detail={"n": value[:100]})
    return int(value)


def page(names: Sequence[str], n: int | None, last: str | None) -> tuple[list[str], str | None]:
    """One page of `names` (already in lexical order): those after `last`, at most `n` (or MAX_PAGE).

    Returns the page and the `last` of the next page, or None when this page is the end.
    `n=0` is an empty page with no next.
    """
    if last:
        after = lexical(last)
        names = [name for name in names if lexical(name) > after]
    else:
        names = list(names)
    size = MAX_PAGE if n is None else min(n, MAX_PAGE)
    if size == 0:
        return [], None
    chosen = names[:size]
    more = len(names) > size
    return chosen, chosen[-1] if more else None
