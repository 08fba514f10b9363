"""Every Redis key the fleet uses, spelled here only (as `cache/layout.py` spells the disk's).

Every value is JSON text, never a pickle. Keys, all under `mirror:`:

    members                a set of peer URLs: every replica that joined (the live ones have a record)
    member:<peer url>      {"peer_url", "started", "blobs", "bytes", "hit_ratio", "seen"}, PX 3 heartbeats
    holders:<digest>       a set of peer URLs: the replicas that hold the blob
    lease:<digest>         {"peer_url", "since"}, SET NX PX lease_ttl: the replica downloading it
    manifest:<digest>      {"media_type", "body"}, EX 7 days: a manifest one replica fetched
    fetch:<digest>         NX PX: the replica fetching a manifest by digest for the fleet
    tag:<upstream>/<repository>:<tag>     a hash: accept key -> a tag answer (mirror.fleet.tags)
    refresh:<upstream>/<repository>:<tag> NX PX: the replica revalidating a tag
"""

from __future__ import annotations

PREFIX = "mirror:"
MEMBERS = f"{PREFIX}members"
MEMBER = f"{PREFIX}member:"  # + peer URL; also the prefix the prune script checks
SHARED_MANIFEST_DAYS = 7


def member(peer_url: str) -> str:
    return f"{MEMBER}{peer_url}"


def holders(digest: str) -> str:
    return f"{PREFIX}holders:{digest}"


def lease(digest: str) -> str:
    return f"{PREFIX}lease:{digest}"


def shared_manifest(digest: str) -> str:
    return f"{PREFIX}manifest:{digest}"


def manifest_fetch(digest: str) -> str:
    return f"{PREFIX}fetch:{digest}"


def tag(upstream: str, repository: str, name: str) -> str:
    return f"{PREFIX}tag:{upstream}/{repository}:{name}"


def tag_refresh(upstream: str, repository: str, name: str) -> str:
    return f"{PREFIX}refresh:{upstream}/{repository}:{name}"
