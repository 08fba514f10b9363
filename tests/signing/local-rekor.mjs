// A stand-in for Rekor's entry API (POST /api/v1/log/entries) on a loopback port, for
// @sigstore/sign's RekorWitness: it canonicalizes the proposed entry as Rekor does and answers
// with a signed entry timestamp (SET) from the given key, and an inclusion proof in a log of one
// entry with a checkpoint that key signs (bundles v0.2 and later must carry a proof: @sigstore/bundle
// refuses a v0.3 bundle whose tlog entry has only the SET).
import crypto from 'node:crypto';
import http from 'node:http';
import { json } from '@sigstore/core';

const sha256 = (data) => crypto.createHash('sha256').update(data).digest('hex');

// Rekor's canonical body for a proposed dsse 0.0.1 entry (rekor pkg/types/dsse/v0.0.1): the
// envelope itself is dropped; its hash, its payload's hash and each signature with its verifier stay.
function canonicalDSSE(spec) {
  const text = spec.proposedContent.envelope;
  const envelope = JSON.parse(text);
  const verifiers = spec.proposedContent.verifiers;
  if (envelope.signatures.length !== 1 || verifiers.length !== 1) {
    throw new Error('this stand-in logs one signature with one verifier');
  }
  return {
    apiVersion: '0.0.1',
    kind: 'dsse',
    spec: {
      envelopeHash: { algorithm: 'sha256', value: sha256(text) },
      payloadHash: { algorithm: 'sha256', value: sha256(Buffer.from(envelope.payload, 'base64')) },
      signatures: [{ signature: envelope.signatures[0].sig, verifier: verifiers[0] }],
    },
  };
}

// hashedrekord 0.0.1 is logged as proposed.
function canonicalBody(entry) {
  if (entry.kind === 'dsse' && entry.apiVersion === '0.0.1') return canonicalDSSE(entry.spec);
  if (entry.kind === 'hashedrekord' && entry.apiVersion === '0.0.1') return entry;
  throw new Error(`this stand-in logs dsse 0.0.1 and hashedrekord 0.0.1, not ${entry.kind} ${entry.apiVersion}`);
}

export function logEntry(options, proposed) {
  const key = crypto.createPrivateKey(options.privateKey);
  const logID = sha256(crypto.createPublicKey(key).export({ type: 'spki', format: 'der' }));
  const payload = {
    body: Buffer.from(JSON.stringify(canonicalBody(proposed))).toString('base64'),
    integratedTime: options.integratedTime ?? Math.floor(Date.now() / 1000),
    logID,
    logIndex: options.logIndex ?? 1000 + crypto.randomInt(1_000_000),
  };
  const set = crypto.sign('sha256', Buffer.from(json.canonicalize(payload)), key);
  return {
    ...payload,
    verification: {
      signedEntryTimestamp: set.toString('base64'),
      inclusionProof: inclusionProof(key, logID, Buffer.from(payload.body, 'base64')),
    },
  };
}

// RFC 6962: a log of one leaf has that leaf's hash as its root and needs no sibling hashes. The
// checkpoint is a signed note (transparency-dev formats): origin, size, root, a blank line, and
// "— <key name> base64(first 4 bytes of the log ID + signature)".
function inclusionProof(key, logID, body) {
  const root = crypto.createHash('sha256').update(Buffer.from([0])).update(body).digest();
  const name = 'rekor.local';
  const note = `${name} - 1\n1\n${root.toString('base64')}\n`;
  const signature = crypto.sign('sha256', Buffer.from(note), key);
  const hinted = Buffer.concat([Buffer.from(logID, 'hex').subarray(0, 4), signature]).toString('base64');
  return {
    logIndex: 0,
    rootHash: root.toString('hex'),
    treeSize: 1,
    hashes: [],
    checkpoint: `${note}\n\u2014 ${name} ${hinted}\n`,
  };
}

export function startLocalRekor(options) {
  const server = http.createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const reply = (status, body) => {
        response.writeHead(status, { 'Content-Type': 'application/json' });
        response.end(JSON.stringify(body));
      };
      if (request.method !== 'POST' || request.url !== '/api/v1/log/entries') {
        return reply(404, { code: 404, message: `${request.method} ${request.url}: not here` });
      }
      try {
        const entry = logEntry(options, JSON.parse(Buffer.concat(chunks).toString('utf8')));
        reply(201, { [crypto.randomBytes(32).toString('hex')]: entry });
      } catch (error) {
        reply(400, { code: 400, message: error.message });
      }
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      resolve({ url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() });
    });
  });
}
