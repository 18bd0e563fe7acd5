// keel.js under Node (its WebSocket): notifications pushed live reach client.inbox —
// the onNotification option and listeners get (notification, unreadCount), the unread
// count follows, and a listener removed gets nothing more.
//
// Run by tests/gateway_bridge/bridge/test_keeljs.py with:
//   KEEL_JS=<path of keel.js> KEEL_URL=ws://host:port/ws KEEL_TOKEN=<token>
//   KEEL_EXPECT=<number of notifications to wait for> KEEL_WAIT_MS=<ms at most>
// The last line of stdout is one JSON object: {option, listener, removed, counts,
// unreadCount, errors}.

import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const env = process.env;
const Keel = require(env.KEEL_JS);
const expected = Number(env.KEEL_EXPECT);
const errors = [];
const option = [];
const listener = [];
const removed = [];
const counts = [];

let done;
const all = new Promise((resolve) => (done = resolve));
const client = new Keel.Client({
  url: env.KEEL_URL,
  token: env.KEEL_TOKEN,
  onError: (err) => errors.push(err.code + ": " + err.message),
  onNotification: (n, unread) => option.push([n.title, unread]),
  presence: false,
  WebSocket: globalThis.WebSocket,
});
client.inbox.onUnreadCount((count) => counts.push(count));
const stop = client.inbox.onNotification((n) => removed.push(n.title));
client.inbox.onNotification((n, unread) => {
  listener.push([n.title, unread, n.id, n.category, n.data]);
  if (listener.length === 1) stop(); // the second listener hears the first one only
  if (listener.length === expected) done();
});

try {
  await client.connect();
  await Promise.race([all, new Promise((resolve) => setTimeout(resolve, Number(env.KEEL_WAIT_MS)))]);
} catch (err) {
  errors.push("thrown: " + (err && err.message));
}
const unreadCount = client.inbox.unreadCount;
client.close();
console.log(JSON.stringify({ option, listener, removed, counts, unreadCount, errors }));
