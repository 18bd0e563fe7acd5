// Two people chat through Keel's demo page in real headless Chromium (playwright-core).
//
// Run by tests/e2e/test_browser.py; usable by hand against `keel serve all`:
//
//   KEEL_DEMO_BASE=http://127.0.0.1:8080 KEEL_CHANNEL=<channel id> \
//   KEEL_ALICE_TOKEN=<token> KEEL_BOB_TOKEN=<token> KEEL_OUT_DIR=/tmp/keel-browser \
//   node tests/e2e/browser/chat.mjs
//
// alice opens /demo?token=…&channel=… (joins at once); bob opens /demo and uses the form.
// They see each other online, alice's typing shows on bob's page, they exchange messages
// (bob replies and reacts); then bob's browser goes offline, bob writes a message (queued)
// and alice sends five; bob comes back online and his page must show every message once,
// in seq order. Everything checked is read from the pages' DOM. The last line of stdout is
// one JSON object: {ok, steps, alice, bob, screenshots, ...} (ok=false with error and step
// on failure; the exit code is then 1).

import { mkdtempSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Browsers } from "./launch.mjs";

const env = process.env;
const BASE = (env.KEEL_DEMO_BASE || "").replace(/\/$/, "");
const CHANNEL = env.KEEL_CHANNEL || "";
const TOKENS = { alice: env.KEEL_ALICE_TOKEN || "", bob: env.KEEL_BOB_TOKEN || "" };
const OUT_DIR = env.KEEL_OUT_DIR || mkdtempSync(join(tmpdir(), "keel-browser-out-"));
const CHROMIUM = env.KEEL_CHROMIUM || "/usr/bin/chromium";
const WAIT = Number(env.KEEL_BROWSER_WAIT_MS || 15000);

if (!BASE || !CHANNEL || !TOKENS.alice || !TOKENS.bob) {
  console.error("set KEEL_DEMO_BASE, KEEL_CHANNEL, KEEL_ALICE_TOKEN and KEEL_BOB_TOKEN");
  process.exit(2);
}
mkdirSync(OUT_DIR, { recursive: true });

const result = { ok: false, steps: [], console: { alice: [], bob: [] }, screenshots: {} };
let step = "start";
const started = Date.now();

function note(name, extra) {
  step = name;
  result.steps.push({ step: name, ms: Date.now() - started, ...(extra || {}) });
  console.error(`[chat.mjs +${Date.now() - started}ms] ${name}`);
}

/** Everything the demo page shows that the test checks, read from the DOM. */
function view(page) {
  return page.evaluate(() => {
    const text = (root, sel) => {
      const el = root.querySelector(sel);
      return el ? el.textContent : null;
    };
    return {
      state: document.getElementById("state").dataset.state,
      stateText: document.getElementById("state").textContent,
      me: document.getElementById("me").textContent,
      messages: Array.from(document.querySelectorAll("#messages li.msg")).map((li) => ({
        seq: Number(li.dataset.seq),
        id: li.dataset.id,
        sender: text(li, ".sender"),
        content: text(li, ".content"),
        quote: text(li, ".quote"),
        reactions: Array.from(li.querySelectorAll(".reaction")).map((b) => b.textContent),
      })),
      online: Array.from(document.querySelectorAll("#online li")).map((li) => li.textContent),
      typing: document.getElementById("typing").textContent,
      replyingTo: document.getElementById("replying").classList.contains("on")
        ? document.getElementById("replying-to").textContent
        : null,
      outbox: Array.from(document.querySelectorAll("#outbox li")).map((li) => li.textContent),
      errors: Array.from(document.querySelectorAll("#log li")).map((li) => li.textContent),
      delivered: window.keelDemo ? window.keelDemo.delivered.slice() : null,
    };
  });
}

const contents = (v) => v.messages.map((m) => m.content);

/** Wait until fn(view) is true, polling the page's DOM; fail with what the page showed. */
async function until(page, who, what, fn, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await view(page);
    if (fn(last)) return last;
    if (Date.now() > deadline) {
      const err = new Error(`${who}'s page never showed: ${what}\n${JSON.stringify(last, null, 1)}`);
      err.view = last;
      throw err;
    }
    await page.waitForTimeout(50);
  }
}

async function sendFromPage(page, text) {
  await page.locator("#text").fill(text);
  await page.locator("#text").press("Enter");
}

const browsers = new Browsers(result.console, { executablePath: CHROMIUM, wait: WAIT });

async function openBrowser(who) {
  const { context, page } = await browsers.open(who);
  return { context, page };
}

async function main() {
  note("launch chromium");
  const alice = await openBrowser("alice");
  const bob = await openBrowser("bob");
  result.browserVersion = alice.context.browser() ? alice.context.browser().version() : null;

  note("alice opens /demo?token=…&channel=…");
  await alice.page.goto(
    `${BASE}/demo?token=${encodeURIComponent(TOKENS.alice)}&channel=${encodeURIComponent(CHANNEL)}`
  );
  note("bob opens /demo and joins with the form");
  await bob.page.goto(`${BASE}/demo`);
  await bob.page.locator("#token").fill(TOKENS.bob);
  await bob.page.locator("#channel").fill(CHANNEL);
  await bob.page.locator("#join").click();

  note("both connected, each sees the other online");
  await until(alice.page, "alice", "connected as alice", (v) => v.state === "open" && v.me === "as alice");
  await until(bob.page, "bob", "connected as bob", (v) => v.state === "open" && v.me === "as bob");
  result.aliceSawBobOnline = (
    await until(alice.page, "alice", "bob in the online list", (v) => v.online.includes("bob"))
  ).online;
  result.bobSawAliceOnline = (
    await until(bob.page, "bob", "alice in the online list", (v) => v.online.includes("alice"))
  ).online;

  note("alice types; bob sees the typing indicator");
  await alice.page.locator("#text").pressSequentially("Hi B", { delay: 30 });
  result.bobSawTyping = (
    await until(bob.page, "bob", '"alice is typing…"', (v) => v.typing === "alice is typing…")
  ).typing;

  note("alice and bob exchange messages");
  await sendFromPage(alice.page, "Hi Bob! 👋");
  await until(bob.page, "bob", "alice's first message", (v) => contents(v).includes("Hi Bob! 👋"));
  // bob replies to it (click the message) and reacts to it with 👍
  await bob.page.locator('#messages li.msg[data-seq="1"]').click();
  result.bobReplyingTo = (
    await until(bob.page, "bob", "the reply bar", (v) => (v.replyingTo || "").startsWith("alice: Hi Bob"))
  ).replyingTo;
  await sendFromPage(bob.page, "Hi Alice, good to see you.");
  await bob.page.locator('#messages li.msg[data-seq="1"] .add-reaction').click();
  const hello = (v) =>
    v.messages.length === 2 &&
    v.messages[1].content === "Hi Alice, good to see you." &&
    (v.messages[1].quote || "").includes("alice: Hi Bob!") &&
    v.messages[0].reactions.includes("👍 1");
  result.aliceAfterHello = await until(alice.page, "alice", "bob's reply and 👍", hello);
  result.bobAfterHello = await until(bob.page, "bob", "his reply and 👍", hello);

  note("bob's browser goes offline");
  // Chromium's offline emulation fails new connections but leaves open WebSockets alone;
  // keel.js drops its socket on the browser's "offline" event (as on a real outage).
  await bob.context.setOffline(true);
  result.bobOffline = (
    await until(bob.page, "bob", "a disconnected state", (v) => v.state !== "open")
  ).state;
  await sendFromPage(bob.page, "Sorry, train tunnel. Back soon!");
  result.bobOutboxWhileOffline = (
    await until(bob.page, "bob", "the queued message in the outbox", (v) => v.outbox.length === 1)
  ).outbox;

  note("alice sends five messages while bob is offline");
  for (let i = 1; i <= 5; i++) {
    await sendFromPage(alice.page, `Update ${i} of 5`);
    await until(alice.page, "alice", `update ${i}`, (v) => contents(v).includes(`Update ${i} of 5`));
  }
  result.aliceSawBobLeave = (
    await until(alice.page, "alice", "bob gone from the online list", (v) => !v.online.includes("bob"))
  ).online;
  await bob.page.waitForTimeout(500);
  result.bobWhileOffline = await view(bob.page);

  note("bob comes back online");
  const back = Date.now();
  await bob.context.setOffline(false);
  await until(bob.page, "bob", "connected again", (v) => v.state === "open");
  const all = (v) => v.messages.length >= 8 && v.outbox.length === 0;
  result.bob = await until(bob.page, "bob", "all eight messages", all);
  result.bobCatchUpMs = Date.now() - back;
  result.alice = await until(alice.page, "alice", "all eight messages", all);
  result.aliceSawBobBack = (
    await until(alice.page, "alice", "bob online again", (v) => v.online.includes("bob"))
  ).online;
  // Give stray duplicates (if any) a moment to show up before the final reading.
  await bob.page.waitForTimeout(700);
  result.bob = await view(bob.page);
  result.alice = await view(alice.page);

  note("screenshots");
  await alice.page.locator("#text").pressSequentially("See you at", { delay: 30 });
  await until(bob.page, "bob", "alice typing again", (v) => v.typing === "alice is typing…");
  result.screenshots.bob = join(OUT_DIR, "demo-bob.png");
  result.screenshots.alice = join(OUT_DIR, "demo-alice.png");
  await bob.page.screenshot({ path: result.screenshots.bob, fullPage: true });
  await alice.page.screenshot({ path: result.screenshots.alice, fullPage: true });
  result.ok = true;
}

try {
  await main();
} catch (err) {
  result.ok = false;
  result.step = step;
  result.error = String((err && err.stack) || err);
} finally {
  await browsers.closeAll();
  result.ms = Date.now() - started;
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(result.ok ? 0 : 1);
}
