// Attachments through Keel's demo page and keel.js's upload() in real headless Chromium
// (playwright-core), against `keel serve all`.
//
// Run by tests/e2e/test_browser_attachments.py; usable by hand:
//
//   KEEL_SCENARIO=demo KEEL_DEMO_BASE=http://127.0.0.1:8080 KEEL_CHANNEL=<channel id> \
//   KEEL_ALICE_TOKEN=<token> KEEL_BOB_TOKEN=<token> KEEL_IMAGE=/path/photo.jpg \
//   KEEL_OUT_DIR=/tmp/keel-browser node tests/e2e/browser/attachments.mjs
//
// KEEL_SCENARIO=demo: alice and bob open /demo?token=…&channel=…; alice attaches the image
// with the page's 📎 button (it uploads at once, with progress), writes a caption and
// sends; both pages must show the message with the thumbnail loaded (an <img> whose
// naturalWidth > 0, fetched from the file service). What the pages show is read from the
// DOM.
//
// KEEL_SCENARIO=resume (alice only, KEEL_CHUNK bytes per PATCH): keel.js's upload() of the
// image where the second PATCH fails on the network (Playwright aborts the request, so no
// byte of it reaches the server) — keel.js must ask the server's offset (HEAD) and go on;
// then the page aborts the upload (AbortSignal) after three chunks, and a second upload()
// with resumeUrl finishes it from the server's offset, without a new creation. The page
// then sends the file as an attachment, so the test can download it and compare bytes.
// Every tus request the page made is recorded in `requests`.
//
// The last line of stdout is one JSON object ({ok, step, error, ...}); exit code 1 on
// failure.

import { mkdtempSync, mkdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { Browsers } from "./launch.mjs";

const env = process.env;
const SCENARIO = env.KEEL_SCENARIO || "demo";
const BASE = (env.KEEL_DEMO_BASE || "").replace(/\/$/, "");
const CHANNEL = env.KEEL_CHANNEL || "";
const TOKENS = { alice: env.KEEL_ALICE_TOKEN || "", bob: env.KEEL_BOB_TOKEN || "" };
const IMAGE = env.KEEL_IMAGE || "";
const CHUNK = Number(env.KEEL_CHUNK || 16384);
const CAPTION = env.KEEL_CAPTION || "From the beach";
const OUT_DIR = env.KEEL_OUT_DIR || mkdtempSync(join(tmpdir(), "keel-browser-out-"));
const CHROMIUM = env.KEEL_CHROMIUM || "/usr/bin/chromium";
const WAIT = Number(env.KEEL_BROWSER_WAIT_MS || 15000);

if (!BASE || !CHANNEL || !TOKENS.alice || !IMAGE || (SCENARIO === "demo" && !TOKENS.bob)) {
  console.error("set KEEL_DEMO_BASE, KEEL_CHANNEL, KEEL_ALICE_TOKEN, KEEL_BOB_TOKEN and KEEL_IMAGE");
  process.exit(2);
}
mkdirSync(OUT_DIR, { recursive: true });

const result = { ok: false, scenario: SCENARIO, steps: [], console: { alice: [], bob: [] } };
let step = "start";
const started = Date.now();

function note(name) {
  step = name;
  result.steps.push({ step: name, ms: Date.now() - started });
  console.error(`[attachments.mjs +${Date.now() - started}ms] ${name}`);
}

/** What the demo page shows of its messages and their attachments, read from the DOM. */
function view(page) {
  return page.evaluate(() => ({
    state: document.getElementById("state").dataset.state,
    attachment: {
      state: document.getElementById("attachment").dataset.state,
      status: document.getElementById("attachment-status").textContent,
    },
    sendDisabled: document.getElementById("send").disabled,
    messages: Array.from(document.querySelectorAll("#messages li.msg")).map((li) => ({
      seq: Number(li.dataset.seq),
      sender: li.querySelector(".sender").textContent,
      content: li.querySelector(".content").textContent,
      attachments: Array.from(li.querySelectorAll(".attachment")).map((a) => {
        const img = a.querySelector("img");
        return {
          fileId: a.dataset.fileId,
          href: a.getAttribute("href"),
          title: a.title,
          img: img && {
            src: img.getAttribute("src"),
            alt: img.alt,
            width: img.getAttribute("width"),
            height: img.getAttribute("height"),
            complete: img.complete,
            naturalWidth: img.naturalWidth,
            naturalHeight: img.naturalHeight,
          },
        };
      }),
    })),
    outbox: Array.from(document.querySelectorAll("#outbox li")).map((li) => li.textContent),
    errors: Array.from(document.querySelectorAll("#log li")).map((li) => li.textContent),
  }));
}

/** Wait until fn(view) is true, polling the page's DOM; fail with what the page showed. */
async function until(page, who, what, fn, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const last = await view(page);
    if (fn(last)) return last;
    if (Date.now() > deadline) {
      throw new Error(`${who}'s page never showed: ${what}\n${JSON.stringify(last, null, 1)}`);
    }
    await page.waitForTimeout(50);
  }
}

const browsers = new Browsers(result.console, { executablePath: CHROMIUM, wait: WAIT });

async function openDemo(who) {
  const { page } = await browsers.open(who);
  const query = `token=${encodeURIComponent(TOKENS[who])}&channel=${encodeURIComponent(CHANNEL)}`;
  await page.goto(`${BASE}/demo?${query}`);
  await until(page, who, "connected", (v) => v.state === "open");
  return page;
}

const withImage = (v) =>
  v.messages.find((m) => m.attachments.some((a) => a.img && a.img.complete && a.img.naturalWidth > 0));

async function demo() {
  note("alice and bob open the demo page");
  const alice = await openDemo("alice");
  const bob = await openDemo("bob");

  note("alice attaches the image: it uploads at once");
  await alice.locator("#attach").setInputFiles(IMAGE);
  result.aliceUploaded = await until(alice, "alice", "the attachment ready", (v) => v.attachment.state === "ready");

  note("alice sends it with a caption");
  await alice.locator("#text").fill(CAPTION);
  await alice.locator("#text").press("Enter");

  note("bob's page shows the message with its thumbnail loaded");
  const bobView = await until(bob, "bob", "a loaded thumbnail", withImage);
  result.bob = withImage(bobView);
  result.aliceView = await until(alice, "alice", "her own thumbnail", withImage);
  result.alice = withImage(result.aliceView);
  result.aliceAfterSend = result.aliceView.attachment;
  result.errors = { alice: result.aliceView.errors, bob: bobView.errors };
  result.screenshot = join(OUT_DIR, "attachments-bob.png");
  await bob.screenshot({ path: result.screenshot, fullPage: true });
}

/** Runs in the page: the two upload() calls and the send (see the header). */
async function uploadAbortResume({ b64, name, type, chunk, channel }) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const file = new File([bytes], name, { type });
  const client = window.keelDemo.client;
  const out = { size: file.size, first: null, second: null };

  const controller = new AbortController();
  const progress = [];
  try {
    await client.upload(file, {
      chunkSize: chunk,
      signal: controller.signal,
      onProgress: (sent) => {
        progress.push(sent);
        if (sent >= 3 * chunk) controller.abort();
      },
    });
    out.first = { completed: true, progress };
  } catch (err) {
    out.first = { code: err.code, uploadUrl: err.uploadUrl || null, progress };
  }

  const resumed = [];
  const done = await client.upload(file, {
    chunkSize: chunk,
    resumeUrl: out.first.uploadUrl,
    onProgress: (sent) => resumed.push(sent),
  });
  out.second = { result: done, progress: resumed };

  const deadline = Date.now() + 15000;
  const seen = new Promise((resolve, reject) => {
    const check = () => {
      const shown = document.querySelector(`#messages .attachment[data-file-id="${done.fileId}"]`);
      if (shown) return resolve(shown.getAttribute("href"));
      if (Date.now() > deadline) return reject(new Error("the sent attachment never showed"));
      setTimeout(check, 50);
    };
    check();
  });
  out.sent = await client.send(channel, "", { attachmentIds: [done.fileId] });
  out.downloadUrl = await seen;
  return out;
}

async function resume() {
  note("alice opens the demo page");
  const alice = await openDemo("alice");
  // Every tus request the page makes passes here (preflights do not), in order.
  result.requests = [];
  let patches = 0;
  const isTus = (url) => url.pathname === "/files/tus" || url.pathname.startsWith("/files/tus/");
  await alice.route(isTus, async (route) => {
    const request = route.request();
    const offset = request.headers()["upload-offset"];
    const entry = {
      method: request.method(),
      url: request.url(),
      offset: offset === undefined ? null : Number(offset),
      failed: request.method() === "PATCH" && ++patches === 2,
    };
    result.requests.push(entry);
    if (entry.failed) await route.abort("connectionreset");
    else await route.continue();
  });

  note("upload: a PATCH fails on the network, then the page aborts, then resumes");
  const bytes = readFileSync(IMAGE);
  result.page = await alice.evaluate(uploadAbortResume, {
    b64: bytes.toString("base64"),
    name: basename(IMAGE),
    type: "image/jpeg",
    chunk: CHUNK,
    channel: CHANNEL,
  });
  result.errors = { alice: (await view(alice)).errors };
}

try {
  if (SCENARIO === "demo") await demo();
  else if (SCENARIO === "resume") await resume();
  else throw new Error(`unknown KEEL_SCENARIO ${SCENARIO}`);
  result.ok = true;
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
