"""The one way a test reaches an external command: `tool(name)`, declared in scripts/tools.toml.

A tool missing from this machine, or not declared for the running suite, fails the test with the
Debian package and the `scripts/install-deps` mode that brings it. `audit_subprocesses()` (installed
by conftest.py) fails any test that starts a command some other way, so a tool only one suite's
machine happens to have cannot hide again.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tomllib
from functools import cache
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DECLARATION = REPO / "scripts" / "tools.toml"
# Code whose subprocesses are checked: the tests and the benchmark parts they use.
CHECKED = (REPO / "tests", REPO / "bench")

_handed_out: set[str] = set()


class UndeclaredTool(RuntimeError):
    """A test started a command that did not come from tool()."""


def suite() -> str:
    """The running suite: scripts/e2e marks its run with MIRROR_E2E, everything else is `test`."""
    return "e2e" if os.environ.get("MIRROR_E2E") else "test"


@cache
def declared() -> dict[str, dict[str, Any]]:
    with open(DECLARATION, "rb") as file:
        tools: dict[str, dict[str, Any]] = tomllib.load(file)["tools"]
    return tools


def _locate(name: str, entry: dict[str, Any]) -> str | None:
    """Where the declared tool is on this machine, or None."""
    path = shutil.which(name) or next((p for p in entry.get("paths", []) if os.access(p, os.X_OK)), None)
    return None if path is None else os.path.abspath(path)


def tool(name: str) -> str:
    """The absolute path of `name`, declared for this suite in scripts/tools.toml."""
    entry = declared().get(name)
    running = suite()
    if entry is None or running not in entry["suites"]:
        pytest.fail(
            f"{name} is not declared for the {running} suite: add it to {DECLARATION.relative_to(REPO)} "
            f"(its Debian package and suites) so that scripts/install-deps {running} installs it",
            pytrace=False,
        )
    path = _locate(name, entry)
    if path is None:
        pytest.fail(
            f"{name} is missing: Debian package {entry['package']}, installed by `scripts/install-deps {running}`",
            pytrace=False,
        )
    _handed_out.add(path)
    return path


def missing_for_suite() -> list[str]:
    """The tools declared for the running suite that this machine lacks, each with its package."""
    running = suite()
    return [
        f"{name} ({entry['package']})"
        for name, entry in declared().items()
        if running in entry["suites"] and _locate(name, entry) is None
    ]


def _ours(executable: str) -> bool:
    """tool()'s answers, the run's interpreter, its virtualenv's commands (mirror) and scripts/."""
    path = Path(os.path.abspath(executable))
    if str(path) in _handed_out or path == Path(os.path.abspath(sys.executable)):
        return True
    return path.parent in (Path(sys.prefix) / "bin", REPO / "scripts")


def _started_by_checked_code() -> bool:
    """Whether the nearest caller outside the standard library is a test or a benchmark part."""
    stdlib = sysconfig.get_paths()["stdlib"]
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(stdlib) and filename != __file__ and not filename.startswith("<"):
            return any(Path(filename).is_relative_to(root) for root in CHECKED)
        frame = frame.f_back
    return False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "subprocess.Popen":
        return
    executable, argv = args[0], args[1]
    if executable is None:
        executable = argv if isinstance(argv, (str, bytes, os.PathLike)) else argv[0]
    executable = os.fsdecode(executable)
    if _ours(executable) or not _started_by_checked_code():
        return
    raise UndeclaredTool(
        f"a test started {executable!r} directly: reach external commands through tests/tools.py's "
        f"tool({os.path.basename(executable)!r}), declared in {DECLARATION.relative_to(REPO)}"
    )


def audit_subprocesses() -> None:
    """Fail every later subprocess a test starts without tool() (an audit hook stays for the run)."""
    sys.addaudithook(_audit)
