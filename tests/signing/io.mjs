// stdin and failure for the kit's node scripts: one JSON request in, a message and exit 2 on error.

export async function readRequest() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (error) {
    fail(`the request on stdin is not JSON: ${error.message}`);
  }
}

export function fail(message) {
  process.stderr.write(`${message}\n`);
  process.exit(2);
}
