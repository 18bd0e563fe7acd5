// The demo page's notification bell in real headless Chromium (playwright-core).
//
// Run by tests/e2e/test_browser.py; usable by hand against `keel serve all`:
//
//   KEEL_DEMO_BASE=http://127.0.0.1:8080 KEEL_CHANNEL=<channel id> KEEL_TOKEN=<token> \
//   KEEL_OUT_DIR=/tmp/keel-browser node tests/e2e/browser/notifications.mjs
//
// The user opens /demo?token=…&channel=…; the bell shows the unread count of the inbox
// (the test sent one notification before). The script then prints the line READY and
// waits: the test sends another notification over gRPC, and the page must show the new
// count and the new item without a reload. It opens the bell's dropdown, reads the
// inbox, clicks "Mark all read" and waits for the count to go. Everything checked is read
// from the page's DOM. The last line of stdout is one JSON object: {ok, steps, before,
// live, dropdown, afterMarkAll, screenshot, ...} (ok=false with error and step on
// failure; the exit code is then 1).

import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = process.env;
const BASE = (env.KEEL_DEMO_BASE || "").replace(/\/$/, "");
const CHANNEL = env.KEEL_CHANNEL || "";
const TOKEN = env.KEEL_TOKEN || "";
const OUT_DIR = env.KEEL_OUT_DIR || mkdtempSync(join(tmpdir(), "keel-browser-out-"));
const CHROMIUM = env.KEEL_CHROMIUM || "/usr/bin/chromium";
const WAIT = Number(env.KEEL_BROWSER_WAIT_MS || 15000);

if (!BASE || !CHANNEL || !TOKEN) {
  console.error("set KEEL_DEMO_BASE, KEEL_CHANNEL and KEEL_TOKEN");
  process.exit(2);
}
mkdirSync(OUT_DIR, { recursive: true });

const result = { ok: false, steps: [], console: [] };
let step = "start";
const started = Date.now();

function note(name) {
  step = name;
  result.steps.push({ step: name, ms: Date.now() - started });
  console.error(`[notifications.mjs +${Date.now() - started}ms] ${name}`);
}

/** What the page shows of its notifications, read from the DOM. */
function view(page) {
  return page.evaluate(() => {
    const $ = (id) => document.getElementById(id);
    return {
      state: $("state").dataset.state,
      bellHidden: $("bell").hidden,
      badge: $("unread").hidden ? "" : $("unread").textContent,
      inboxOpen: !$("inbox").hidden,
      items: Array.from(document.querySelectorAll("#notifications li.notification")).map((li) => ({
        id: li.dataset.id,
        title: li.querySelector(".title").textContent,
        body: li.querySelector(".body").textContent,
        unread: li.classList.contains("unread"),
      })),
      pageLoad: window.__keelPageLoad || null,
      errors: Array.from(document.querySelectorAll("#log li")).map((li) => li.textContent),
    };
  });
}

async function until(page, what, fn, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await view(page);
    if (fn(last)) return last;
    if (Date.now() > deadline) {
      throw new Error(`the page never showed: ${what}\n${JSON.stringify(last, null, 1)}`);
    }
    await page.waitForTimeout(50);
  }
}

const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"];
let profile = null;
let context = null;

async function main() {
  note("launch chromium");
  profile = mkdtempSync(join(tmpdir(), "keel-chromium-bell-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1100, height: 800 },
    timeout: 60000,
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(WAIT);
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") result.console.push(`${msg.type()}: ${msg.text()}`);
  });
  page.on("pageerror", (err) => result.console.push(`pageerror: ${err.message}`));

  note("open /demo?token=…&channel=…");
  await page.goto(`${BASE}/demo?token=${encodeURIComponent(TOKEN)}&channel=${encodeURIComponent(CHANNEL)}`);
  // A mark that a reload would wipe out.
  await page.evaluate(() => { window.__keelPageLoad = Math.random().toString(36).slice(2); });
  result.before = await until(page, "connected, the bell with 1 unread",
                              (v) => v.state === "open" && !v.bellHidden && v.badge === "1");

  note("READY: the test sends a notification");
  process.stdout.write("READY\n");
  result.live = await until(page, "the bell with 2 unread", (v) => v.badge === "2");

  note("open the dropdown");
  await page.locator("#bell").click();
  result.dropdown = await until(page, "the dropdown with both notifications",
                                (v) => v.inboxOpen && v.items.length === 2);
  result.screenshot = join(OUT_DIR, "demo-bell.png");
  await page.screenshot({ path: result.screenshot });

  note("mark all read");
  await page.locator("#mark-all-read").click();
  result.afterMarkAll = await until(page, "no unread count, no unread item",
                                    (v) => v.badge === "" && v.items.every((i) => !i.unread));
  result.ok = true;
}

try {
  await main();
} catch (err) {
  result.ok = false;
  result.step = step;
  result.error = String((err && err.stack) || err);
} finally {
  try {
    if (context) await context.close();
  } catch (e) {
    /* already gone */
  }
  if (profile) rmSync(profile, { recursive: true, force: true });
  result.ms = Date.now() - started;
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(result.ok ? 0 : 1);
}
