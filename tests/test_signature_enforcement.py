"""Serve only what is signed: a containers-policy.json at the mirror, against real signatures on
images in the real registry, in both formats (cosign's `.sig` attachment, and Sigstore bundles
found through the referrers), made with the signing kit (tests/signing: sigstore-js signs the
bundles), and every bundle verdict cross-checked with sigstore-js's own verifier."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from signing import (
    ANNOTATION_SIGNATURE,
    DEFAULT_EMAIL,
    DEFAULT_ISSUER,
    CosignLayer,
    Key,
    LocalCA,
    LocalRekor,
    attach_bundle,
    attach_cosign,
    cosign_signature,
    flip_base64,
    oracle,
    sign_bundle,
    simple_signing_payload,
    with_flipped_signature,
    with_statement,
)
from support import OCI_INDEX, OCI_MANIFEST, Image, MirrorProcess, Pusher, Registry

ACCEPT = {"Accept": ", ".join([OCI_MANIFEST, OCI_INDEX])}


@dataclass
class Case:
    """One image and what the mirror must answer for it."""

    repository: str
    image: Image
    accepted: bool
    says: str = ""  # a piece of the refusal's message
    bundle: dict[str, Any] | None = None  # the bundle signed for it (checked by the oracle too)
    trust: dict[str, Any] = field(default_factory=dict)  # the oracle's keys / CA / Rekor for it


@dataclass
class Site:
    """The signed world: keys, a CA standing in for Fulcio, a Rekor key, and images signed every way."""

    namespace: str
    root: Path
    team_key: Key = field(default_factory=Key.generate)
    other_key: Key = field(default_factory=Key.generate)
    ca: LocalCA = field(default_factory=LocalCA.create)
    rekor: LocalRekor = field(default_factory=LocalRekor.create)
    other_rekor: LocalRekor = field(default_factory=LocalRekor.create)
    cases: dict[str, Case] = field(default_factory=dict)

    def scope(self, kind: str) -> str:
        return f"{self.namespace}-{kind}"

    def policy(self) -> Path:
        team_pub = self.team_key.write_public(self.root / "team.pub")
        (self.root / "rekor.pub").write_text(self.rekor.public_pem)
        (self.root / "fulcio.pem").write_text(self.ca.full_chain_pem)
        identity = {"type": "matchRepository"}
        keyed = {"type": "sigstoreSigned", "keyPath": str(team_pub), "signedIdentity": identity}
        rekor = {"rekorPublicKeyPath": str(self.root / "rekor.pub")}
        fulcio = {"caPath": str(self.root / "fulcio.pem"), "oidcIssuer": DEFAULT_ISSUER, "subjectEmail": DEFAULT_EMAIL}
        policy = {
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {
                "docker": {
                    f"docker.io/{self.scope('team')}": [keyed],
                    f"docker.io/{self.scope('logged')}": [{**keyed, **rekor}],
                    f"docker.io/{self.scope('keyless')}": [
                        {"type": "sigstoreSigned", "fulcio": fulcio, **rekor, "signedIdentity": identity}
                    ],
                }
            },
        }
        path = self.root / "policy.json"
        path.write_text(json.dumps(policy, indent=2))
        return path


def _push(pusher: Pusher, repository: str, seed: int) -> Image:
    return pusher.image(repository, "v1", [2048], seed=seed, oci=True)


def _cosign(
    site: Site, pusher: Pusher, kind: str, name: str, seed: int, sign: Callable[[str, str], list[CosignLayer]]
) -> Image:
    repository = f"{site.scope(kind)}/cosign-{name}"
    image = _push(pusher, repository, seed)
    layers = sign(f"docker.io/{repository}", image.digest)
    if layers:
        attach_cosign(pusher, repository, image.digest, layers)
    return image


def _bundled(
    site: Site, pusher: Pusher, kind: str, name: str, seed: int, sign: Callable[[str, str], dict[str, Any]]
) -> tuple[str, Image, dict[str, Any]]:
    repository = f"{site.scope(kind)}/bundle-{name}"
    image = _push(pusher, repository, seed)
    bundle = sign(f"docker.io/{repository}", image.digest)
    attach_bundle(pusher, repository, image.digest, OCI_MANIFEST, len(image.manifest), bundle)
    return repository, image, bundle


def seed(site: Site, registry: Registry) -> None:
    team, other, ca, rekor = site.team_key, site.other_key, site.ca, site.rekor
    cases = site.cases
    with Pusher(registry.url) as pusher:
        # cosign's .sig attachments
        def add(name: str, kind: str, accepted: bool, says: str, sign: Callable[[str, str], list[CosignLayer]]) -> None:
            image = _cosign(site, pusher, kind, name, len(cases) + 1, sign)
            cases[f"cosign-{kind}-{name}"] = Case(f"{site.scope(kind)}/cosign-{name}", image, accepted, says)

        add("signed", "team", True, "", lambda ref, d: [cosign_signature(team, ref, d)])
        add("unsigned", "team", False, "was found", lambda ref, d: [])
        add(
            "other-key",
            "team",
            False,
            "the signature does not verify",
            lambda ref, d: [cosign_signature(other, ref, d)],
        )
        add(
            "identity",
            "team",
            False,
            "the signature is for another repository",
            lambda ref, d: [cosign_signature(team, ref.replace("cosign-identity", "cosign-signed"), d)],
        )
        add(
            "payload",
            "team",
            False,
            "the signature does not verify",
            lambda ref, d: [
                cosign_signature(team, ref, d).with_payload(
                    simple_signing_payload(ref, d, optional={"tampered": "yes"})
                )
            ],
        )
        add(
            "annotation",
            "team",
            False,
            "the signature does not verify",
            lambda ref, d: [
                (layer := cosign_signature(team, ref, d)).with_annotations(
                    **{ANNOTATION_SIGNATURE: flip_base64(layer.annotations[ANNOTATION_SIGNATURE])}
                )
            ],
        )
        add("right-email", "keyless", True, "", lambda ref, d: [cosign_signature(None, ref, d, ca=ca, rekor=rekor)])
        add(
            "wrong-email",
            "keyless",
            False,
            f"the certificate is not for {DEFAULT_EMAIL}",
            lambda ref, d: [cosign_signature(None, ref, d, ca=ca, rekor=rekor, email="someone@else.example")],
        )
        add("timestamped", "logged", True, "", lambda ref, d: [cosign_signature(team, ref, d, rekor=rekor)])
        add(
            "untimestamped",
            "logged",
            False,
            "no transparency log entry",
            lambda ref, d: [cosign_signature(team, ref, d)],
        )
        add(
            "other-log",
            "logged",
            False,
            "a log the policy does not trust",
            lambda ref, d: [cosign_signature(team, ref, d, rekor=site.other_rekor)],
        )

        # Sigstore bundles among the referrers, signed by sigstore-js
        def bundled(
            name: str,
            kind: str,
            accepted: bool,
            says: str,
            sign: Callable[[str, str], dict[str, Any]],
            trust: dict[str, Any],
        ) -> None:
            repository, image, bundle = _bundled(site, pusher, kind, name, len(cases) + 1, sign)
            cases[f"bundle-{kind}-{name}"] = Case(repository, image, accepted, says, bundle, trust)

        keys = {"keys": [team]}
        keyless = {"ca": ca, "rekor": rekor, "email": DEFAULT_EMAIL, "issuer": DEFAULT_ISSUER}
        logged = {"keys": [team], "rekor": rekor}
        bundled("signed", "team", True, "", lambda ref, d: sign_bundle(team, ref, d), keys)
        bundled("other-key", "team", False, "does not verify", lambda ref, d: sign_bundle(other, ref, d), keys)
        bundled(
            "identity",
            "team",
            False,
            "the signature is for another repository",
            lambda ref, d: sign_bundle(team, ref.replace("bundle-identity", "bundle-signed"), d),
            keys,
        )
        bundled(
            "payload",
            "team",
            False,
            "does not verify",
            lambda ref, d: with_statement(sign_bundle(team, ref, d), lambda s: s["predicate"].update(tampered=True)),
            keys,
        )
        bundled(
            "annotation",
            "team",
            False,
            "does not verify",
            lambda ref, d: with_flipped_signature(sign_bundle(team, ref, d)),
            keys,
        )
        bundled(
            "right-email",
            "keyless",
            True,
            "",
            lambda ref, d: sign_bundle(Key.generate(), ref, d, ca=ca, rekor=rekor),
            keyless,
        )
        bundled(
            "wrong-email",
            "keyless",
            False,
            f"the certificate is not for {DEFAULT_EMAIL}",
            lambda ref, d: sign_bundle(Key.generate(), ref, d, ca=ca, rekor=rekor, email="someone@else.example"),
            keyless,
        )
        bundled("timestamped", "logged", True, "", lambda ref, d: sign_bundle(team, ref, d, rekor=rekor), logged)
        bundled(
            "other-log",
            "logged",
            False,
            "a log the policy does not trust",
            lambda ref, d: sign_bundle(team, ref, d, rekor=site.other_rekor),
            logged,
        )


@pytest.fixture(scope="module")
def site(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Site:
    site = Site(f"sig{uuid.uuid4().hex[:6]}", tmp_path_factory.mktemp("signed"))
    seed(site, registry)
    return site


@pytest.fixture(scope="module")
def enforcing(site: Site, registry: Registry) -> Iterator[MirrorProcess]:
    extra = f'[signatures]\npolicy = "{site.policy()}"\nmode = "enforce"\n'
    mirror = MirrorProcess(site.root / "enforcing", {"docker.io": registry.url}, extra_config=extra)
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()


CASES = [
    f"{form}-{kind}-{name}"
    for form, kind, names in [
        ("cosign", "team", ["signed", "unsigned", "other-key", "identity", "payload", "annotation"]),
        ("cosign", "keyless", ["right-email", "wrong-email"]),
        ("cosign", "logged", ["timestamped", "untimestamped", "other-log"]),
        ("bundle", "team", ["signed", "other-key", "identity", "payload", "annotation"]),
        ("bundle", "keyless", ["right-email", "wrong-email"]),
        ("bundle", "logged", ["timestamped", "other-log"]),
    ]
    for name in names
]


@pytest.mark.parametrize("name", CASES)
def test_the_policy_decides_and_says_why(name: str, site: Site, enforcing: MirrorProcess) -> None:
    case = site.cases[name]
    response = httpx.get(f"{enforcing.url}/v2/{case.repository}/manifests/v1", headers=ACCEPT)
    layer = json.loads(case.image.manifest)["layers"][0]["digest"]
    blob = httpx.get(f"{enforcing.url}/v2/{case.repository}/blobs/{layer}")
    if case.accepted:
        assert response.status_code == 200, response.text
        assert response.headers["docker-content-digest"] == case.image.digest
        assert blob.status_code == 200 and blob.content == case.image.blobs[layer]
    else:
        assert response.status_code == 403, response.text
        error = response.json()["errors"][0]
        assert error["code"] == "DENIED"
        assert f"docker.io/{case.repository}@{case.image.digest}" in error["message"]
        assert f"scope 'docker.io/{case.repository.split('/')[0]}'" in error["message"]
        assert case.says in error["message"], error["message"]
        assert blob.status_code == 403 and blob.json()["errors"][0]["code"] == "DENIED"
    if case.bundle is not None:  # sigstore-js, given the same trust, agrees
        verdict = oracle(
            case.bundle,
            **case.trust,
            subject_name=f"docker.io/{case.repository}",
            subject_digest=case.image.digest,
        )
        assert verdict.ok == case.accepted, verdict.reason


def test_the_access_log_and_metrics_say_what_was_refused(site: Site, enforcing: MirrorProcess) -> None:
    case = site.cases["cosign-team-unsigned"]
    assert httpx.get(f"{enforcing.url}/v2/{case.repository}/manifests/v1", headers=ACCEPT).status_code == 403
    lines = [
        line for line in enforcing.log_path.read_text().splitlines() if f"/v2/{case.repository}/manifests/v1" in line
    ]
    assert lines and 'refused="no sigstore signature of' in lines[-1]
    metrics = httpx.get(f"{enforcing.url}/metrics").text
    refused = [
        line
        for line in metrics.splitlines()
        if 'signature_verdicts_total{upstream="docker.io",result="refused"}' in line
    ]
    assert refused and int(refused[0].split()[-1]) >= 1
