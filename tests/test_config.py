"""Config loading and the command line: defaults, overrides, and errors that name the key."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mirror.config import ConfigError, UpstreamConfig, from_dict, load, parse_duration, restart_keys


def test_defaults() -> None:
    config = load(None)
    assert config.listen == "0.0.0.0:5000"
    assert config.upstreams["docker.io"].url == "https://registry-1.docker.io"
    assert config.cache.tag_ttl == 60


def test_example_config_loads() -> None:
    config = load(Path(__file__).parent.parent / "config.example.toml")
    assert config.server.default_upstream == "docker.io"


def test_password_is_masked() -> None:
    config = from_dict(
        {"upstreams": {"docker.io": {"url": "https://r.example", "username": "u", "password": "s3cret"}}}
    )
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("text", "seconds"), [("60s", 60), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), (30, 30), ("0s", 0)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "k") == seconds


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"cache": {"tag_ttl": "soon"}}, "cache.tag_ttl"),
        ({"server": {"listen": "nope"}}, "server.listen"),
        ({"server": {"lisen": "0.0.0.0:1"}}, "server.lisen"),
        ({"upstreams": {"docker.io": {"url": "ftp://x"}}}, "upstreams.docker.io.url"),
        ({"upstreams": {"docker.io": {}}}, "upstreams.docker.io.url"),
        ({"upstreams": {"docker.io": {"url": "https://x", "username": "u"}}}, "upstreams.docker.io.password"),
        ({"server": {"default_upstream": "ghcr.io"}}, "server.default_upstream"),
        ({"cache": {"directory": 5}}, "cache.directory"),
    ],
)
def test_errors_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        from_dict(data)
    assert error.value.key == key


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[cache]\ntag_ttl = "forever"\n')
    result = subprocess.run(
        [sys.executable, "-m", "mirror", "serve", "--config", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "cache.tag_ttl" in lines[0]


def test_leftover_temp_files_are_swept_at_start(tmp_path: Path) -> None:
    from support import MirrorProcess

    process = MirrorProcess(tmp_path / "m", {"docker.io": "http://127.0.0.1:9"})
    (process.cache_dir / "tmp").mkdir(parents=True)
    leftover = process.cache_dir / "tmp" / "abc.partial"
    leftover.write_bytes(b"half a blob")
    process.start()
    try:
        assert not leftover.exists()
    finally:
        process.stop()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[cache]\ntag_ttl = "60s"\n[upstreams."ghcr.io"]\nurl = "https://ghcr.io"\n')
    env = {
        "MIRROR_CACHE_TAG_TTL": "5m",
        "MIRROR_CACHE_MAX_SIZE": "1GiB",
        "MIRROR_SERVER_LISTEN": "127.0.0.1:6000",
        "MIRROR_SERVER_DEFAULT_UPSTREAM": "ghcr.io",
        "MIRROR_UPSTREAM_GHCR_IO_USERNAME": "bot",
        "MIRROR_UPSTREAM_GHCR_IO_PASSWORD": "token",
        "MIRROR_LOG_FORMAT": "json",
    }
    config = load(path, env=env)
    assert config.cache.tag_ttl == 300
    assert config.cache.max_size == 1 << 30
    assert config.listen == "127.0.0.1:6000"
    assert config.upstreams["ghcr.io"].username == "bot"
    assert config.upstreams["ghcr.io"].password == "token"
    assert config.log.format == "json"
    # Command-line flags win over both.
    assert load(path, env=env, listen="0.0.0.0:7000").listen == "0.0.0.0:7000"


def test_environment_credentials_for_the_default_upstream() -> None:
    config = load(None, env={"MIRROR_UPSTREAM_DOCKER_IO_USERNAME": "u", "MIRROR_UPSTREAM_DOCKER_IO_PASSWORD": "p"})
    assert config.upstreams["docker.io"].username == "u"
    assert config.upstreams["docker.io"].url == "https://registry-1.docker.io"


def test_bad_environment_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as error:
        load(None, env={"MIRROR_CACHE_TAG_TTL": "soon"})
    assert error.value.key == "cache.tag_ttl"


def test_config_command_prints_the_effective_config_masked(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[upstreams."ghcr.io"]\nurl = "https://ghcr.io"\nusername = "bot"\npassword = "s3cret"\n')
    result = subprocess.run(
        [sys.executable, "-m", "mirror", "config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MIRROR_CACHE_TAG_TTL": "2m", "MIRROR_SERVER_DEFAULT_UPSTREAM": "ghcr.io"},
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    printed = tomllib.loads(result.stdout)
    assert printed["upstreams"]["ghcr.io"]["password"] == "***"
    assert printed["cache"]["tag_ttl"] == 120
    # What it prints loads back as the same config (but for the masked secret).
    again = from_dict(printed)
    env = {"MIRROR_CACHE_TAG_TTL": "2m", "MIRROR_SERVER_DEFAULT_UPSTREAM": "ghcr.io"}
    assert again.cache == load(path, env=env).cache
    assert again.upstreams["ghcr.io"].username == "bot"


@pytest.mark.parametrize(
    ("text", "bits"),
    [("200Mbit", 200_000_000), ("1Gbit", 10**9), ("500 kbit", 500_000), ("25MB/s", 200_000_000), ("1MiB/s", 8 << 20)],
)
def test_bandwidth_rates(text: str, bits: int) -> None:
    config = from_dict({"upstreams": {"docker.io": {"url": "https://r.example", "max_bandwidth": text}}})
    assert config.upstreams["docker.io"].max_bandwidth == bits


def test_download_engine_settings_from_the_environment() -> None:
    env = {
        "MIRROR_UPSTREAM_DOCKER_IO_MAX_CONNECTIONS": "4",
        "MIRROR_UPSTREAM_DOCKER_IO_MAX_CONNECTIONS_PER_BLOB": "1",
        "MIRROR_UPSTREAM_DOCKER_IO_PARALLEL_THRESHOLD": "1GiB",
        "MIRROR_UPSTREAM_DOCKER_IO_MAX_BANDWIDTH": "50Mbit",
        "MIRROR_SERVER_DRAIN_TIMEOUT": "2m",
    }
    config = load(None, env=env)
    upstream = config.upstreams["docker.io"]
    assert (upstream.max_connections, upstream.max_connections_per_blob) == (4, 1)
    assert (upstream.parallel_threshold, upstream.max_bandwidth) == (1 << 30, 50_000_000)
    assert config.server.drain_timeout == 120


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_connections", 0), ("max_connections_per_blob", "many"), ("max_bandwidth", "fast"), ("max_bandwidth", 5)],
)
def test_download_engine_errors_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as error:
        from_dict({"upstreams": {"docker.io": {"url": "https://r.example", key: value}}})
    assert error.value.key == f"upstreams.docker.io.{key}"


def test_negative_ttl() -> None:
    assert load(None, env={}).cache.negative_ttl == 30
    assert load(None, env={"MIRROR_CACHE_NEGATIVE_TTL": "0s"}).cache.negative_ttl == 0
    with pytest.raises(ConfigError) as error:
        from_dict({"cache": {"negative_ttl": "never"}})
    assert error.value.key == "cache.negative_ttl"


def test_tiers_and_offline_settings(tmp_path: Path) -> None:
    password = tmp_path / "regional.password"
    password.write_text("r3gional\n")
    config = from_dict(
        {
            "server": {"offline": True},
            "upstreams": {
                "docker.io": {
                    "url": "https://artifactory.corp/artifactory/api/docker/remote/",
                    "repository_prefix": "dockerhub-proxy",
                    "mirrors": [
                        "http://regional.corp:5000",
                        {"url": "https://regional-b.corp", "username": "edge", "password_file": str(password)},
                    ],
                    "mirrors_only": True,
                }
            },
        }
    )
    upstream = config.upstreams["docker.io"]
    assert config.server.offline
    assert upstream.url == "https://artifactory.corp/artifactory/api/docker/remote"
    assert upstream.repository_prefix == "dockerhub-proxy"
    assert [m.url for m in upstream.mirrors] == ["http://regional.corp:5000", "https://regional-b.corp"]
    assert upstream.mirrors[1].password == "r3gional" and "r3gional" not in repr(upstream)
    assert upstream.mirrors_only and not upstream.offline
    env = load(None, env={"MIRROR_SERVER_OFFLINE": "true", "MIRROR_UPSTREAM_DOCKER_IO_OFFLINE": "1"})
    assert env.server.offline and env.upstreams["docker.io"].offline


@pytest.mark.parametrize(
    ("upstream", "key"),
    [
        ({"url": "https://r.example/v2"}, "upstreams.docker.io.url"),
        ({"url": "https://r.example?x=1"}, "upstreams.docker.io.url"),
        ({"url": "https://r.example", "mirrors_only": True}, "upstreams.docker.io.mirrors_only"),
        ({"url": "https://r.example", "mirrors": "http://m"}, "upstreams.docker.io.mirrors"),
        ({"url": "https://r.example", "mirrors": ["ftp://m"]}, "upstreams.docker.io.mirrors[0].url"),
        (
            {"url": "https://r.example", "mirrors": [{"url": "http://m", "colour": 1}]},
            "upstreams.docker.io.mirrors[0].colour",
        ),
        ({"url": "https://r.example", "repository_prefix": "Bad Prefix"}, "upstreams.docker.io.repository_prefix"),
        ({"url": "https://r.example", "offline": "sometimes"}, "upstreams.docker.io.offline"),
    ],
)
def test_tier_errors_name_the_key(upstream: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        from_dict({"upstreams": {"docker.io": upstream}})
    assert error.value.key == key


def test_config_command_shows_the_mirrors_masked(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[upstreams."docker.io"]\nurl = "https://registry-1.docker.io"\n'
        '[[upstreams."docker.io".mirrors]]\nurl = "https://regional.corp"\nusername = "edge"\npassword = "s3cret"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "mirror", "config", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    printed = tomllib.loads(result.stdout)
    assert printed["upstreams"]["docker.io"]["mirrors"] == [
        {"url": "https://regional.corp", "username": "edge", "password": "***"}
    ]


def test_fleet_settings(tmp_path: Path) -> None:
    secret = tmp_path / "fleet-secret"
    secret.write_text("0123456789abcdef0123\n")
    fleet = {"redis": "redis://:r3dis@redis.corp:6379/0", "peer_url": "http://m2:5000/", "secret_file": str(secret)}
    config = from_dict({"fleet": fleet})
    assert config.fleet is not None
    assert (config.fleet.peer_url, config.fleet.secret, config.fleet.heartbeat) == (
        "http://m2:5000",
        "0123456789abcdef0123",
        2.0,
    )
    assert "r3dis" not in repr(config.fleet) and "0123456789" not in repr(config.fleet)
    assert from_dict({}).fleet is None
    for bad, key in (
        ({**fleet, "redis": "http://x"}, "fleet.redis"),
        ({**fleet, "secret_file": None, "secret": "short"}, "fleet.secret"),
        ({**fleet, "heartbeat": "5s", "lease_ttl": "10s"}, "fleet.lease_ttl"),
        ({**fleet, "peer_url": "m2:5000"}, "fleet.peer_url"),
    ):
        data = {k: v for k, v in bad.items() if v is not None}
        with pytest.raises(ConfigError) as error:
            from_dict({"fleet": data})
        assert error.value.key == key


def test_restart_keys_come_from_the_declaration() -> None:
    old = from_dict({"upstreams": {"docker.io": {"url": "https://a.example", "mirrors": ["http://m1"]}}})
    mirror = {"url": "http://m1", "username": "edge", "password": "p"}  # a mirror's login changes in place
    new = from_dict(
        {
            "server": {"listen": "0.0.0.0:6000"},
            "cache": {"tag_ttl": "5m"},
            "upstreams": {"docker.io": {"url": "https://b.example", "mirrors": [mirror]}},
        }
    )
    assert restart_keys(old, new) == ["server.listen"]
    assert restart_keys(old.upstreams["docker.io"], new.upstreams["docker.io"], 'upstreams."docker.io"') == [
        'upstreams."docker.io".url'
    ]
    assert restart_keys(new, new) == []


def test_config_tables_are_built_by_keyword_only() -> None:
    with pytest.raises(TypeError):
        UpstreamConfig("docker.io", "https://r.example")  # type: ignore[call-arg]  # positional: refused, as meant
