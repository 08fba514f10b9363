"""Sigstore bundles made and checked by sigstore's own JavaScript libraries (sign.mjs, verify.mjs,
run with tool("node")), and attached to an image as cosign's specs/BUNDLE_SPEC.md says: an OCI 1.1
manifest whose subject is the image, listed in the referrers fallback tag's index (distribution
2.8 has no referrers API, so the client keeps `sha256-<hex>` up to date).
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import os
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import OCI_INDEX, OCI_MANIFEST, Pusher, sha256
from tools import tool

from .authorities import LocalCA, LocalRekor
from .cosign import DEFAULT_EMAIL, DEFAULT_ISSUER, flip_base64
from .keys import Key

KIT = Path(__file__).resolve().parent
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://sigstore.dev/cosign/sign/v1"
NODE_TIMEOUT = 60.0


class NodeScriptError(RuntimeError):
    """A kit script failed (a bad request or a broken install), as opposed to a failed verification."""


def run_node(script: str, request: dict[str, Any], timeout: float = NODE_TIMEOUT) -> dict[str, Any]:
    """Run one of the kit's scripts with `request` on stdin; its JSON answer."""
    if not (KIT / "node_modules" / "@sigstore" / "sign").is_dir():
        pytest.fail(
            f"{KIT / 'node_modules'} lacks sigstore's libraries: `scripts/install-deps test` installs them (npm ci)",
            pytrace=False,
        )
    # sign.mjs talks to its own Rekor stand-in on 127.0.0.1: no proxy may take that request.
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    try:
        result = subprocess.run(
            [tool("node"), str(KIT / script)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=KIT,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise NodeScriptError(f"{script} did not answer in {timeout}s") from exc
    if result.returncode != 0:
        raise NodeScriptError(f"{script} exited with {result.returncode}: {result.stderr.strip()}")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def sign_bundle(
    key: Key,
    subject_name: str,
    subject_digest: str,
    *,
    certificate: str | None = None,
    ca: LocalCA | None = None,
    email: str = DEFAULT_EMAIL,
    issuer: str = DEFAULT_ISSUER,
    rekor: LocalRekor | None = None,
    integrated_time: int | None = None,
    log_index: int | None = None,
    key_hint: str | None = None,
) -> dict[str, Any]:
    """A v0.3 bundle (JSON) with a DSSE envelope around an in-toto statement naming the subject.

    Key mode by default (verificationMaterial.publicKey with a hint, the key ID unless `key_hint`);
    keyless with `certificate` (a leaf for `key`) or with `ca` (which issues one for email/issuer).
    A tlog entry (dsse 0.0.1, SET and a one-leaf inclusion proof) comes with `rekor`; keyless needs it.
    """
    if certificate is None and ca is not None:
        certificate = ca.issue(key, email, issuer)
    rekor_request = None
    if rekor is not None:
        rekor_request = {"privateKey": rekor.private_pem, "integratedTime": integrated_time, "logIndex": log_index}
    return run_node(
        "sign.mjs",
        {
            "privateKey": key.private_pem,
            "certificate": certificate,
            "keyHint": key_hint,
            "subject": {"name": subject_name, "digest": subject_digest},
            "rekor": rekor_request,
        },
    )


@dataclass(frozen=True)
class Verdict:
    """The oracle's answer."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def oracle(
    bundle: dict[str, Any],
    *,
    keys: Iterable[Key | str] = (),
    ca: LocalCA | str | None = None,
    rekor: LocalRekor | str | None = None,
    email: str | None = None,
    issuer: str | None = None,
    subject_name: str | None = None,
    subject_digest: str | None = None,
) -> Verdict:
    """sigstore-js's verdict on `bundle` (verify.mjs): keys or a CA (root and intermediate), a Rekor key
    whose SET is then required, the identity a certificate must carry and the subject expected."""
    answer = run_node(
        "verify.mjs",
        {
            "bundle": bundle,
            "keys": [k.public_pem if isinstance(k, Key) else k for k in keys],
            "caPem": ca.full_chain_pem if isinstance(ca, LocalCA) else ca,
            "rekorPem": rekor.public_pem if isinstance(rekor, LocalRekor) else rekor,
            "email": email,
            "issuer": issuer,
            "subjectName": subject_name,
            "subjectDigest": subject_digest,
        },
    )
    return Verdict(bool(answer["ok"]), str(answer["reason"]))


# Tampering: each returns a changed deep copy.


def statement(bundle: dict[str, Any]) -> dict[str, Any]:
    """The in-toto statement inside a DSSE bundle."""
    parsed: dict[str, Any] = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    return parsed


def with_statement(bundle: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The bundle with its statement changed by `change` (in place) and the old signature kept."""
    changed = copy.deepcopy(bundle)
    document = statement(changed)
    change(document)
    changed["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(document).encode()).decode()
    return changed


def with_flipped_signature(bundle: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(bundle)
    signature = changed["dsseEnvelope"]["signatures"][0]
    signature["sig"] = flip_base64(signature["sig"])
    return changed


# Attaching


def bundle_annotations(bundle: dict[str, Any], created: datetime.datetime | None = None) -> dict[str, str]:
    """BUNDLE_SPEC's disambiguating annotations for the bundle's manifest and its index entry."""
    moment = created or datetime.datetime.now(datetime.UTC)
    annotations = {
        "dev.sigstore.bundle.content": "dsse-envelope" if "dsseEnvelope" in bundle else "message-signature",
        "org.opencontainers.image.created": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if "dsseEnvelope" in bundle:
        annotations["dev.sigstore.bundle.predicateType"] = str(statement(bundle).get("predicateType", ""))
    return annotations


def referrers_tag(subject_digest: str) -> str:
    """The referrers tag schema's fallback tag: `sha256:<hex>` → `sha256-<hex>`."""
    return subject_digest.replace(":", "-")


def fallback_index(client: httpx.Client, repository: str, subject_digest: str) -> dict[str, Any] | None:
    """The fallback tag's index as the registry serves it, or None when there is none."""
    response = client.get(f"/v2/{repository}/manifests/{referrers_tag(subject_digest)}", headers={"Accept": OCI_INDEX})
    if response.status_code == 404:
        return None
    response.raise_for_status()
    index: dict[str, Any] = response.json()
    return index


def add_referrer(pusher: Pusher, repository: str, subject_digest: str, descriptor: dict[str, Any]) -> None:
    """Merge `descriptor` into the fallback tag's index (replacing an entry of the same digest)."""
    index = fallback_index(pusher.client, repository, subject_digest) or {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [],
    }
    index["manifests"] = [m for m in index["manifests"] if m["digest"] != descriptor["digest"]] + [descriptor]
    pusher.manifest(repository, referrers_tag(subject_digest), json.dumps(index).encode(), OCI_INDEX)


def attach_bundle(
    pusher: Pusher,
    repository: str,
    subject_digest: str,
    subject_media_type: str,
    subject_size: int,
    bundle: dict[str, Any],
    *,
    created: datetime.datetime | None = None,
) -> str:
    """Push `bundle` as a referrer of the subject, as cosign does; the referrer manifest's digest."""
    blob = json.dumps(bundle, separators=(",", ":")).encode()
    pusher.blob(repository, EMPTY_JSON)
    pusher.blob(repository, blob)
    annotations = bundle_annotations(bundle, created)
    manifest = {
        "mediaType": OCI_MANIFEST,
        "schemaVersion": 2,
        "artifactType": BUNDLE_MEDIA_TYPE,
        "annotations": annotations,
        "config": {"mediaType": EMPTY_CONFIG, "digest": sha256(EMPTY_JSON), "size": len(EMPTY_JSON)},
        "layers": [{"mediaType": BUNDLE_MEDIA_TYPE, "digest": sha256(blob), "size": len(blob)}],
        "subject": {"mediaType": subject_media_type, "digest": subject_digest, "size": subject_size},
    }
    body = json.dumps(manifest, separators=(",", ":")).encode()
    digest = sha256(body)
    pusher.manifest(repository, digest, body, OCI_MANIFEST)
    descriptor = {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": len(body),
        "artifactType": BUNDLE_MEDIA_TYPE,
        "annotations": annotations,
    }
    add_referrer(pusher, repository, subject_digest, descriptor)
    return digest
