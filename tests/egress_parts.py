"""Real parts for the egress tests: a test CA, squid (with basic auth, optionally ssl-bump), nginx (mTLS).

Names: the upstream registry is `registry.egress.test`, which only squid can resolve (its
`hosts_file`), so the mirror reaches it through the proxy or not at all. The mirror runs in a
private mount namespace whose `/etc/hosts` and `/etc/resolv.conf` are the test's own: it resolves
only what the test says, and asks no DNS server outside this machine.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support import ByPid, free_port, start_server
from tools import tool

UPSTREAM_HOST = "registry.egress.test"
CDN_HOST = "cdn.egress.test"
DIRECT_HOST = "direct.egress.test"
UPSTREAM_ADDRESS = "127.0.0.2"  # where the upstream registry listens
PROXY_OUTGOING = "127.0.0.3"  # squid's source address: requests from here came through it
DIRECT_ADDRESS = "127.0.0.4"  # a second upstream, reached without the proxy
PROXY_USER, PROXY_PASSWORD = "mirror", "pr0xy-S3cret"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class CertificateAuthority:
    """A CA that the test makes, and the certificates it signs."""

    directory: Path
    name: str

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = self.directory / f"{self.name}.pem"
        self.key_path = self.directory / f"{self.name}.key"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.key_path.write_bytes(_key_pem(self.key))

    def issue(self, name: str, *, hosts: tuple[str, ...] = (), client: bool = False) -> tuple[Path, Path]:
        """A leaf certificate and its key, as files: for servers (hosts) or for a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        return cert_path, key_path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Squid(ByPid):
    """Debian's squid in the foreground, on loopback, with basic auth and its own hosts file.

    squid drops root for the `proxy` user, so its files live in a directory that user owns,
    outside pytest's root-only temporary tree; `stop` removes it.
    """

    hosts: dict[str, str]  # name -> address, the only names squid resolves
    bump_ca: CertificateAuthority | None = None  # ssl-bump: re-sign upstream certificates with this CA
    upstream_ca: Path | None = None  # what squid trusts toward the upstream when it bumps
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mirror-squid-"))

    @property
    def url(self) -> str:
        return f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{self.port}"

    def start(self) -> Squid:
        d = self.directory
        (d / "hosts").write_text("".join(f"{address} {name}\n" for name, address in self.hosts.items()))
        hashed = subprocess.run(
            [tool("openssl"), "passwd", "-1", PROXY_PASSWORD], capture_output=True, text=True, check=True
        ).stdout.strip()
        (d / "passwd").write_text(f"{PROXY_USER}:{hashed}\n")
        port_line = f"http_port 127.0.0.1:{self.port}"
        bump = ""
        if self.bump_ca is not None:
            shutil.copy(self.bump_ca.cert_path, d / "bump.pem")
            shutil.copy(self.bump_ca.key_path, d / "bump.key")
            port_line += (
                f" ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=4MB"
                f" tls-cert={d / 'bump.pem'} tls-key={d / 'bump.key'}"
            )
            subprocess.run(
                [tool("security_file_certgen"), "-c", "-s", str(d / "ssl_db"), "-M", "4MB"],
                check=True,
                capture_output=True,
            )
            bump = (
                f"sslcrtd_program {tool('security_file_certgen')} -s {d / 'ssl_db'} -M 4MB\n"
                "sslcrtd_children 2 startup=1 idle=1\n"
                "acl step1 at_step SslBump1\n"
                "ssl_bump peek step1\n"
                "ssl_bump bump all\n"
            )
            if self.upstream_ca is not None:
                shutil.copy(self.upstream_ca, d / "upstream-ca.pem")
                bump += f"tls_outgoing_options cafile={d / 'upstream-ca.pem'}\n"
        (d / "squid.conf").write_text(
            f"{port_line}\n{bump}"
            f"pid_filename {d / 'squid.pid'}\n"
            f"access_log stdio:{d / 'access.log'}\n"
            f"cache_log {d / 'cache.log'}\n"
            f"coredump_dir {d}\n"
            f"hosts_file {d / 'hosts'}\n"
            "dns_nameservers 127.0.0.1\n"  # nothing outside this machine, even by mistake
            f"tcp_outgoing_address {PROXY_OUTGOING}\n"
            "cache_effective_user proxy\n"
            "cache deny all\n"
            "cache_mem 8 MB\n"
            "pinger_enable off\n"
            "netdb_filename none\n"
            "visible_hostname egress-proxy.test\n"
            "shutdown_lifetime 1 seconds\n"
            "logfile_rotate 0\n"
            f"auth_param basic program /usr/lib/squid/basic_ncsa_auth {d / 'passwd'}\n"
            "auth_param basic realm egress\n"
            "auth_param basic children 2\n"
            "acl authenticated proxy_auth REQUIRED\n"
            "http_access allow authenticated\n"
            "http_access deny all\n"
        )
        proxy_user = pwd.getpwnam("proxy")
        for path in [d, *d.rglob("*")]:
            os.chown(path, proxy_user.pw_uid, proxy_user.pw_gid)
        self.process = start_server([tool("squid"), "-N", "-f", str(d / "squid.conf")], d / "stderr.log", self.port)
        return self

    stop_timeout = 15.0

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_lines(self) -> list[str]:
        path = self.directory / "access.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def requests(self) -> list[tuple[str, str, str, str]]:
        """(method, URL, user, result/status) of every request squid logged."""
        found = []
        for line in self.log_lines():
            fields = line.split()
            if len(fields) >= 8:
                found.append((fields[5], fields[6], fields[7], fields[3]))
        return found


@dataclass
class Nginx(ByPid):
    """Debian's nginx in the foreground: TLS in front of a registry, asking clients for a certificate."""

    directory: Path
    backend: str  # host:port of the plain-HTTP registry behind it
    cert: tuple[Path, Path]
    client_ca: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        temp = "".join(
            f"  {kind}_temp_path {d / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (d / "nginx.conf").write_text(
            "daemon off;\nworker_processes 1;\n"
            f"pid {d / 'nginx.pid'};\nerror_log {d / 'error.log'} warn;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            f"  access_log {d / 'access.log'};\n{temp}"
            "  server {\n"
            f"    listen 127.0.0.1:{self.port} ssl;\n"
            f"    ssl_certificate {self.cert[0]};\n    ssl_certificate_key {self.cert[1]};\n"
            f"    ssl_client_certificate {self.client_ca};\n    ssl_verify_client on;\n"
            "    client_max_body_size 0;\n"
            "    location / {\n"
            f"      proxy_pass http://{self.backend};\n"
            "      proxy_set_header Host $http_host;\n"
            "      proxy_buffering off;\n"
            "    }\n"
            "  }\n"
            "}\n"
        )
        argv = [tool("nginx"), "-c", str(d / "nginx.conf"), "-p", str(d)]
        self.process = start_server(argv, d / "stderr.log", self.port)
        return self


def private_names(directory: Path, hosts: dict[str, str]) -> list[str]:
    """A command prefix that runs a program with its own /etc/hosts and a resolv.conf that asks nobody.

    `unshare --mount` gives the program a private mount namespace, which goes away with it;
    both `unshare` and `sh` exec, so the program keeps the PID that started it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    etc_hosts = directory / "hosts"
    etc_hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in hosts.items()))
    resolv = directory / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    script = 'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    return [
        tool("unshare"),
        "--mount",
        "--propagation",
        "private",
        tool("sh"),
        "-c",
        script,
        str(etc_hosts),
        str(resolv),
    ]


def with_system_ca(directory: Path, ca: Path) -> list[str]:
    """A command prefix that runs a program with `ca` installed in the system trust store.

    `update-ca-certificates` builds a store from the machine's CAs plus `ca`, in a directory
    of the test's, which is mounted over /etc/ssl/certs in a private mount namespace.
    """
    local, etc_certs, hooks = directory / "local", directory / "certs", directory / "hooks"
    for path in (local, etc_certs, hooks):
        path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ca, local / "mirror-test-ca.crt")
    conf = directory / "ca-certificates.conf"
    shutil.copy("/etc/ca-certificates.conf", conf)
    subprocess.run(
        [
            tool("update-ca-certificates"),
            "--fresh",
            "--certsconf",
            str(conf),
            "--localcertsdir",
            str(local),
            "--etccertsdir",
            str(etc_certs),
            "--hooksdir",
            str(hooks),
        ],
        check=True,
        capture_output=True,
    )
    bundle = (etc_certs / "ca-certificates.crt").read_text()
    assert ca.read_text().strip() in bundle, "update-ca-certificates left the test CA out"
    script = 'mount --bind "$0" /etc/ssl/certs && exec "$@"'
    return [tool("unshare"), "--mount", "--propagation", "private", tool("sh"), "-c", script, str(etc_certs)]
