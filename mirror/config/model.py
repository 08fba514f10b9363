"""The config as frozen dataclasses: what every other part of the mirror reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mirror.config.proxies import ProxyEnvironment, mask_url
from mirror.registry.reference import DOCKER_HUB, DOCKER_HUB_URL

DEFAULT_LISTEN = "0.0.0.0:5000"
DEFAULT_CACHE_DIR = "mirror-cache"


class ConfigError(Exception):
    """A config problem, named by its key so the operator can find it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 5000
    default_upstream: str = DOCKER_HUB
    log_level: str = "info"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    head_timeout: float = 30.0  # a client must send its request line and headers within this
    drain_timeout: float = 30.0  # after SIGTERM: how long streams and downloads in flight may take to finish
    offline: bool = False  # no upstream is ever dialled: only what is cached is served


@dataclass(frozen=True)
class CacheConfig:
    directory: Path = Path(DEFAULT_CACHE_DIR)
    tag_ttl: float = 60.0
    max_size: int | None = None
    max_age: float | None = None
    tag_max_age: float | None = None  # tags (and the manifests kept for them) unpulled this long go
    negative_ttl: float = 30.0  # a tag the upstream answered 404 for is answered 404 this long; 0: never

    @property
    def inventory_max_age(self) -> float | None:
        """How long a tag and its manifests are kept unpulled: tag_max_age, else max_age, else forever."""
        return self.tag_max_age if self.tag_max_age is not None else self.max_age


@dataclass(frozen=True)
class AccessRule:
    """Who may read which repositories: users from htpasswd ("*": everyone, anonymous too), and
    patterns of `<registry>/<repository>` (`docker.io/library/*`, `ghcr.io/org/**`)."""

    users: tuple[str, ...]
    repositories: tuple[str, ...]


@dataclass(frozen=True)
class AuthConfig:
    htpasswd: Path | None = None  # registry clients must log in (bcrypt htpasswd)
    admin_htpasswd: Path | None = None  # for /stats, /metrics, /api/* and the dashboard
    rules: tuple[AccessRule, ...] = ()  # none: whoever may use the mirror reads everything
    login_keys: Path | None = None  # the keys of temporary logins (`mirror credentials`), a JSON file


@dataclass(frozen=True)
class PrefetchConfig:
    """An image kept warm in the background: re-resolved every `refresh`, new digests fetched."""

    image: str
    platforms: tuple[str, ...] | None = ("linux/amd64",)  # None: every platform
    refresh: float = 3600.0


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"


@dataclass(frozen=True)
class MirrorConfig:
    """A mirror of an upstream registry (another mirror, a regional tier), asked with `?ns=<registry>`."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def __repr__(self) -> str:
        secret = "'***'" if self.password is not None else "None"
        return (
            f"MirrorConfig(url={self.url!r}, username={self.username!r}, password={secret}, "
            f"ca_file={self.ca_file!r}, client_cert={self.client_cert!r}, client_key={self.client_key!r})"
        )


@dataclass(frozen=True)
class NamespaceCredential:
    """A login for some of an upstream's repositories (`myorg/*`): the most specific pattern wins."""

    repositories: tuple[str, ...]
    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"NamespaceCredential(repositories={self.repositories!r}, username={self.username!r}, password='***')"


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    proxy: str | None = field(default=None, repr=False)  # None: the environment's; "": direct
    ca_file: Path | None = None  # trusted besides the system store
    client_cert: Path | None = None  # for upstreams that require mutual TLS
    client_key: Path | None = None
    max_connections: int = 32  # blob downloads' connections to this upstream, all blobs together
    max_connections_per_blob: int = 8  # ranges fetched at once for one large blob; 1: one stream
    parallel_threshold: int = 64 * 1024 * 1024  # blobs at least this large are fetched in ranges
    max_bandwidth: int | None = None  # bits per second for blob downloads, shared among them
    repository_prefix: str = ""  # put in front of every repository name (a Harbor proxy project)
    mirrors: tuple[MirrorConfig, ...] = ()  # asked in order before url
    mirrors_only: bool = False  # never dial url itself
    offline: bool = False  # never dial url or the mirrors: serve what is cached
    allow: tuple[str, ...] = ()  # repository patterns; when set, nothing else is fetched or served
    deny: tuple[str, ...] = ()  # repository patterns refused; deny wins over allow
    block: tuple[str, ...] = ()  # digests refused for good, whatever the repository or tag
    keep_deleted_tags: bool = False  # a tag the upstream no longer has is served from the cache
    credentials: tuple[NamespaceCredential, ...] = ()  # logins for namespaces, over username/password
    redirect_hosts: tuple[str, ...] = ()  # blob redirects may reach these hosts on private addresses

    def __repr__(self) -> str:
        secret = "'***'" if self.password is not None else "None"
        proxy = None if self.proxy is None else mask_url(self.proxy)
        return (
            f"UpstreamConfig(name={self.name!r}, url={self.url!r}, username={self.username!r}, "
            f"password={secret}, connect_timeout={self.connect_timeout}, read_timeout={self.read_timeout}, "
            f"proxy={proxy!r}, ca_file={self.ca_file!r}, client_cert={self.client_cert!r}, "
            f"client_key={self.client_key!r}, max_connections={self.max_connections}, "
            f"max_connections_per_blob={self.max_connections_per_blob}, "
            f"parallel_threshold={self.parallel_threshold}, max_bandwidth={self.max_bandwidth}, "
            f"repository_prefix={self.repository_prefix!r}, mirrors={self.mirrors!r}, "
            f"mirrors_only={self.mirrors_only}, offline={self.offline}, allow={self.allow!r}, "
            f"deny={self.deny!r}, block={self.block!r}, keep_deleted_tags={self.keep_deleted_tags}, "
            f"credentials={self.credentials!r}, redirect_hosts={self.redirect_hosts!r})"
        )


@dataclass(frozen=True)
class FleetConfig:
    """Replicas that coordinate through Redis: one upstream download per blob, fleet-wide."""

    redis: str = field(repr=False)  # redis://host:6379/0 (may hold a password)
    peer_url: str  # how the other replicas reach this one
    secret: str = field(repr=False)  # authenticates replica-to-replica requests
    heartbeat: float = 2.0  # a replica that misses three is gone
    lease_ttl: float = 10.0  # a download's lease, renewed while it runs
    peers: tuple[str, ...] = ()  # peer URLs accepted from Redis (networks, hosts, *.domains); (): peer_url's own

    def __repr__(self) -> str:
        shown = f"redis={mask_url(self.redis)!r}, peer_url={self.peer_url!r}, secret='***'"
        return f"FleetConfig({shown}, peers={self.peers!r})"


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    cache: CacheConfig = CacheConfig()
    log: LogConfig = LogConfig()
    auth: AuthConfig = AuthConfig()
    prefetch: tuple[PrefetchConfig, ...] = ()
    pins: tuple[str, ...] = ()  # [[pin]] image = "…": never evicted, once cached
    fleet: FleetConfig | None = None  # [fleet]: replicas coordinated through Redis
    upstreams: dict[str, UpstreamConfig] = field(
        default_factory=lambda: {DOCKER_HUB: UpstreamConfig(DOCKER_HUB, DOCKER_HUB_URL)}
    )
    proxy_env: ProxyEnvironment = field(default_factory=ProxyEnvironment)  # HTTPS_PROXY, HTTP_PROXY, NO_PROXY

    @property
    def listen(self) -> str:
        return f"{_bracketed(self.server.host)}:{self.server.port}"

    @property
    def local_address(self) -> str:
        """host:port where commands on this machine reach the server: loopback when it listens everywhere."""
        host = self.server.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # "::" listens on both families (Linux's default bindv6only=0)
        return f"{_bracketed(host)}:{self.server.port}"


def _bracketed(host: str) -> str:
    """An IPv6 address as a URL and `listen` write it: `[::1]`."""
    return f"[{host}]" if ":" in host else host
