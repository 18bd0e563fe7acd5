// keel.js under Node (its WebSocket): with getToken, the client renews its token over the
// socket before it expires, so the connection stays open — no 4002, no reconnect.
//
// Run by tests/gateway_bridge/bridge/test_keeljs.py with:
//   KEEL_JS=<path of keel.js> KEEL_URL=ws://host:port/ws KEEL_CHANNEL=<id>
//   KEEL_TOKENS='["<short-lived token>", "<long-lived token>"]' KEEL_WAIT_MS=<ms>
// The last line of stdout is one JSON object: {states, asked, errors, sent}.

import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const env = process.env;
const Keel = require(env.KEEL_JS);
const tokens = JSON.parse(env.KEEL_TOKENS);
const states = [];
const errors = [];
let asked = 0;

const client = new Keel.Client({
  url: env.KEEL_URL,
  getToken: async () => tokens[Math.min(asked++, tokens.length - 1)],
  onStateChange: (state, detail) => states.push([state, detail.code || 0]),
  onError: (err) => errors.push(err.code + ": " + err.message),
  presence: false,
  WebSocket: globalThis.WebSocket,
});

let sent = null;
try {
  await client.connect();
  await client.subscribe(env.KEEL_CHANNEL);
  await new Promise((resolve) => setTimeout(resolve, Number(env.KEEL_WAIT_MS)));
  sent = await client.send(env.KEEL_CHANNEL, "after the first token expired");
} catch (err) {
  errors.push("thrown: " + (err && err.message));
}
const before = states.slice(); // what happened up to here (close() adds "closed")
client.close();
console.log(JSON.stringify({ states: before, asked, errors, sent }));
