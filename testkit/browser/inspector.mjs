// The connector's inspector page in headless Chromium (testkit/tests/inspector.rs starts a relay,
// a backend and an embedded connector with its inspector, and sends one request first):
// the request is listed → its detail shows the body and a redacted Authorization → Replay
// reaches the backend and the replay is listed. Screenshot: SCREENSHOT_DIR/inspector.png.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const URL = env("INSPECTOR_URL");
const SHOTS = env("SCREENSHOT_DIR");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(SHOTS, { recursive: true });
const step = (msg) => console.log(`inspector: ${msg}`);

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(URL);
  const row = page.locator("#requests tr", { hasText: "/api/orders?customer=42" });
  await row.waitFor({ timeout: 10000 });
  step("the request is listed");
  // The page's CSP allows only its own files: the stylesheet must have applied.
  const bg = await page.locator("header").evaluate((e) => getComputedStyle(e).backgroundColor);
  if (bg !== "rgb(29, 35, 48)") throw new Error(`stylesheet not applied (header background ${bg})`);
  if (!(await row.textContent()).includes("200")) throw new Error("status 200 not shown");
  await row.click();
  await page.locator("#detail h2", { hasText: "/api/orders" }).waitFor({ timeout: 10000 });
  const detail = await page.locator("#detail").textContent();
  if (!detail.includes("[redacted]")) throw new Error("Authorization not shown as redacted");
  if (detail.includes("browser-secret")) throw new Error("the secret reached the page");
  if (!detail.includes('"item":"coffee"')) throw new Error("request body not shown");
  step("detail with a redacted Authorization");
  await page.click("#replay");
  await page.locator("#replay-result", { hasText: "Replayed as" }).waitFor({ timeout: 10000 });
  await page.locator("#requests tr", { hasText: "↻ /api/orders" }).waitFor({ timeout: 10000 });
  step("replayed");
  await page.screenshot({ path: join(SHOTS, "inspector.png"), fullPage: true });
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  step("ok");
} finally {
  await browser.close();
}
