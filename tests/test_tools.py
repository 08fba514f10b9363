"""External tools: one declaration (scripts/tools.toml), one way in (tools.tool), and a guard.

A test that starts a command without tool() fails, so a tool that only another suite installs
(podman once, in the e2e suite only) cannot pass here and then fail on a new machine.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tools import REPO, UndeclaredTool, declared, tool


def test_a_command_started_without_tool_fails_the_test() -> None:
    with pytest.raises(UndeclaredTool, match=r"tool\('true'\)"):
        subprocess.run(["true"], check=False)


def test_an_undeclared_tool_is_refused_with_where_to_declare_it() -> None:
    with pytest.raises(pytest.fail.Exception, match="true is not declared for the test suite: add it to scripts/tools"):
        tool("true")


def test_a_tool_of_another_suite_is_refused_here() -> None:
    assert "test" not in declared()["h2load"]["suites"]
    with pytest.raises(pytest.fail.Exception, match="h2load is not declared for the test suite"):
        tool("h2load")


def test_a_missing_tool_names_its_package_and_install_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # wrk has no fixed path: off PATH, it is missing
    with pytest.raises(pytest.fail.Exception, match=r"wrk is missing: Debian package wrk, .*install-deps test"):
        tool("wrk")


def test_a_declared_tool_runs() -> None:
    result = subprocess.run([tool("skopeo"), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("skopeo version")


def test_install_deps_lists_every_declared_package() -> None:
    for mode in ("test", "e2e", "bench"):
        listed = subprocess.run(
            [str(REPO / "scripts" / "install-deps"), "--list", mode], capture_output=True, text=True, check=True
        ).stdout.split()
        wanted = {e["package"] for e in declared().values() if mode in e["suites"] and not e.get("base")}
        assert wanted <= set(listed), (mode, wanted - set(listed))
        assert "python3-venv" in listed
