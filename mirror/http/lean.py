"""The server's libraries, imported without their command lines: 1.5 MiB resident, or 2.4.

uvicorn's package init imports its command line (`uvicorn.main`: click, the reloaders and
multiprocessing), and httpx's imports its own (`httpx._main`: click, then pygments and rich
where they happen to be installed, as pytest installs pygments). `mirror serve` runs neither.
Idle RSS with the bench's config, Debian's Python 3.11.2: 40.2 → 38.7 MiB with the server's
packages alone, 41.3 → 38.8 MiB in the developer's venv.

`mirror serve` calls this before anything imports either library. Everything else about them
is their own: `uvicorn.Config`, `uvicorn.Server` and every submodule are the real ones, and
`import uvicorn.main` afterwards loads the real command line.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from typing import NoReturn

log = logging.getLogger(__name__)


def import_without_command_lines() -> None:
    """Import httpx and uvicorn as the server uses them; a no-op for what is already imported."""
    if "httpx" not in sys.modules:
        # A None entry makes `from ._main import main` raise ImportError, which httpx's init
        # catches (its fallback for a missing CLI extra); the entry goes once httpx is in.
        sys.modules["httpx._main"] = None  # type: ignore[assignment]  # None blocks an import (the import system's rule)
        try:
            importlib.import_module("httpx")
        finally:
            del sys.modules["httpx._main"]
    if "uvicorn" not in sys.modules:
        _import_uvicorn_without_main()


def _import_uvicorn_without_main() -> None:
    stand_in = types.ModuleType("uvicorn.main", "uvicorn's command line, not loaded by `mirror serve`")
    setattr(stand_in, "__getattr__", _server_class)  # noqa: B010  # a module's __getattr__ (PEP 562)
    setattr(stand_in, "main", _not_loaded)  # noqa: B010
    setattr(stand_in, "run", _not_loaded)  # noqa: B010
    sys.modules["uvicorn.main"] = stand_in
    try:
        importlib.import_module("uvicorn")
    except ImportError as exc:
        # A uvicorn whose init asks its command line for more: import it whole, as it is.
        log.debug("uvicorn imported with its command line: %s", exc)
        sys.modules.pop("uvicorn", None)
        sys.modules.pop("uvicorn.main", None)
        importlib.import_module("uvicorn")
    finally:
        if sys.modules.get("uvicorn.main") is stand_in:
            del sys.modules["uvicorn.main"]


def _server_class(name: str) -> object:
    """`from uvicorn.main import Server` in uvicorn's init: the server, from its own module."""
    if name == "Server":
        return importlib.import_module("uvicorn.server").Server
    raise AttributeError(f"module 'uvicorn.main' has no attribute {name!r} in mirror's server")


def _not_loaded(*args: object, **kwargs: object) -> NoReturn:
    raise RuntimeError("uvicorn's command line is not loaded in mirror's server (mirror.http.lean)")
