"""`mirror doctor`: the operator's check before the first client (in the spirit of `brew doctor`).

One line per check, each failure with what to do; exit 1 if any failed. It reads what the
service would read, as the service's user would (the cache directory's owner), and asks each
upstream what a first pull would: DNS, TCP, TLS, `/v2/` and its challenge, the login.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
import stat
import sys
import tomllib
from pathlib import Path

import httpx

from mirror.commands.changes import local_url
from mirror.commands.configfile import add_config_option, config_source
from mirror.config import Config, ConfigError, apply_env, load, with_credentials_directory
from mirror.config.environment import UNIT_CREDENTIALS
from mirror.upstream.probe import CLOCK_SKEW, Check, Probe, probe

# Keys that name a file the service reads (or, for login_keys, writes).
FILE_KEYS = frozenset(
    {
        "htpasswd",
        "admin_htpasswd",
        "login_keys",
        "password_file",
        "proxy_password_file",
        "secret_file",
        "redis_password_file",
        "ca_file",
        "client_cert",
        "client_key",
        "tls_cert",
        "tls_key",
    }
)
SHOWN = 5  # files named in a failure, at most


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = commands.add_parser("doctor", help="check a set-up before the first client: config, files, upstreams")
    add_config_option(doctor)


def run(args: argparse.Namespace) -> int:
    checks: list[Check] = []
    env = dict(os.environ)
    try:
        config = load(args.config, env=env)
    except ConfigError as exc:
        checks.append(Check("config", False, str(exc)))
        return _report(checks)
    checks.append(Check("config", True, config_source(args.config)))
    owner = _cache(config, checks)
    checks += _files(args.config, env, owner)
    results = asyncio.run(_upstreams(config))
    skews = []
    for result in results:
        checks += result.checks
        if result.skew is not None:
            skews.append(result.skew)
    checks.append(_clock(skews))
    checks.append(_listen(config))
    return _report(checks)


def _report(checks: list[Check]) -> int:
    for check in checks:
        sys.stdout.write(f"{'ok  ' if check.ok else 'FAIL'}  {check.what}: {check.detail}\n")
    failed = sum(not check.ok for check in checks)
    sys.stdout.write(f"{failed} of {len(checks)} checks failed\n" if failed else f"all {len(checks)} checks passed\n")
    return 1 if failed else 0


def _cache(config: Config, checks: list[Check]) -> tuple[int, int] | None:
    """The cache directory and who owns everything in it; its owner (uid, gid) is the service's user."""
    directory = config.cache.directory
    if not directory.exists():
        checks.append(Check("cache", True, f"{directory} does not exist yet: `mirror serve` makes it"))
        return None
    top = directory.stat()
    others: list[Path] = []
    count = 0
    for root, names, files in os.walk(directory):
        for name in [*names, *files]:
            count += 1
            path = Path(root) / name
            if path.lstat().st_uid != top.st_uid:
                others.append(path)
    if others:
        shown = ", ".join(str(path) for path in others[:SHOWN])
        checks.append(
            Check(
                "cache",
                False,
                f"{len(others)} of {count} files in {directory} belong to another user than the directory's "
                f"owner (uid {top.st_uid}), so the service may not read them: {shown}. Fix: "
                f"chown -R {top.st_uid}:{top.st_gid} {directory} (mirror's commands run as root make their "
                "files the owner's)",
            )
        )
    else:
        checks.append(Check("cache", True, f"{directory} and its {count} files belong to uid {top.st_uid}"))
    return top.st_uid, top.st_gid


def _files(path: Path | None, env: dict[str, str], owner: tuple[int, int] | None) -> list[Check]:
    """Each file the config names, readable by the service's user (the cache's owner)."""
    if path is None:
        return []
    data = with_credentials_directory(apply_env(tomllib.loads(path.read_text()), env), env)
    checks = []
    for key, value in _file_keys(data):
        file = Path(value)
        what = f"file {key}"
        if value.startswith(UNIT_CREDENTIALS + "/") and not file.exists():
            checks.append(Check(what, True, f"{file}: the unit's LoadCredential= provides it while it runs"))
        elif not file.exists():
            checks.append(Check(what, False, f"{file} does not exist"))
        elif owner is not None and not _readable_by(file, *owner):
            checks.append(
                Check(
                    what,
                    False,
                    f"{file} cannot be read by the service's user (uid {owner[0]}): under the systemd unit, "
                    f'give it with LoadCredential= and name it "$CREDENTIALS_DIRECTORY/{file.name}"',
                )
            )
        else:
            checks.append(Check(what, True, f"{file} is readable" + (" by the service's user" if owner else "")))
    return checks


def _file_keys(data: object, prefix: str = "") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key in FILE_KEYS and isinstance(value, str):
                found.append((name, value))
            else:
                found += _file_keys(value, name)
    elif isinstance(data, list):
        for number, value in enumerate(data):
            found += _file_keys(value, f"{prefix}[{number}]")
    return found


def _readable_by(file: Path, uid: int, gid: int) -> bool:
    """Whether `uid` (group `gid`) may read `file`: its mode, and every directory above it searchable."""
    if uid == 0:
        return True

    def allows(path: Path, owner_bit: int, group_bit: int, other_bit: int) -> bool:
        info = path.stat()
        if info.st_uid == uid:
            return bool(info.st_mode & owner_bit)
        return bool(info.st_mode & (group_bit if info.st_gid == gid else other_bit))

    absolute = file.absolute()
    parents_ok = all(allows(parent, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH) for parent in absolute.parents)
    return parents_ok and allows(absolute, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


async def _upstreams(config: Config) -> list[Probe]:
    return list(
        await asyncio.gather(
            *(probe(u, config.proxy_env, offline=config.server.offline) for u in config.upstreams.values())
        )
    )


def _clock(skews: list[float]) -> Check:
    if not skews:
        return Check("clock", True, "no upstream answered with its time: not compared")
    worst = max(skews, key=abs)
    if abs(worst) > CLOCK_SKEW:
        return Check(
            "clock",
            False,
            f"this host's clock is {abs(worst):.0f} s {'behind' if worst > 0 else 'ahead of'} the "
            "upstream's: tokens and certificates fail at such offsets; set up NTP (systemd-timesyncd, chrony)",
        )
    return Check("clock", True, f"within {abs(worst):.0f} s of the upstreams'")


def _listen(config: Config) -> Check:
    host, port = config.server.host, config.server.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return Check("listen", False, f"cannot listen on {config.listen}: {exc.strerror}")
        else:
            return Check("listen", True, f"{config.listen} is free")
    try:
        answer = httpx.get(local_url(config, "/healthz"), timeout=2, trust_env=False, verify=False)
        if answer.status_code == 200 and answer.json().get("status") == "ok":
            return Check("listen", True, f"{config.listen} is held by a running mirror (it answers /healthz)")
    except (httpx.HTTPError, ValueError):
        pass
    return Check("listen", False, f"{config.listen} is in use by another program: stop it, or set [server] listen")
