"""SIGHUP: read the config file and the files it names again, and apply them without a restart.

Applied in place, on the next request, without dropping a connection or a download: htpasswd,
temporary logins, access rules, allow/deny/block, upstream logins and password files,
offline, tag_ttl, max_size, and the TLS certificate and key (new connections get the new
one). A change that needs a restart (listen, cache directory, an upstream's URL…) is named
in the log. A config that does not load is refused with one line naming the key, and the old
one stays in force.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from mirror.composition import Mirror
from mirror.config import Config, ConfigError
from mirror.http.access import AccessSettings, access_settings
from mirror.http.fastpath import WarmAnswers

log = logging.getLogger(__name__)


class Reloader:
    def __init__(
        self,
        load: Callable[[], Config],
        mirror: Mirror,
        access: AccessSettings,
        answers: WarmAnswers,
        remembered: dict[bytes, Any],
        tls: Callable[[], ssl.SSLContext | None],
    ) -> None:
        self.load = load  # the file, the environment and the command line's flags, as at start-up
        self.mirror = mirror
        self.access = access
        self.answers = answers
        self.remembered = remembered  # the protocol's questions, asked under the old config
        self.tls = tls
        self._pins: asyncio.Task[None] | None = None

    def reload(self) -> bool:
        try:
            config = self.load()
            settings, certificate = read_files(config)
        except ConfigError as exc:
            log.error("SIGHUP: the new config is refused, the old one stays in force: %s", exc)
            return False
        restart = self.mirror.apply(config)
        self._pins = asyncio.get_running_loop().create_task(self.mirror.keep_pins())  # [[pin]]: new ones fetched
        self.access.take(settings)  # access control's and the warm answers' one
        self.answers.forget()
        self.remembered.clear()  # the protocol's questions were judged under the old rules
        context = self.tls()
        if certificate and context is not None and config.server.tls_cert and config.server.tls_key:
            context.load_cert_chain(config.server.tls_cert, config.server.tls_key)  # for new connections
        if (self.mirror.started.server.tls_cert is None) != (config.server.tls_cert is None):  # vs what runs
            restart.append("server.tls_cert")
        needs = f"; these need a restart to take effect: {', '.join(restart)}" if restart else ""
        log.info("SIGHUP: config reloaded (config %s)%s", self.mirror.config_hash, needs)
        return True


def read_files(config: Config) -> tuple[AccessSettings, bool]:
    """What a SIGHUP (and `mirror config --check`) reads beside the config: the htpasswd files, and
    whether a certificate is to be loaded. A file that does not do raises ConfigError, naming the key."""
    return access_settings(config.auth), check_certificate(config)


def check_certificate(config: Config) -> bool:
    """Whether a certificate is to be loaded; a broken one is refused before anything changes."""
    cert, key = config.server.tls_cert, config.server.tls_key
    if cert is None or key is None:
        return False
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("server.tls_cert", f"cannot load {cert} with {key}: {exc}") from exc
    return True
