"""Which config file every command reads: `--config FILE` before the command or anywhere after it,
else MIRROR_CONFIG, else /etc/mirror/config.toml when it exists, else the built-in defaults."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mirror.commands.configfile import CONFIG_VARIABLE, DEFAULT_CONFIG, config_path
from mirror.commands.main import build_parser

# The words each command needs besides --config; a command the CLI has and this lacks fails the test.
NEEDS = {
    "serve": [],
    "client-config": ["docker", "--url", "http://mirror.lan:5000"],
    "config": [],
    "ls": [],
    "gc": [],
    "verify": [],
    "stats": [],
    "prefetch": ["alpine:3.19"],
    "rm": ["alpine:3.19"],
    "pin": ["alpine:3.19"],
    "unpin": ["alpine:3.19"],
    "credentials": ["keys"],
    "doctor": [],
    "export": ["alpine:3.19", "-o", "images.tar"],
    "import": ["images.tar"],
    "history": ["alpine:3.19"],
    "tag": ["accept", "alpine:3.19"],
}
CREDENTIALS = {
    "issue": ["--user", "ci"],
    "revoke": ["some-jti"],
    "rotate": [],
    "drop": ["some-kid"],
    "keys": [],
}


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def parsed_config(argv: list[str]) -> Path | None:
    config: Path | None = build_parser().parse_args(argv).config
    return config


def test_every_command_takes_config_before_it_and_anywhere_after_it() -> None:
    assert set(commands(build_parser())) == set(NEEDS), "add the new command to NEEDS"
    file = Path("/srv/mirror.toml")
    for command, words in NEEDS.items():
        assert parsed_config([command, *words]) is None, command
        assert parsed_config(["--config", str(file), command, *words]) == file, command
        assert parsed_config([command, "--config", str(file), *words]) == file, command
        assert parsed_config([command, *words, "--config", str(file)]) == file, command
        assert parsed_config(["--config", "/elsewhere.toml", command, *words, "--config", str(file)]) == file


def test_every_credentials_action_takes_config_anywhere() -> None:
    assert set(commands(commands(build_parser())["credentials"])) == set(CREDENTIALS)
    file = Path("/srv/mirror.toml")
    for action, words in CREDENTIALS.items():
        assert parsed_config(["--config", str(file), "credentials", action, *words]) == file
        assert parsed_config(["credentials", "--config", str(file), action, *words]) == file
        assert parsed_config(["credentials", action, *words, "--config", str(file)]) == file


def test_the_file_is_the_flag_then_the_variable_then_the_default_when_it_exists(tmp_path: Path) -> None:
    default = tmp_path / "etc" / "config.toml"
    flag, named = tmp_path / "flag.toml", tmp_path / "named.toml"
    assert config_path(None, {}, default) is None, "no file: the built-in defaults"
    default.parent.mkdir()
    default.write_text("")
    assert config_path(None, {}, default) == default
    assert config_path(None, {CONFIG_VARIABLE: str(named)}, default) == named, "named even if it does not exist"
    assert config_path(None, {CONFIG_VARIABLE: ""}, default) == default, "set empty: as if unset"
    assert config_path(flag, {CONFIG_VARIABLE: str(named)}, default) == flag
    assert str(DEFAULT_CONFIG) == "/etc/mirror/config.toml", "where the README, the unit and the image keep it"


def mirror_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != CONFIG_VARIABLE} | (env or {})
    argv = [sys.executable, "-m", "mirror", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=environment)


def test_mirror_config_names_the_file_it_read_from_the_variable(tmp_path: Path) -> None:
    named, flag = tmp_path / "named.toml", tmp_path / "flag.toml"
    named.write_text('[cache]\ntag_ttl = "7m"\n')
    flag.write_text('[cache]\ntag_ttl = "9m"\n')
    shown = mirror_cli("config", env={CONFIG_VARIABLE: str(named)})
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr == "", "MIRROR_CONFIG is no unknown setting"
    assert shown.stdout.startswith(f"# config: loaded from {named}\n")
    assert tomllib.loads(shown.stdout)["cache"]["tag_ttl"] == 420
    flagged = mirror_cli("config", "--config", str(flag), env={CONFIG_VARIABLE: str(named)})
    assert flagged.stdout.startswith(f"# config: loaded from {flag}\n"), "the flag wins"
    assert tomllib.loads(flagged.stdout)["cache"]["tag_ttl"] == 540
    missing = mirror_cli("config", env={CONFIG_VARIABLE: str(tmp_path / "nothing.toml")})
    assert missing.returncode == 2 and f"{tmp_path / 'nothing.toml'}" in missing.stderr, "named, so it must be there"


@pytest.mark.skipif(DEFAULT_CONFIG.exists(), reason=f"this host has a {DEFAULT_CONFIG}")
def test_mirror_config_without_a_file_says_it_runs_on_the_defaults() -> None:
    shown = mirror_cli("config")
    assert shown.returncode == 0, shown.stderr
    first = shown.stdout.splitlines()[0]
    assert first == f"# config: built-in defaults (no --config, ${CONFIG_VARIABLE} or {DEFAULT_CONFIG})"


def test_ls_reads_the_variable_and_the_flag_on_either_side(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text(f'[cache]\ndirectory = "{tmp_path / "nothing"}"\n')
    said = f"mirror ls: no cache at {tmp_path / 'nothing'}\n"
    for argv, env in [
        (["ls", "--config", str(file)], {}),
        (["--config", str(file), "ls"], {}),
        (["ls"], {CONFIG_VARIABLE: str(file)}),
    ]:
        listed = mirror_cli(*argv, env=env)
        assert (listed.returncode, listed.stderr) == (1, said), argv


def test_credentials_issue_takes_config_after_its_options(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text(f'[auth]\nlogin_keys = "{tmp_path / "login-keys.json"}"\n')
    issued = mirror_cli("credentials", "issue", "--user", "ci", "--ttl", "1h", "--config", str(file))
    assert issued.returncode == 0, issued.stderr
    assert issued.stdout.startswith("username: ci\npassword: ")
    listed = mirror_cli("credentials", "keys", env={CONFIG_VARIABLE: str(file)})
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 1, listed.stderr
