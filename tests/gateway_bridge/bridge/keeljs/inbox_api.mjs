// keel.js under Node (its WebSocket) against a bridge with the real notification service:
// client.inbox.list / markRead / markAllRead and the unread count they keep, and
// client.push.subscribe / unsubscribe with stand-ins for a service worker's pushManager
// (Node has none; the frames and the server are real).
//
// Run by tests/gateway_bridge/bridge/test_keeljs.py with:
//   KEEL_JS=<path of keel.js> KEEL_URL=ws://host:port/ws KEEL_TOKEN=<token>
//   KEEL_P256DH=<base64url P-256 point> KEEL_AUTH=<base64url 16 bytes>
// The user has three unread notifications, #0 to #2. The last line of stdout is one JSON
// object (see the end of the script).

import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const env = process.env;
const Keel = require(env.KEEL_JS);
const errors = [];
const counts = [];

/** A stand-in for a ServiceWorkerRegistration: its pushManager and what was asked of it. */
function registration(endpoint, existing) {
  const made = { subscribeOptions: null, unsubscribed: [] };
  const subscription = (key, url) => ({
    endpoint: url,
    options: { applicationServerKey: key.buffer },
    toJSON: () => ({ endpoint: url, expirationTime: null, keys: { p256dh: env.KEEL_P256DH, auth: env.KEEL_AUTH } }),
    unsubscribe: async () => {
      made.unsubscribed.push(url);
      if (current && current.endpoint === url) current = null;
      return true;
    },
  });
  let current = existing ? subscription(new Uint8Array([1, 2, 3]), endpoint + "-old") : null;
  made.pushManager = {
    getSubscription: async () => current,
    subscribe: async (options) => {
      made.subscribeOptions = {
        userVisibleOnly: options.userVisibleOnly,
        key: Array.from(options.applicationServerKey),
      };
      current = subscription(options.applicationServerKey, endpoint);
      return current;
    },
  };
  return made;
}

const client = new Keel.Client({
  url: env.KEEL_URL,
  token: env.KEEL_TOKEN,
  onError: (err) => errors.push(err.code + ": " + err.message),
  presence: false,
  WebSocket: globalThis.WebSocket,
});
client.inbox.onUnreadCount((count) => counts.push(count));

const out = {};
try {
  await client.connect();
  out.countBeforeList = client.inbox.unreadCount;
  const first = await client.inbox.list({ pageSize: 2 });
  out.firstPage = first.notifications.map((n) => n.title);
  out.countAfterList = client.inbox.unreadCount;
  const rest = await client.inbox.list({ pageSize: 2, pageToken: first.next_page_token });
  out.secondPage = rest.notifications.map((n) => n.title);
  out.lastToken = rest.next_page_token;
  out.markOne = await client.inbox.markRead(first.notifications[0].id);
  out.unreadOnly = (await client.inbox.list({ unreadOnly: true })).notifications.map((n) => n.title);
  out.markAll = await client.inbox.markAllRead();
  out.countAfterMarkAll = client.inbox.unreadCount;

  out.publicKey = await client.push.publicKey();
  const a = registration("https://push.example.com/send/a", false);
  const b = registration("https://push.example.com/send/b", true); // has one with another key
  out.subscribedA = (await client.push.subscribe(a)).endpoint;
  out.subscribedB = (await client.push.subscribe(b)).endpoint;
  out.a = { options: a.subscribeOptions, unsubscribed: a.unsubscribed.slice() };
  out.b = { options: b.subscribeOptions, unsubscribed: b.unsubscribed.slice() };
  out.unsubscribedA = await client.push.unsubscribe(a);
  out.aAfter = a.unsubscribed;
  try {
    await client.push.subscribe({});
  } catch (err) {
    out.noRegistration = err.code;
  }
} catch (err) {
  errors.push("thrown: " + (err && (err.code || "") + " " + err.message));
}
client.close();
console.log(JSON.stringify({ ...out, counts, errors }));
