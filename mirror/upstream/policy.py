"""What an upstream may be asked for and what the mirror serves of it: allow, deny and block."""

from __future__ import annotations

from mirror.config import UpstreamConfig
from mirror.registry.errors import Denied
from mirror.registry.patterns import Patterns, TagGlobs


class RepositoryPolicy:
    """An upstream's `allow` and `deny` repository patterns (deny wins) and its `block`ed digests."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.name = config.name
        self.allow = Patterns.of(config.allow)
        self.deny = Patterns.of(config.deny)
        self.blocked = frozenset(config.block)
        self.keep_deleted_tags = config.keep_deleted_tags
        self.immutable_tags = TagGlobs.of(config.immutable_tags)

    def allows(self, repository: str) -> bool:
        return self.deny.match(repository) is None and (not self.allow or self.allow.match(repository) is not None)

    def check(self, repository: str) -> None:
        """Raise DENIED, naming the rule, for a repository this upstream must not be asked for."""
        rule = self.deny.match(repository)
        if rule is not None:
            raise Denied(f'{self.name}/{repository} is refused by [upstreams."{self.name}"] deny {rule!r}')
        if self.allow and self.allow.match(repository) is None:
            raise Denied(f'{self.name}/{repository} is not in [upstreams."{self.name}"] allow')

    def check_digest(self, digest: str) -> None:
        if digest in self.blocked:
            raise Denied(f'{digest} is blocked by [upstreams."{self.name}"] block')
