"""Which proxy a request takes: Go's `httpproxy` rules (as Docker's daemon applies them), from a table."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from egress_parts import CertificateAuthority

from mirror.config import ConfigError, ProxyEnvironment, from_dict, load, mask_url, parse_proxy_url, render
from mirror.upstream.egress import ProxyRoute

PROXY = "http://proxy.corp:3128"
SECURE = "http://secure-proxy.corp:3129"

# (HTTP_PROXY, HTTPS_PROXY, NO_PROXY, URL, the proxy it takes or None for direct)
CASES = [
    # the scheme picks the variable
    (PROXY, SECURE, "", "http://registry.example/v2/", PROXY),
    (PROXY, SECURE, "", "https://registry.example/v2/", SECURE),
    (PROXY, None, "", "https://registry.example/v2/", None),
    (None, SECURE, "", "http://registry.example/v2/", None),
    # localhost and loopback never go through a proxy
    (PROXY, SECURE, "", "https://localhost:5000/v2/", None),
    (PROXY, SECURE, "", "https://127.0.0.1:5000/v2/", None),
    (PROXY, SECURE, "", "https://127.8.9.10/v2/", None),
    (PROXY, SECURE, "", "https://[::1]:5000/v2/", None),
    (PROXY, SECURE, "", "https://[::ffff:127.0.0.1]:5000/v2/", None),
    # "*" is everything
    (PROXY, SECURE, "*", "https://registry.example/v2/", None),
    # a bare domain matches itself and its subdomains, not a name that merely ends the same
    (PROXY, SECURE, "example.com", "https://example.com/", None),
    (PROXY, SECURE, "example.com", "https://registry.example.com/", None),
    (PROXY, SECURE, "example.com", "https://notexample.com/", SECURE),
    # a leading dot, or "*.", matches subdomains only
    (PROXY, SECURE, ".example.com", "https://example.com/", SECURE),
    (PROXY, SECURE, ".example.com", "https://a.b.example.com/", None),
    (PROXY, SECURE, "*.example.com", "https://example.com/", SECURE),
    (PROXY, SECURE, "*.example.com", "https://cdn.example.com/", None),
    # a port narrows an entry; a URL without one has its scheme's default
    (PROXY, SECURE, "example.com:8443", "https://example.com:8443/", None),
    (PROXY, SECURE, "example.com:8443", "https://example.com/", SECURE),
    (PROXY, SECURE, "example.com:443", "https://example.com/", None),
    (PROXY, SECURE, "example.com:80", "http://example.com/", None),
    (PROXY, SECURE, "example.com:", "https://example.com:8443/", None),
    (PROXY, SECURE, "example.com:²", "https://example.com/", SECURE),
    # CIDR ranges and single addresses
    (PROXY, SECURE, "10.0.0.0/8", "https://10.20.30.40/", None),
    (PROXY, SECURE, "10.0.0.0/8", "https://11.0.0.1/", SECURE),
    (PROXY, SECURE, "192.0.2.0/24", "http://192.0.2.77:5000/", None),
    (PROXY, SECURE, "192.0.2.1", "https://192.0.2.1/", None),
    (PROXY, SECURE, "192.0.2.1", "https://192.0.2.2/", SECURE),
    (PROXY, SECURE, "192.0.2.1:5000", "http://192.0.2.1:5000/", None),
    (PROXY, SECURE, "192.0.2.1:5000", "http://192.0.2.1:5001/", PROXY),
    (PROXY, SECURE, "2001:db8::1", "https://[2001:db8::1]/", None),
    (PROXY, SECURE, "[2001:db8::1]:443", "https://[2001:db8::1]/", None),
    (PROXY, SECURE, "2001:db8::/32", "https://[2001:db8::99]:5000/", None),
    # an IP entry does not match a name, nor a name entry an IP
    (PROXY, SECURE, "192.0.2.1", "https://registry.example/", SECURE),
    # lists: spaces and case do not matter, empty entries are skipped
    (PROXY, SECURE, " a.example , ,REGISTRY.Example ", "https://registry.example/", None),
    (PROXY, SECURE, "a.example,b.example", "https://c.example/", SECURE),
]


@pytest.mark.parametrize(("http", "https", "no_proxy", "url", "expected"), CASES)
def test_proxy_for(http: str | None, https: str | None, no_proxy: str, url: str, expected: str | None) -> None:
    env = ProxyEnvironment(http_proxy=http, https_proxy=https, no_proxy=no_proxy)
    assert ProxyRoute.for_upstream(None, env).proxy_for(httpx.URL(url)) == expected


def test_environment_names() -> None:
    upper = {"HTTPS_PROXY": PROXY, "https_proxy": SECURE, "no_proxy": "x.example"}
    assert ProxyEnvironment.read(upper) == ProxyEnvironment(https_proxy=PROXY, no_proxy="x.example")
    assert ProxyEnvironment.read({"http_proxy": PROXY}).http_proxy == PROXY
    # A CGI request (REQUEST_METHOD set) may carry a client's "Proxy:" header as HTTP_PROXY: ignored.
    cgi = ProxyEnvironment.read({"HTTP_PROXY": PROXY, "REQUEST_METHOD": "GET"})
    assert ProxyRoute.for_upstream(None, cgi).proxy_for(httpx.URL("http://registry.example/")) is None
    assert not ProxyEnvironment.read({"HTTP_PROXY": PROXY, "REQUEST_METHOD": ""}).cgi, "set but empty is not CGI"


def test_the_upstream_setting_overrides_the_environment() -> None:
    env = ProxyEnvironment(http_proxy=PROXY, https_proxy=PROXY, no_proxy="skip.example")
    url = httpx.URL("https://registry.example/")
    assert ProxyRoute.for_upstream(SECURE, env).proxy_for(url) == SECURE
    assert ProxyRoute.for_upstream(SECURE, env).proxy_for(httpx.URL("http://registry.example/")) == SECURE
    assert ProxyRoute.for_upstream("", env).proxy_for(url) is None, '"" means direct'
    # The environment's NO_PROXY does not undo a proxy set for this upstream; loopback stays direct.
    assert ProxyRoute.for_upstream(SECURE, env).proxy_for(httpx.URL("https://skip.example/")) == SECURE
    assert ProxyRoute.for_upstream(SECURE, ProxyEnvironment(no_proxy="*")).proxy_for(url) == SECURE
    assert ProxyRoute.for_upstream(SECURE, env).proxy_for(httpx.URL("https://127.0.0.1:5000/")) is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("proxy.corp:3128", "http://proxy.corp:3128"),
        ("http://u:p@proxy.corp:3128", "http://u:p@proxy.corp:3128"),
        ("https://proxy.corp", "https://proxy.corp"),
    ],
)
def test_proxy_urls(given: str, expected: str) -> None:
    assert parse_proxy_url(given) == expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pa%40ss@proxy.corp:3128", "http://user:***@proxy.corp:3128"),
        ("user:secret@proxy.corp:3128", "user:***@proxy.corp:3128"),  # no scheme, as Go allows
        ("http://user:pa/ss@proxy.corp:3128", "http://user:***@proxy.corp:3128"),  # unescaped /
        ("http://user:1234/x@proxy.corp", "http://user:***@proxy.corp"),  # parses as port 1234
        ("http://user:p#w?d@proxy.corp", "http://user:***@proxy.corp"),
        ("http://user@proxy.corp:3128", "http://user@proxy.corp:3128"),  # no password
        ("http://proxy.corp:3128", "http://proxy.corp:3128"),
    ],
)
def test_masking(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_secrets_stay_out_of_reprs() -> None:
    env = ProxyEnvironment(http_proxy="http://u:hunter2@proxy:1", https_proxy="u:hunter2@proxy:2", no_proxy="x.example")
    route = ProxyRoute.for_upstream(None, env)
    shown = repr(env) + repr(route) + route.describe() + str(env.masked())
    assert "hunter2" not in shown and "u:***@proxy:2" in shown


def test_proxy_settings_in_the_config(tmp_path: Path) -> None:
    secret = tmp_path / "proxy-password"
    secret.write_text("s3cr:et/\n")
    data = {
        "upstreams": {
            "docker.io": {"url": "https://registry-1.docker.io", "proxy": "http://edge@proxy.corp:3128"},
            "ghcr.io": {"url": "https://ghcr.io", "proxy": ""},
            "quay.io": {"url": "https://quay.io"},
        }
    }
    data["upstreams"]["docker.io"]["proxy_password_file"] = str(secret)
    config = from_dict(data, ProxyEnvironment(https_proxy="http://env:hunter2@egress:8080", no_proxy="corp.example"))
    hub = config.upstreams["docker.io"]
    assert hub.proxy == "http://edge:s3cr%3Aet%2F@proxy.corp:3128", "the password file fills in the password"
    assert config.upstreams["ghcr.io"].proxy == ""
    assert config.upstreams["quay.io"].proxy is None
    shown = render(config) + repr(hub)
    assert "s3cr" not in shown and "hunter2" not in shown
    assert 'proxy = "http://edge:***@proxy.corp:3128"' in shown
    assert 'proxy = ""' in shown
    assert "# HTTPS_PROXY=http://env:***@egress:8080" in shown
    assert "# NO_PROXY=corp.example" in shown


@pytest.mark.parametrize(
    ("upstream", "key"),
    [
        ({"proxy": "socks5://proxy.corp:1080"}, "upstreams.docker.io.proxy"),
        ({"proxy": "http://proxy.corp:notaport"}, "upstreams.docker.io.proxy"),
        ({"proxy": "", "proxy_password_file": "{file}"}, "upstreams.docker.io.proxy_password_file"),
        ({"proxy": "http://proxy.corp", "proxy_password_file": "{file}"}, "upstreams.docker.io.proxy_password_file"),
        ({"ca_file": "/nonexistent/ca.pem"}, "upstreams.docker.io.ca_file"),
        ({"ca_file": "{file}"}, "upstreams.docker.io.ca_file"),
        ({"client_cert": "{file}"}, "upstreams.docker.io.client_cert"),
        ({"client_key": "{file}"}, "upstreams.docker.io.client_cert"),
        ({"password_file": "{file}"}, "upstreams.docker.io.username"),
    ],
)
def test_bad_egress_settings_name_their_key(upstream: dict[str, str], key: str, tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    table = {"url": "https://registry-1.docker.io"} | {k: v.format(file=not_pem) for k, v in upstream.items()}
    with pytest.raises(ConfigError) as raised:
        from_dict({"upstreams": {"docker.io": table}})
    assert raised.value.key == key


def test_bad_environment_proxy_is_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        load(None, env={"HTTPS_PROXY": "socks5://proxy.corp:1080"})
    assert raised.value.key == "HTTPS_PROXY"


def test_egress_settings_from_the_environment(tmp_path: Path) -> None:
    password = tmp_path / "token"
    password.write_text("dckr_pat_abc\n")
    env = {
        "MIRROR_UPSTREAM_DOCKER_IO_PROXY": "http://proxy.corp:3128",
        "MIRROR_UPSTREAM_DOCKER_IO_USERNAME": "ci",
        "MIRROR_UPSTREAM_DOCKER_IO_PASSWORD_FILE": str(password),
    }
    hub = load(None, env=env).upstreams["docker.io"]
    assert (hub.proxy, hub.username, hub.password) == ("http://proxy.corp:3128", "ci", "dckr_pat_abc")


def test_an_encrypted_client_key_is_refused_without_a_prompt(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca", "client-ca")
    cert, key = ca.issue("client", client=True)
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    table = {"url": "https://registry.corp", "client_cert": str(cert), "client_key": str(key)}
    with pytest.raises(ConfigError) as raised:
        from_dict({"upstreams": {"registry.corp": table}})
    assert raised.value.key == "upstreams.registry.corp.client_cert"
    assert "encrypted" in raised.value.problem
