"""A verdict: does the policy accept this manifest, given the signatures found for it?

Every requirement of the scope must hold (containers/image's rule). A sigstoreSigned
requirement holds when one candidate signature claims this very digest, verifies with one of
the policy's keys (or with a certificate chained to the policy's CA, for the policy's email
and issuer, at the time a trusted log promised), is recorded by a trusted log when the policy
names one, and claims an identity the policy's signedIdentity accepts. When nothing can
decide, the answer is no.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from mirror.signatures.crypto import (
    MaterialError,
    certificates,
    chain_to,
    emails,
    key_der,
    oidc_issuer,
    public_key,
    utc,
    verifies,
)
from mirror.signatures.identity import DockerReference, accepts
from mirror.signatures.material import Candidate
from mirror.signatures.policy import Policy, Requirement
from mirror.signatures.rekor import Signed, check_entry


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    scope: str  # the policy scope that applied ("default" when none did)
    reason: str  # refused: why; accepted: by what ("key /etc/mirror/cosign.pub", "insecureAcceptAnything")
    signed: bool = False  # some signature verified (accepted by a signature, not by accepting anything)
    by: str = ""  # what verified it: the key file(s), or the CA and identity


def decide(policy: Policy, name: str, reference: str, digest: str, found: list[Candidate]) -> Verdict:
    """The policy's verdict on the manifest `digest` of `name` (`docker.io/library/alpine`), asked for
    by `reference` (a tag, or a digest), given the signatures found for it."""
    scope, requirements = policy.requirements_for(name, reference)
    by_digest = reference.startswith(("sha256:", "sha512:"))
    image = DockerReference(name, None, reference) if by_digest else DockerReference(name, reference, None)
    return judge(scope, requirements, image, digest, found)


def judge(
    scope: str, requirements: tuple[Requirement, ...], image: DockerReference, digest: str, found: list[Candidate]
) -> Verdict:
    """The verdict on the manifest `digest` of `image` (its name as the client asked, tag or digest)."""
    reasons = []
    by = []
    for requirement in requirements:
        if requirement.type == "insecureAcceptAnything":
            reasons.append("insecureAcceptAnything")
            continue
        if requirement.type == "reject":
            return Verdict(False, scope, f"the policy rejects every image of scope {scope!r}")
        why_not, verified = _signed(requirement, image, digest, found)
        if why_not is not None:
            return Verdict(False, scope, why_not)
        reasons.append(verified)
        by.append(str(requirement))
    return Verdict(True, scope, "; ".join(dict.fromkeys(reasons)), bool(by), " and ".join(dict.fromkeys(by)))


def _signed(
    requirement: Requirement, image: DockerReference, digest: str, found: list[Candidate]
) -> tuple[str | None, str]:
    """(None, by what) when a candidate satisfies the sigstoreSigned requirement, else (why not, "")."""
    subject = f"{image.name}@{digest}"
    if not found:
        return f"no sigstore signature of {subject} was found", ""
    failures = []
    for candidate in found:
        failure = _check(requirement, image, digest, candidate)
        if failure is None:
            return None, f"signed, verified with {requirement}"
        failures.append(f"{candidate.origin}: {failure}")
    return f"no sigstore signature of {subject} verifies with {requirement} ({'; '.join(failures[:3])})", ""


def _check(requirement: Requirement, image: DockerReference, digest: str, candidate: Candidate) -> str | None:
    if candidate.problem is not None:
        return candidate.problem
    if candidate.digest != digest:
        return f"it signs another image ({str(candidate.digest)[:80]})"
    check = _keyless if requirement.fulcio is not None else _with_keys
    failure = check(requirement, candidate)
    if failure is not None:
        return failure
    if candidate.identity is None:
        return "it names no image"
    return accepts(requirement.identity, image, candidate.identity)


def _with_keys(requirement: Requirement, candidate: Candidate) -> str | None:
    key = next((k for k in _keys(requirement.keys) if verifies(k, candidate.signature, candidate.signed)), None)
    if key is None:
        return "the signature does not verify"
    if requirement.rekor_keys:
        return _logged(requirement, candidate, key)
    return None


def _keyless(requirement: Requirement, candidate: Candidate) -> str | None:
    fulcio = requirement.fulcio
    assert fulcio is not None  # the caller's condition
    leaf = candidate.certificate
    if leaf is None:
        return "it has no certificate"
    if candidate.log is None:
        return "it has no transparency log entry (the signing time)"
    key = leaf.public_key()
    if not verifies(key, candidate.signature, candidate.signed):
        return "the signature does not verify with its certificate"
    logged = _logged(requirement, candidate, key)
    if logged is not None:
        return logged
    try:
        anchors = certificates(fulcio.ca_pem)
    except MaterialError:
        return "the policy's CA file holds no certificate"
    failure = chain_to(leaf, list(candidate.chain) + anchors, anchors, utc(candidate.log.integrated_time))
    if failure is not None:
        return failure
    if fulcio.subject_email not in emails(leaf):
        return f"the certificate is not for {fulcio.subject_email} (it is for {', '.join(emails(leaf)) or 'nobody'})"
    issuer = oidc_issuer(leaf)
    if issuer != fulcio.oidc_issuer:
        return f"the certificate's issuer is {issuer!r}, not {fulcio.oidc_issuer!r}"
    return None


def _logged(requirement: Requirement, candidate: Candidate, key: PublicKeyTypes) -> str | None:
    if candidate.log is None:
        return "it has no transparency log entry"
    return check_entry(
        candidate.log, _keys(requirement.rekor_keys), Signed(candidate.signature, key_der(key), _logged_data(candidate))
    )


def _logged_data(candidate: Candidate) -> bytes:
    return candidate.logged


@lru_cache(maxsize=256)
def _keys(pems: tuple[bytes, ...]) -> tuple[PublicKeyTypes, ...]:
    """The policy's PEM keys, parsed once; a key that cannot be read verifies nothing."""
    parsed = []
    for pem in pems:
        try:
            parsed.append(public_key(pem))
        except MaterialError:
            continue
    return tuple(parsed)
