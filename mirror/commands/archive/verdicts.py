"""`mirror export` under a signature policy: what the server would refuse is not exported either.

The signatures export found for each image (the same ones it carries) are judged with the
config's policy, exactly as the server judges them; an index accepted by its signature carries
its children. In enforce mode a refused image stops the export, naming it and why; in audit
mode it is a note.
"""

from __future__ import annotations

import json

from mirror.commands.archive.signatures import Signature, Spool
from mirror.config.model import SignaturesConfig
from mirror.registry.referrers import is_sigstore_bundle


def refusals(
    signatures: SignaturesConfig, images: list[tuple[str, str, str]], found: list[Signature], spool: Spool
) -> list[str]:
    """Why each image (name, reference, digest) is refused by the policy; [] when all are accepted."""
    from mirror.signatures.material import Candidate, bundle_candidates, cosign_candidates  # heavy: only here
    from mirror.signatures.verify import decide

    refused = []
    for name, reference, digest in images:
        candidates: list[Candidate] = []
        for signature in found:
            subject = signature.subject
            if subject.reference != digest or f"{subject.upstream}/{subject.repository}" != name:
                continue
            manifest = spool.read(signature.digest)
            blobs = {blob: spool.read(blob) for blob in signature.blobs if blob in spool}
            if signature.tag is not None:
                candidates += cosign_candidates(signature.tag, manifest, blobs)
            elif is_sigstore_bundle({"artifactType": signature.artifact_type}):
                for layer in _layers(manifest):
                    if layer in blobs:
                        candidates += bundle_candidates(f"the bundle {signature.digest}", blobs[layer], digest)
        verdict = decide(signatures.policy, name, reference, digest, candidates)
        if not verdict.accepted:
            refused.append(f"{name}@{digest} ({reference}): {verdict.reason} (scope {verdict.scope!r})")
    return refused


def _layers(manifest: bytes) -> list[str]:
    try:
        layers = json.loads(manifest).get("layers", [])
    except (ValueError, AttributeError):
        return []
    return [str(layer.get("digest")) for layer in layers if isinstance(layer, dict)] if isinstance(layers, list) else []
