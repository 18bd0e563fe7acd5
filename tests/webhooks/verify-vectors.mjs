// Checks Keel's webhook test vectors (tests/webhooks/vectors.json) with the npm package
// `standardwebhooks`, the verifier docs/webhooks.md recommends to Node receivers, and
// prints the outcome of every case as JSON on stdout:
//
//   {"library": "standardwebhooks", "version": "1.1.1",
//    "results": [{"name": ..., "valid": true|false, "error": "...", "signed": "v1,..."}]}
//
// `signed` (cases with "signs": true) is what the library's own `sign` produces.
// tests/gateway_bridge/test_webhook_vectors.py runs this script and compares every result
// with the vectors and with keel.webhooks (Python).
//
// Usage: node tests/webhooks/verify-vectors.mjs [vectors.json]
// The package is looked up from KEEL_STANDARDWEBHOOKS_DIR (a directory holding it in its
// node_modules, or that node_modules directory itself), by default the repository's
// node_modules. Exit codes: 0 with results printed, 3 when the package cannot be found.
//
// -------------------------------------------------------------------------------------
// Verifying Keel webhooks in Node (the snippet of docs/webhooks.md, to copy):
//
//   import { Webhook } from "standardwebhooks";
//
//   const wh = new Webhook(process.env.KEEL_WEBHOOK_SECRET); // "whsec_..."
//
//   app.post("/keel", express.raw({ type: "application/json" }), (req, res) => {
//     let payload;
//     try {
//       payload = wh.verify(req.body, req.headers); // the raw body, not re-serialized JSON
//     } catch (err) {
//       return res.status(400).end();
//     }
//     res.status(204).end();
//     handle(payload); // dedupe by payload.event_id
//   });
// -------------------------------------------------------------------------------------

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const vectorsPath = resolve(process.argv[2] ?? resolve(here, "vectors.json"));
const searchFrom = resolve(
  process.env.KEEL_STANDARDWEBHOOKS_DIR || resolve(here, "..", "..", "node_modules"),
);

const require = createRequire(import.meta.url);
let library;
let version;
try {
  library = require(require.resolve("standardwebhooks", { paths: [searchFrom] }));
  version = require(require.resolve("standardwebhooks/package.json", { paths: [searchFrom] }))
    .version;
} catch (err) {
  process.stderr.write(
    `cannot load the npm package standardwebhooks from ${searchFrom}: ${err.message}\n` +
      "install it (npm install in the repository, or set KEEL_STANDARDWEBHOOKS_DIR)\n",
  );
  process.exit(3);
}
const { Webhook } = library;

function headerName(name, style) {
  if (style === "upper") return name.toUpperCase();
  if (style === "title") return name.replace(/(^|-)([a-z])/g, (_, dash, c) => dash + c.toUpperCase());
  return name;
}

function headersOf(vector) {
  const headers = {};
  const values = {
    "webhook-id": vector.msg_id,
    "webhook-timestamp": String(vector.timestamp),
    "webhook-signature": vector.signature,
  };
  for (const [name, value] of Object.entries(values)) {
    if (name !== vector.omit_header) headers[headerName(name, vector.header_case)] = value;
  }
  return headers;
}

const realNow = Date.now;
const { cases } = JSON.parse(readFileSync(vectorsPath, "utf8"));
const results = [];
for (const vector of cases) {
  const result = { name: vector.name };
  // The library reads the clock through Date.now(): set it to the vector's `now`.
  Date.now = () => vector.now * 1000;
  try {
    const wh = new Webhook(vector.secret);
    // A receiver hands over the raw body as a Buffer (express.raw), as Keel sent it.
    wh.verify(Buffer.from(vector.body, "utf8"), headersOf(vector));
    result.valid = true;
  } catch (err) {
    result.valid = false;
    result.error = `${err.name}: ${err.message}`;
  } finally {
    Date.now = realNow;
  }
  if (vector.signs) {
    const wh = new Webhook(vector.secret);
    result.signed = wh.sign(vector.msg_id, new Date(vector.timestamp * 1000), vector.body);
  }
  results.push(result);
}
process.stdout.write(`${JSON.stringify({ library: "standardwebhooks", version, results })}\n`);
