"""The signing kit (tests/signing) against the real registry and sigstore-js, with no mirror involved.

The kit makes what the signature tests (issue 25) serve or refuse: Sigstore bundles signed by
sigstore's own JavaScript signer, cosign's tag-based signatures, keys, a CA and a Rekor key. Here it
proves itself: the oracle (sigstore-js's verifier) accepts what it must and refuses what it must,
the registry hands back what was attached, and the cosign-format SET verifies by the documented rule
with `cryptography`, written out again here rather than taken from the kit.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from signing import (
    ANNOTATION_BUNDLE,
    ANNOTATION_CERTIFICATE,
    ANNOTATION_CHAIN,
    ANNOTATION_SIGNATURE,
    BUNDLE_MEDIA_TYPE,
    SIMPLE_SIGNING,
    CosignKeyError,
    Key,
    LocalCA,
    LocalRekor,
    attach_bundle,
    attach_cosign,
    cosign_signature,
    cosign_tag,
    fallback_index,
    flip_base64,
    oracle,
    sign_bundle,
    simple_signing_payload,
    statement,
    with_flipped_signature,
    with_statement,
)
from support import OCI_MANIFEST, Image, Pusher, Registry, sha256

EMAIL, ISSUER = "builder@example.com", "https://issuer.example.com"


@dataclass
class Signed:
    registry: Registry
    image: Image
    name: str  # the docker reference without tag, as the statement's subject names it


@pytest.fixture(scope="module")
def signed(registry: Registry) -> Iterator[Signed]:
    """An image of this module's own in the session registry."""
    with Pusher(registry.url) as pusher:
        image = pusher.image("kit/app", "v1", [2048], seed=251, oci=True)
    yield Signed(registry, image, f"{registry.url.removeprefix('http://')}/kit/app")


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create()


@pytest.fixture(scope="module")
def rekor() -> LocalRekor:
    return LocalRekor.create()


def test_a_key_signed_bundle_verifies_with_its_key_and_not_another(signed: Signed) -> None:
    key, other = Key.generate(), Key.generate()
    bundle = sign_bundle(key, signed.name, signed.image.digest)
    assert bundle["mediaType"] == BUNDLE_MEDIA_TYPE
    assert bundle["verificationMaterial"]["publicKey"] == {"hint": key.key_id}
    assert "tlogEntries" not in bundle["verificationMaterial"]  # proto3 JSON leaves empty lists out
    document = statement(bundle)
    assert document == {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": signed.name, "digest": {"sha256": signed.image.digest.removeprefix("sha256:")}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }
    expected = {"subject_name": signed.name, "subject_digest": signed.image.digest}
    assert oracle(bundle, keys=[key], **expected).ok
    assert oracle(bundle, keys=[other, key], **expected).ok  # any of the policy's keys
    refused = oracle(bundle, keys=[other], **expected)
    assert not refused.ok and "SIGNATURE_ERROR" in refused.reason


def test_a_key_signed_bundle_with_a_tlog_entry_needs_that_logs_key(signed: Signed, rekor: LocalRekor) -> None:
    key = Key.generate()
    bundle = sign_bundle(key, signed.name, signed.image.digest, rekor=rekor, integrated_time=1_800_000_000)
    (entry,) = bundle["verificationMaterial"]["tlogEntries"]
    assert entry["kindVersion"] == {"kind": "dsse", "version": "0.0.1"}
    assert base64.b64decode(entry["logId"]["keyId"]).hex() == rekor.log_id
    assert entry["integratedTime"] == "1800000000"
    body = json.loads(base64.b64decode(entry["canonicalizedBody"]))
    envelope = bundle["dsseEnvelope"]
    assert body["spec"]["signatures"] == [
        {"signature": envelope["signatures"][0]["sig"], "verifier": base64.b64encode(key.public_pem.encode()).decode()}
    ]
    payload_hash = hashlib.sha256(base64.b64decode(envelope["payload"])).hexdigest()
    assert body["spec"]["payloadHash"] == {"algorithm": "sha256", "value": payload_hash}
    assert oracle(bundle, keys=[key], rekor=rekor).ok
    refused = oracle(bundle, keys=[key], rekor=LocalRekor.create())
    assert not refused.ok and "TLOG" in refused.reason
    # A key-only bundle cannot meet a policy that asks for a Rekor SET.
    assert not oracle(sign_bundle(key, signed.name, signed.image.digest), keys=[key], rekor=rekor).ok


def test_a_keyless_bundle_verifies_for_its_identity_only(signed: Signed, ca: LocalCA, rekor: LocalRekor) -> None:
    bundle = sign_bundle(
        Key.generate(), signed.name, signed.image.digest, ca=ca, email=EMAIL, issuer=ISSUER, rekor=rekor
    )
    material = bundle["verificationMaterial"]
    assert set(material) >= {"certificate", "tlogEntries"} and "publicKey" not in material
    subject = {"subject_digest": signed.image.digest, "subject_name": signed.name}
    assert oracle(bundle, ca=ca, rekor=rekor, email=EMAIL, issuer=ISSUER, **subject).ok
    wrong_email = oracle(bundle, ca=ca, rekor=rekor, email="mallory@example.com", issuer=ISSUER, **subject)
    assert not wrong_email.ok and "UNTRUSTED_SIGNER" in wrong_email.reason
    assert not oracle(bundle, ca=ca, rekor=rekor, email=EMAIL, issuer="https://other.example.com", **subject).ok
    assert not oracle(bundle, ca=ca, rekor=rekor, email="uilder@example.com", issuer=ISSUER, **subject).ok
    assert not oracle(bundle, ca=ca, rekor=rekor, email="builder@example.co", issuer=ISSUER, **subject).ok
    lookalike = sign_bundle(
        Key.generate(), signed.name, signed.image.digest, ca=ca, email="builder@exampleXcom", issuer=ISSUER, rekor=rekor
    )
    assert not oracle(lookalike, ca=ca, rekor=rekor, email=EMAIL, issuer=ISSUER, **subject).ok
    assert not oracle(bundle, ca=LocalCA.create(), rekor=rekor, email=EMAIL, issuer=ISSUER, **subject).ok
    assert not oracle(bundle, ca=ca, rekor=LocalRekor.create(), email=EMAIL, issuer=ISSUER, **subject).ok


def test_a_certificate_expired_before_the_log_entry_is_refused(signed: Signed, ca: LocalCA, rekor: LocalRekor) -> None:
    key = Key.generate()
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(
        hours=2
    )  # the CA's is a day
    leaf = ca.issue(key, EMAIL, ISSUER, not_before=start, not_after=start + datetime.timedelta(minutes=10))
    inside, after = int(start.timestamp()) + 60, int(start.timestamp()) + 3600
    trust: dict[str, Any] = {"ca": ca, "rekor": rekor, "email": EMAIL, "issuer": ISSUER}
    assert oracle(
        sign_bundle(key, signed.name, signed.image.digest, certificate=leaf, rekor=rekor, integrated_time=inside),
        **trust,
    ).ok
    late = sign_bundle(key, signed.name, signed.image.digest, certificate=leaf, rekor=rekor, integrated_time=after)
    refused = oracle(late, **trust)
    assert not refused.ok and "CERTIFICATE_ERROR" in refused.reason


def test_a_tampered_envelope_is_refused(signed: Signed) -> None:
    key = Key.generate()
    bundle = sign_bundle(key, signed.name, signed.image.digest)
    other_digest = "sha256:" + "0" * 64

    def retarget(document: dict[str, Any]) -> None:
        document["subject"][0]["digest"]["sha256"] = other_digest.removeprefix("sha256:")

    forged = with_statement(bundle, retarget)
    assert statement(forged)["subject"][0]["digest"]["sha256"] == "0" * 64
    assert not oracle(forged, keys=[key], subject_digest=other_digest).ok
    assert not oracle(with_flipped_signature(bundle), keys=[key]).ok
    assert oracle(bundle, keys=[key]).ok  # the copies left the original as it was


def test_a_subject_other_than_the_expected_one_is_refused(signed: Signed) -> None:
    key = Key.generate()
    bundle = sign_bundle(key, signed.name, signed.image.digest)
    digest = oracle(bundle, keys=[key], subject_digest="sha256:" + "1" * 64)
    assert not digest.ok and "no subject has digest" in digest.reason
    name = oracle(bundle, keys=[key], subject_digest=signed.image.digest, subject_name="docker.io/kit/app")
    assert not name.ok and "subject name" in name.reason
    assert oracle(bundle, keys=[key], subject_digest=signed.image.digest, subject_name=signed.name).ok


@pytest.mark.parametrize("kind", ["ecdsa-p256", "rsa-2048", "ed25519"])
def test_an_encrypted_cosign_key_round_trips(tmp_path: Path, kind: str) -> None:
    key = Key.generate(kind)  # type: ignore[arg-type]  # the parameters are the KeyKind literals
    path = key.write_cosign_key(tmp_path / "cosign.key", "s3cret")
    text = path.read_text()
    assert text.startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    assert all(len(line) <= 64 for line in text.splitlines())
    body = "".join(text.splitlines()[1:-1])
    document = json.loads(base64.b64decode(body))
    assert list(document) == ["kdf", "cipher", "ciphertext"]
    assert document["kdf"]["name"] == "scrypt" and document["kdf"]["params"] == {"N": 65536, "r": 8, "p": 1}
    assert len(base64.b64decode(document["kdf"]["salt"])) == 32
    assert document["cipher"]["name"] == "nacl/secretbox" and len(base64.b64decode(document["cipher"]["nonce"])) == 24
    assert key.private_der not in base64.b64decode(document["ciphertext"])
    restored = Key.read_cosign_key(path, "s3cret")
    assert restored.public_pem == key.public_pem
    assert key.verify(restored.sign(b"payload"), b"payload")
    with pytest.raises(CosignKeyError, match="cannot decrypt"):
        Key.read_cosign_key(path, "wrong")
    assert key.write_public(tmp_path / "cosign.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")


def _verify_set(annotation: dict[str, Any], rekor_public_pem: str) -> None:
    """containers/image's rule: ECDSA-SHA256 over RFC 8785 JSON of Payload (keys sorted, no spaces)."""
    public = serialization.load_pem_public_key(rekor_public_pem.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    canonical = json.dumps(annotation["Payload"], sort_keys=True, separators=(",", ":")).encode()
    public.verify(base64.b64decode(annotation["SignedEntryTimestamp"]), canonical, ec.ECDSA(hashes.SHA256()))


def test_the_cosign_bundle_annotation_verifies_by_the_documented_rule(signed: Signed, rekor: LocalRekor) -> None:
    key = Key.generate()
    layer = cosign_signature(key, signed.name, signed.image.digest, rekor=rekor, integrated_time=1_800_000_000)
    annotation = layer.bundle
    assert annotation is not None and set(annotation) == {"SignedEntryTimestamp", "Payload"}
    payload = annotation["Payload"]
    assert set(payload) == {"body", "integratedTime", "logIndex", "logID"}
    assert payload["logID"] == hashlib.sha256(key_der(rekor.public_pem)).hexdigest()
    assert payload["integratedTime"] == 1_800_000_000
    body = json.loads(base64.b64decode(payload["body"]))
    assert body["apiVersion"] == "0.0.1" and body["kind"] == "hashedrekord"
    assert body["spec"]["signature"]["content"] == layer.signature_b64
    assert base64.b64decode(body["spec"]["signature"]["publicKey"]["content"]).decode() == key.public_pem
    assert body["spec"]["data"]["hash"] == {"algorithm": "sha256", "value": hashlib.sha256(layer.payload).hexdigest()}
    _verify_set(annotation, rekor.public_pem)
    with pytest.raises(InvalidSignature):
        _verify_set(
            {**annotation, "Payload": {**payload, "integratedTime": payload["integratedTime"] + 1}}, rekor.public_pem
        )
    with pytest.raises(InvalidSignature):
        _verify_set(annotation, LocalRekor.create().public_pem)


def key_der(pem: str) -> bytes:
    public = serialization.load_pem_public_key(pem.encode())
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_a_keyless_cosign_signature_carries_a_fulcio_shaped_leaf(
    signed: Signed, ca: LocalCA, rekor: LocalRekor
) -> None:
    layer = cosign_signature(None, signed.name, signed.image.digest, ca=ca, email=EMAIL, issuer=ISSUER, rekor=rekor)
    assert json.loads(layer.payload) == json.loads(simple_signing_payload(signed.name, signed.image.digest))
    leaf = x509.load_pem_x509_certificate(layer.annotations[ANNOTATION_CERTIFICATE].encode())
    chain = x509.load_pem_x509_certificates(layer.annotations[ANNOTATION_CHAIN].encode())
    assert [c.subject for c in chain] == [ca.intermediate.subject, ca.root.subject]
    leaf.verify_directly_issued_by(chain[0])
    chain[0].verify_directly_issued_by(chain[1])
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.RFC822Name) == [EMAIL]
    assert ExtendedKeyUsageOID.CODE_SIGNING in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    v1 = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")).value
    v2 = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")).value
    assert isinstance(v1, x509.UnrecognizedExtension) and v1.value == ISSUER.encode()
    assert isinstance(v2, x509.UnrecognizedExtension) and v2.value == bytes([0x0C, len(ISSUER)]) + ISSUER.encode()
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(minutes=10)
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(base64.b64decode(layer.signature_b64), layer.payload, ec.ECDSA(hashes.SHA256()))
    annotation = layer.bundle
    assert annotation is not None
    _verify_set(annotation, rekor.public_pem)
    body = json.loads(base64.b64decode(annotation["Payload"]["body"]))
    assert (
        base64.b64decode(body["spec"]["signature"]["publicKey"]["content"]).decode()
        == layer.annotations[ANNOTATION_CERTIFICATE]
    )
    with pytest.raises(InvalidSignature):
        public.verify(base64.b64decode(flip_base64(layer.signature_b64)), layer.payload, ec.ECDSA(hashes.SHA256()))


def test_the_sig_image_reads_back_from_the_registry(signed: Signed, ca: LocalCA, rekor: LocalRekor) -> None:
    key = Key.generate()
    layers = [
        cosign_signature(key, signed.name, signed.image.digest),
        cosign_signature(None, signed.name, signed.image.digest, ca=ca, email=EMAIL, issuer=ISSUER, rekor=rekor),
    ]
    with Pusher(signed.registry.url) as pusher:
        digest = attach_cosign(pusher, "kit/app", signed.image.digest, layers)
    client = httpx.Client(base_url=signed.registry.url)
    with client:
        response = client.get(
            f"/v2/kit/app/manifests/{cosign_tag(signed.image.digest)}", headers={"Accept": OCI_MANIFEST}
        )
        assert response.status_code == 200 and sha256(response.content) == digest
        manifest = response.json()
        assert manifest["mediaType"] == OCI_MANIFEST
        assert [d["mediaType"] for d in manifest["layers"]] == [SIMPLE_SIGNING, SIMPLE_SIGNING]
        assert [d["annotations"] for d in manifest["layers"]] == [layer.annotations for layer in layers]
        assert set(manifest["layers"][1]["annotations"]) == {
            ANNOTATION_SIGNATURE,
            ANNOTATION_CERTIFICATE,
            ANNOTATION_CHAIN,
            ANNOTATION_BUNDLE,
        }
        for descriptor, layer in zip(manifest["layers"], layers, strict=True):
            assert client.get(f"/v2/kit/app/blobs/{descriptor['digest']}").content == layer.payload
        config = client.get(f"/v2/kit/app/blobs/{manifest['config']['digest']}").json()
        assert config["rootfs"]["diff_ids"] == [d["digest"] for d in manifest["layers"]]
    assert key.verify(base64.b64decode(layers[0].signature_b64), layers[0].payload)


def test_attached_bundles_read_back_through_the_fallback_tag(signed: Signed, ca: LocalCA, rekor: LocalRekor) -> None:
    image = signed.image
    key = Key.generate()
    keyed = sign_bundle(key, signed.name, image.digest)
    keyless = sign_bundle(Key.generate(), signed.name, image.digest, ca=ca, email=EMAIL, issuer=ISSUER, rekor=rekor)
    with Pusher(signed.registry.url) as pusher:
        first = attach_bundle(pusher, "kit/app", image.digest, image.media_type, len(image.manifest), keyed)
        second = attach_bundle(pusher, "kit/app", image.digest, image.media_type, len(image.manifest), keyless)
        index = fallback_index(pusher.client, "kit/app", image.digest)
        assert index is not None
        listed = {m["digest"]: m for m in index["manifests"]}
        assert {first, second} <= set(listed)
        assert listed[first]["artifactType"] == BUNDLE_MEDIA_TYPE
        assert listed[first]["annotations"]["dev.sigstore.bundle.content"] == "dsse-envelope"
        manifest = pusher.client.get(f"/v2/kit/app/manifests/{second}", headers={"Accept": OCI_MANIFEST}).json()
        assert manifest["artifactType"] == BUNDLE_MEDIA_TYPE
        assert manifest["config"] == {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": sha256(b"{}"),
            "size": 2,
        }
        assert manifest["subject"] == {
            "mediaType": image.media_type,
            "digest": image.digest,
            "size": len(image.manifest),
        }
        (layer,) = manifest["layers"]
        assert layer["mediaType"] == BUNDLE_MEDIA_TYPE
        served = pusher.client.get(f"/v2/kit/app/blobs/{layer['digest']}").json()
    assert served == keyless
    assert oracle(served, ca=ca, rekor=rekor, email=EMAIL, issuer=ISSUER, subject_digest=image.digest).ok
