"""The config as frozen dataclasses: what every other part of the mirror reads.

Each key is declared here once: its kind (how it is read and shown), its default, whether an
environment variable sets it (MIRROR_<TABLE>_<KEY>), and its reload class (`settings.Reload`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mirror.config.kinds import (
    BOOL,
    COUNT,
    DIGESTS,
    DURATION,
    FILE,
    HOSTS,
    LISTEN,
    LOG_FORMAT,
    LOG_LEVEL,
    PATH,
    PATH_OR_NONE,
    PATTERNS,
    PEER_URL,
    PEERS,
    PLATFORMS,
    POLICY,
    POSITIVE_DURATION,
    PROXY,
    RATE,
    REDIS,
    REGISTRY_URL,
    REPOSITORY_PREFIX,
    SECRET,
    SIGNATURE_MODE,
    SIZE,
    TAG_GLOBS,
    TEXT,
    USERS,
)
from mirror.config.proxies import ProxyEnvironment, mask_url
from mirror.config.settings import FromEnvironment, Named, Section, Sections, setting, settings
from mirror.config.values import listen_address
from mirror.registry.mediatypes import DEFAULT_PLATFORM
from mirror.registry.reference import DOCKER_HUB, DOCKER_HUB_URL

if TYPE_CHECKING:
    from mirror.signatures.policy import Policy  # read only with [signatures] (config.kinds)


@settings
class ServerConfig:
    host: str = setting(LISTEN, key="listen", default="0.0.0.0", env=True, reload="restart")
    port: int = setting(LISTEN, key="listen", default=5000, env=True, reload="restart")
    default_upstream: str = setting(TEXT, default=DOCKER_HUB, env=True, reload="restart")
    log_level: str = setting(LOG_LEVEL, default="info", env=True, reload="start")
    tls_cert: Path | None = setting(FILE, default=None, env=True, reload="live")  # presence: http/reload.py
    tls_key: Path | None = setting(FILE, default=None, env=True, reload="live")
    # A client must send its request line and headers within this.
    head_timeout: float = setting(POSITIVE_DURATION, default=30.0, env=True, reload="restart")
    # After SIGTERM: how long streams and downloads in flight may take to finish.
    drain_timeout: float = setting(DURATION, default=30.0, env=True, reload="start")
    # No upstream is ever dialled: only what is cached is served.
    offline: bool = setting(BOOL, default=False, env=True, reload="live")


@settings
class CacheConfig:
    directory: Path = setting(PATH, default=Path("mirror-cache"), env=True, reload="restart")
    tag_ttl: float = setting(DURATION, default=60.0, env=True, reload="live")
    max_size: int | None = setting(SIZE, default=None, env=True, reload="live")
    # Read afresh by the expiry loop, which only runs when it (or tag_max_age) was set at start-up.
    max_age: float | None = setting(DURATION, default=None, env=True, reload="start")
    # Tags (and the manifests kept for them) unpulled this long go.
    tag_max_age: float | None = setting(DURATION, default=None, env=True, reload="start")
    # A tag the upstream answered 404 for is answered 404 this long; 0: never.
    negative_ttl: float = setting(DURATION, default=30.0, env=True, reload="restart")
    # A client's first layer request of an image just served starts the image's other blobs.
    fetch_ahead: bool = setting(BOOL, default=True, env=True, reload="live")

    @property
    def inventory_max_age(self) -> float | None:
        """How long a tag and its manifests are kept unpulled: tag_max_age, else max_age, else forever."""
        return self.tag_max_age if self.tag_max_age is not None else self.max_age


@settings
class AccessRule:
    """Who may read which repositories: users from htpasswd ("*": everyone, anonymous too), and
    patterns of `<registry>/<repository>` (`docker.io/library/*`, `ghcr.io/org/**`)."""

    users: tuple[str, ...] = setting(USERS, reload="live")
    repositories: tuple[str, ...] = setting(PATTERNS, reload="live")


@settings
class AuthConfig:
    # Registry clients must log in (bcrypt htpasswd).
    htpasswd: Path | None = setting(FILE, default=None, env=True, reload="live")
    # For /stats, /metrics, /api/* and the dashboard.
    admin_htpasswd: Path | None = setting(FILE, default=None, env=True, reload="live")
    # none: whoever may use the mirror reads everything.
    rules: tuple[AccessRule, ...] = setting(
        Sections(AccessRule, "a list of [[auth.rules]] tables"), default=(), reload="live"
    )
    # The keys of temporary logins (`mirror credentials`), a JSON file.
    login_keys: Path | None = setting(PATH_OR_NONE, default=None, env=True, reload="live")


@settings
class PrefetchConfig:
    """An image kept warm in the background: re-resolved every `refresh`, new digests fetched."""

    image: str = setting(TEXT, reload="restart")
    platforms: tuple[str, ...] | None = setting(PLATFORMS, default=(DEFAULT_PLATFORM,), reload="restart")  # None: all
    refresh: float = setting(POSITIVE_DURATION, default=3600.0, reload="restart")


@settings
class PinConfig:
    """An image never evicted: the server fetches it when it is not cached, at start-up and on reload."""

    image: str = setting(TEXT, reload="live")
    platforms: tuple[str, ...] | None = setting(PLATFORMS, default=(DEFAULT_PLATFORM,), reload="live")  # None: all


@settings
class LogConfig:
    format: str = setting(LOG_FORMAT, default="text", env=True, reload="restart")


@settings
class MirrorConfig:
    """A mirror of an upstream registry (another mirror, a regional tier), asked with `?ns=<registry>`."""

    url: str = setting(REGISTRY_URL, reload="restart")
    username: str | None = setting(TEXT, default=None, reload="live")
    password: str | None = setting(SECRET, default=None, reload="live")
    ca_file: Path | None = setting(FILE, default=None, reload="restart")
    client_cert: Path | None = setting(FILE, default=None, reload="restart")
    client_key: Path | None = setting(FILE, default=None, reload="restart")

    def __repr__(self) -> str:
        secret = "'***'" if self.password is not None else "None"
        return (
            f"MirrorConfig(url={self.url!r}, username={self.username!r}, password={secret}, "
            f"ca_file={self.ca_file!r}, client_cert={self.client_cert!r}, client_key={self.client_key!r})"
        )


@settings
class NamespaceCredential:
    """A login for some of an upstream's repositories (`myorg/*`): the most specific pattern wins."""

    repositories: tuple[str, ...] = setting(PATTERNS, reload="live")
    username: str = setting(TEXT, reload="live")
    password: str = setting(SECRET, reload="live")

    def __repr__(self) -> str:
        return f"NamespaceCredential(repositories={self.repositories!r}, username={self.username!r}, password='***')"


@settings
class UpstreamConfig:
    name: str  # the table's name: the registry's host as clients know it
    url: str = setting(REGISTRY_URL, env=True, reload="restart")
    username: str | None = setting(TEXT, default=None, env=True, reload="live")
    password: str | None = setting(SECRET, default=None, env=True, reload="live")
    connect_timeout: float = setting(DURATION, default=10.0, env=True, reload="restart")
    read_timeout: float = setting(DURATION, default=60.0, env=True, reload="restart")
    proxy: str | None = setting(PROXY, default=None, env=True, reload="restart")  # None: the environment's; "": direct
    ca_file: Path | None = setting(FILE, default=None, env=True, reload="restart")  # trusted besides the system's
    # For upstreams that require mutual TLS.
    client_cert: Path | None = setting(FILE, default=None, env=True, reload="restart")
    client_key: Path | None = setting(FILE, default=None, env=True, reload="restart")
    # Blob downloads' connections to this upstream, all blobs together.
    max_connections: int = setting(COUNT, default=32, env=True, reload="restart")
    # Ranges fetched at once for one large blob; 1: one stream.
    max_connections_per_blob: int = setting(COUNT, default=8, env=True, reload="restart")
    # Blobs at least this large are fetched in ranges.
    parallel_threshold: int = setting(SIZE, default=64 * 1024 * 1024, env=True, reload="restart")
    # Bits per second for blob downloads, shared among them.
    max_bandwidth: int | None = setting(RATE, default=None, env=True, reload="restart")
    # Put in front of every repository name (a Harbor proxy project).
    repository_prefix: str = setting(REPOSITORY_PREFIX, default="", env=True, reload="restart")
    mirrors_only: bool = setting(BOOL, default=False, env=True, reload="restart")  # never dial url itself
    # Never dial url or the mirrors: serve what is cached.
    offline: bool = setting(BOOL, default=False, env=True, reload="live")
    # Repository patterns; when set, nothing else is fetched or served.
    allow: tuple[str, ...] = setting(PATTERNS, default=(), reload="live")
    deny: tuple[str, ...] = setting(PATTERNS, default=(), reload="live")  # repository patterns; deny wins
    block: tuple[str, ...] = setting(DIGESTS, default=(), reload="live")  # digests refused for good
    # A tag the upstream no longer has is served from the cache.
    keep_deleted_tags: bool = setting(BOOL, default=False, env=True, reload="live")
    # Tag globs (`v*`, `*.*.*`): once seen, such a tag keeps its digest until `mirror tag accept`.
    immutable_tags: tuple[str, ...] = setting(TAG_GLOBS, default=(), reload="live")
    # Blob redirects may reach these hosts on private addresses.
    redirect_hosts: tuple[str, ...] = setting(HOSTS, default=(), reload="restart")
    # Logins for namespaces, over username/password.
    credentials: tuple[NamespaceCredential, ...] = setting(
        Sections(NamespaceCredential, "a list of [[credentials]] tables"), default=(), reload="live"
    )
    # Asked in order before url; their addresses need a restart, their logins not.
    mirrors: tuple[MirrorConfig, ...] = setting(
        Sections(MirrorConfig, "a list of mirror URLs or [[mirrors]] tables", shorthand="url"),
        default=(),
        reload="restart",
    )

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
            f"immutable_tags={self.immutable_tags!r}, "
            f"credentials={self.credentials!r}, redirect_hosts={self.redirect_hosts!r})"
        )


@settings
class FleetConfig:
    """Replicas that coordinate through Redis: one upstream download per blob, fleet-wide."""

    redis: str = setting(REDIS, env=True, reload="start")  # redis://host:6379/0 (may hold a password)
    peer_url: str = setting(PEER_URL, env=True, reload="start")  # how the other replicas reach this one
    secret: str = setting(SECRET, env=True, reload="start")  # authenticates replica-to-replica requests
    heartbeat: float = setting(DURATION, default=2.0, env=True, reload="start")  # a replica missing three is gone
    lease_ttl: float = setting(DURATION, default=10.0, env=True, reload="start")  # a download's, renewed
    # Peer URLs accepted from Redis (networks, hosts, *.domains); (): peer_url's own.
    peers: tuple[str, ...] = setting(PEERS, default=(), reload="start")

    def __repr__(self) -> str:
        shown = f"redis={mask_url(self.redis)!r}, peer_url={self.peer_url!r}, secret='***'"
        return f"FleetConfig({shown}, peers={self.peers!r})"


@settings
class SignaturesConfig:
    """Serve only what containers-policy.json(5) accepts (the file podman, skopeo and CRI-O read)."""

    policy: Policy = setting(POLICY, reload="live")  # read whole at load: a bad policy is a config error
    # enforce: refuse what the policy does not accept; audit: verify, log and count, but serve.
    mode: str = setting(SIGNATURE_MODE, default="enforce", env=True, reload="live")


@settings
class Config:
    """The whole config, its tables in the order `mirror config` prints them."""

    server: ServerConfig = setting(Section(ServerConfig), default=ServerConfig(), reload="live")
    cache: CacheConfig = setting(Section(CacheConfig), default=CacheConfig(), reload="live")
    log: LogConfig = setting(Section(LogConfig), default=LogConfig(), reload="live")
    auth: AuthConfig = setting(Section(AuthConfig), default=AuthConfig(), reload="live")
    # Which upstreams there are needs a restart; what each may change, `Upstream.reconfigure` says.
    upstreams: dict[str, UpstreamConfig] = setting(
        Named(UpstreamConfig, env="upstream"),
        default_factory=lambda: {DOCKER_HUB: UpstreamConfig(name=DOCKER_HUB, url=DOCKER_HUB_URL)},
        reload="restart",
    )
    # HTTPS_PROXY, HTTP_PROXY, NO_PROXY.
    proxy_env: ProxyEnvironment = setting(FromEnvironment(), default_factory=ProxyEnvironment, reload="start")
    # [fleet]: replicas coordinated through Redis.
    fleet: FleetConfig | None = setting(Section(FleetConfig, optional=True), default=None, reload="start")
    # [signatures]: what must be signed, and by whom.
    signatures: SignaturesConfig | None = setting(Section(SignaturesConfig, optional=True), default=None, reload="live")
    # [[pin]] image = "…": fetched when not cached, then never evicted.
    pins: tuple[PinConfig, ...] = setting(
        Sections(PinConfig, 'a list of [[pin]] tables with image = "…"'), key="pin", default=(), reload="live"
    )
    prefetch: tuple[PrefetchConfig, ...] = setting(
        Sections(PrefetchConfig, "a list of [[prefetch]] tables"), default=(), reload="restart"
    )

    @property
    def listen(self) -> str:
        return listen_address(self.server.host, self.server.port)

    @property
    def local_address(self) -> str:
        """host:port where commands on this machine reach the server: loopback when it listens everywhere."""
        host = self.server.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # "::" listens on both families (Linux's default bindv6only=0)
        return listen_address(host, self.server.port)
