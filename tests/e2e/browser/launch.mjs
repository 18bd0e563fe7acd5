// The Chromium the browser tests drive: one persistent context (its own profile) per user,
// headless, its console warnings and errors collected; and closing them all at the end.
//
//   const browsers = new Browsers(result.console, { executablePath, wait });
//   const { context, page } = await browsers.open("alice");
//   ...
//   await browsers.closeAll();

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export class Browsers {
  // consoles: {who: [lines]} that each page's console warnings/errors are appended to.
  constructor(consoles, { executablePath, wait }) {
    this.consoles = consoles;
    this.executablePath = executablePath;
    this.wait = wait;
    this.profiles = [];
    this.contexts = [];
  }

  async open(who) {
    const dir = mkdtempSync(join(tmpdir(), `keel-chromium-${who}-`));
    this.profiles.push(dir);
    const context = await chromium.launchPersistentContext(dir, {
      executablePath: this.executablePath,
      headless: true,
      args: ARGS,
      viewport: { width: 1100, height: 900 },
      timeout: 60000,
    });
    this.contexts.push(context);
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(this.wait);
    page.on("console", (msg) => {
      if (msg.type() === "error" || msg.type() === "warning") {
        this.consoles[who].push(`${msg.type()}: ${msg.text()}`);
      }
    });
    page.on("pageerror", (err) => this.consoles[who].push(`pageerror: ${err.message}`));
    return { context, page };
  }

  async closeAll() {
    for (const context of this.contexts) {
      try {
        await context.close();
      } catch (e) {
        /* already gone */
      }
    }
    for (const dir of this.profiles) rmSync(dir, { recursive: true, force: true });
  }
}
