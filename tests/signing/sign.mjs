// Signs an image digest into a Sigstore bundle (v0.3, DSSE envelope around an in-toto statement)
// with sigstore's own JavaScript signing library, offline.
//
// stdin: {"privateKey": PEM (PKCS#8), "certificate": PEM | null (keyless when set),
//         "keyHint": str | null, "subject": {"name": "127.0.0.1:5000/team/app", "digest": "sha256:<hex>"},
//         "rekor": {"privateKey": PEM, "integratedTime": int | null, "logIndex": int | null} | null}
// stdout: the bundle's JSON.
//
// @sigstore/sign's DSSEBundleBuilder assembles the bundle. Its Signer is ours (the given key, so
// no Fulcio); its Witness is @sigstore/sign's own RekorWitness, pointed at the Rekor stand-in below
// on a loopback port of this process: the proposed entry and the bundle's tlog entry (logId,
// kindVersion, canonicalizedBody, inclusionPromise) are built by sigstore's code, not ours.
import crypto from 'node:crypto';
import { bundleToJSON } from '@sigstore/bundle';
import { DSSEBundleBuilder, RekorWitness } from '@sigstore/sign';
import { startLocalRekor } from './local-rekor.mjs';
import { readRequest, fail } from './io.mjs';

const STATEMENT_TYPE = 'https://in-toto.io/Statement/v1';
const PREDICATE_TYPE = 'https://sigstore.dev/cosign/sign/v1';
const INTOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json';

function statement(subject) {
  const [algorithm, hex] = subject.digest.includes(':') ? subject.digest.split(':', 2) : ['sha256', subject.digest];
  return {
    _type: STATEMENT_TYPE,
    subject: [{ name: subject.name, digest: { [algorithm]: hex } }],
    predicateType: PREDICATE_TYPE,
    predicate: {},
  };
}

// The default hint: hex SHA-256 of the public key's DER SubjectPublicKeyInfo.
function keyId(publicKey) {
  return crypto.createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
}

function localSigner(request) {
  const privateKey = crypto.createPrivateKey(request.privateKey);
  const publicKey = crypto.createPublicKey(privateKey);
  const key = request.certificate
    ? { $case: 'x509Certificate', certificate: request.certificate }
    : {
        $case: 'publicKey',
        publicKey: publicKey.export({ type: 'spki', format: 'pem' }),
        hint: request.keyHint ?? keyId(publicKey),
      };
  // ECDSA and RSA sign SHA-256 of the data (DER signatures for ECDSA); Ed25519 takes no digest.
  const algorithm = privateKey.asymmetricKeyType === 'ed25519' ? null : 'sha256';
  return { sign: async (data) => ({ signature: crypto.sign(algorithm, data, privateKey), key }) };
}

async function main() {
  const request = await readRequest();
  if (!request.privateKey || !request.subject?.name || !request.subject?.digest) {
    fail('the request needs privateKey, subject.name and subject.digest');
  }
  if (request.certificate && !request.rekor) {
    fail('a keyless bundle needs a tlog entry: give rekor.privateKey');
  }
  const rekor = request.rekor ? await startLocalRekor(request.rekor) : null;
  try {
    const witnesses = rekor
      ? [new RekorWitness({ rekorBaseURL: rekor.url, entryType: 'dsse', retry: 0, timeout: 10000 })]
      : [];
    const builder = new DSSEBundleBuilder({ signer: localSigner(request), witnesses, certificateChain: false });
    const bundle = await builder.create({
      data: Buffer.from(JSON.stringify(statement(request.subject))),
      type: INTOTO_PAYLOAD_TYPE,
    });
    process.stdout.write(JSON.stringify(bundleToJSON(bundle)) + '\n');
  } finally {
    rekor?.close();
  }
}

main().catch((error) => fail(error.stack || String(error)));
