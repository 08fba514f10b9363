// The oracle: verifies a Sigstore bundle with sigstore's own JavaScript verifier, offline.
//
// stdin: {"bundle": {...}, "keys": [PEM, ...], "caPem": PEM(s) | null, "rekorPem": PEM | null,
//         "email": str | null, "issuer": str | null, "subjectName": str | null, "subjectDigest": "sha256:<hex>" | null}
// stdout: {"ok": bool, "reason": str}
//
// The trust material is built from the given CA (root and intermediates, as a trusted root's
// certificate authority), Rekor key (a trusted root's tlog, logId = SHA-256 of its DER SPKI) and
// public keys. Thresholds: no CT log (our CA embeds no SCT) and no TSA; one tlog entry with a valid
// SET when rekorPem is given. Without rekorPem, tlog entries are ignored (a key-only policy), and
// a certificate is refused: its validity needs the tlog's time.
import crypto from 'node:crypto';
import { bundleFromJSON } from '@sigstore/bundle';
import { PublicKeyDetails } from '@sigstore/protobuf-specs';
import { toSignedEntity, toTrustMaterial, Verifier } from '@sigstore/verify';
import { readRequest, fail } from './io.mjs';

const INTOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json';
const STATEMENT_TYPES = ['https://in-toto.io/Statement/v1', 'https://in-toto.io/Statement/v0.1'];

function pemBlocks(text) {
  const blocks = [...(text || '').matchAll(/-----BEGIN ([A-Z ]+)-----([\s\S]*?)-----END \1-----/g)];
  return blocks.map((match) => Buffer.from(match[2].replace(/\s+/g, ''), 'base64'));
}

function trustedRoot(request) {
  const spki = request.rekorPem
    ? crypto.createPublicKey(request.rekorPem).export({ type: 'spki', format: 'der' })
    : null;
  return {
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
    certificateAuthorities: request.caPem
      ? [{ certChain: { certificates: pemBlocks(request.caPem).map((der) => ({ rawBytes: der })) } }]
      : [],
    tlogs: spki
      ? [
          {
            baseUrl: 'http://rekor.invalid',
            hashAlgorithm: 1,
            publicKey: { rawBytes: spki, keyDetails: PublicKeyDetails.PKIX_ECDSA_P256_SHA_256 },
            logId: { keyId: crypto.createHash('sha256').update(spki).digest() },
          },
        ]
      : [],
    ctlogs: [],
    timestampAuthorities: [],
  };
}

// Any of the given keys may have signed: the bundle's hint is not trusted to pick one.
function keyFinder(pem) {
  return () => ({ publicKey: crypto.createPublicKey(pem), validFor: () => true });
}

function verifySignature(request, bundle) {
  const entity = toSignedEntity(bundle);
  if (!request.rekorPem) {
    entity.timestamps = [];
    entity.tlogEntries = [];
  }
  const options = { tlogThreshold: request.rekorPem ? 1 : 0, ctlogThreshold: 0, tsaThreshold: 0 };
  const root = trustedRoot(request);
  if (entity.key.$case === 'certificate') {
    if (!request.rekorPem) throw new Error('a certificate is verified at the tlog entry\'s time: give rekorPem');
    if (!request.caPem) throw new Error('a certificate needs caPem');
    const policy = {};
    // @sigstore/verify matches the SAN as a regular expression: anchored and escaped, it is the exact
    // email containers/image asks for.
    if (request.email) policy.subjectAlternativeName = `^${request.email.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`;
    if (request.issuer) policy.extensions = { issuer: request.issuer };
    new Verifier(toTrustMaterial(root, () => { throw new Error('no public key for a certificate bundle'); }), options).verify(entity, policy);
    return;
  }
  const keys = request.keys || [];
  if (keys.length === 0) throw new Error('a public-key bundle needs keys');
  let last;
  for (const pem of keys) {
    try {
      new Verifier(toTrustMaterial(root, keyFinder(pem)), options).verify(entity);
      return;
    } catch (error) {
      last = error;
    }
  }
  throw last;
}

function verifyStatement(request, bundle) {
  const envelope = bundle.content.dsseEnvelope;
  if (!envelope) throw new Error('not a DSSE bundle');
  if (envelope.payloadType !== INTOTO_PAYLOAD_TYPE) throw new Error(`payloadType ${envelope.payloadType}`);
  const statement = JSON.parse(envelope.payload.toString('utf8'));
  if (!STATEMENT_TYPES.includes(statement._type)) throw new Error(`statement _type ${statement._type}`);
  const subjects = statement.subject || [];
  if (request.subjectDigest) {
    const [algorithm, hex] = request.subjectDigest.split(':', 2);
    const match = subjects.find((s) => s.digest?.[algorithm] === hex);
    if (!match) throw new Error(`no subject has digest ${request.subjectDigest}`);
    if (request.subjectName && match.name !== request.subjectName) {
      throw new Error(`subject name ${JSON.stringify(match.name)}, expected ${JSON.stringify(request.subjectName)}`);
    }
  } else if (request.subjectName && !subjects.some((s) => s.name === request.subjectName)) {
    throw new Error(`no subject is named ${request.subjectName}`);
  }
}

async function main() {
  const request = await readRequest();
  let result;
  try {
    const bundle = bundleFromJSON(request.bundle);
    verifySignature(request, bundle);
    verifyStatement(request, bundle);
    result = { ok: true, reason: 'verified' };
  } catch (error) {
    const cause = error.cause ? `: ${error.cause.message || error.cause}` : '';
    result = { ok: false, reason: `${error.code ? error.code + ': ' : ''}${error.message}${cause}` };
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((error) => fail(error.stack || String(error)));
