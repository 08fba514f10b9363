"""The request id that follows a pull through edge, regional mirror and upstream (`X-Request-Id`)."""

from __future__ import annotations

import itertools
import re
import secrets
from contextvars import ContextVar

HEADER = "X-Request-Id"
# Taken from the client when it is a sane token; else made here.
_VALID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_PREFIX = secrets.token_hex(4)
_COUNTER = itertools.count(1)

# The id of the request being served; downloads started for it carry it too (a task copies its context).
current: ContextVar[str | None] = ContextVar("request_id", default=None)


def make() -> str:
    """A new id: this process's random prefix and a counter (cheaper than a UUID on the hot path)."""
    return f"{_PREFIX}-{next(_COUNTER):x}"


def accept(value: str | None) -> str:
    """The client's id if it is a sane token, else a new one."""
    if value is not None and _VALID.fullmatch(value):
        return value
    return make()
