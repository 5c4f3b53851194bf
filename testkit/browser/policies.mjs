// A tenant's access policies in headless Chromium (testkit/tests/browser.rs starts a relay that
// trusts loopback as a load balancer, a connected tenant and a backend, then runs this):
// log in → the tenant's Access policies page → an IP deny rule → real visitor requests through
// the relay are refused (403) from the denied block only → an API key rule and a key created on
// the page → without the key 401, with it 200 → revoke the key → with it 401 again.
// A screenshot of the page goes to SCREENSHOT_DIR. Exits non-zero on the first failure.
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import https from "node:https";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const ADMIN = env("ADMIN_URL");
const USER = env("ADMIN_USER");
const PASSWORD = env("ADMIN_PASSWORD");
const RELAY = env("RELAY_URL");
const CA = env("RELAY_CA");
const TENANT = env("TENANT");
const SHOTS = env("SCREENSHOT_DIR");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const DENIED = "203.0.113.9";
const ALLOWED = "192.0.2.1";

mkdirSync(SHOTS, { recursive: true });
const step = (msg) => console.log(`browser: ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A visitor request from `from` (the relay trusts loopback's X-Forwarded-For).
function visit(from, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = https.get(`${RELAY}/relay/${TENANT}/app/policy-check`, {
      ca: readFileSync(CA), timeout: 10000, headers: { "x-forwarded-for": from, ...headers },
    }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("timeout", () => req.destroy(new Error("relay request timed out")));
    req.on("error", reject);
  });
}

// Relays apply a change within a second or so: wait for the expected status.
async function expectStatus(want, from, headers = {}) {
  let got;
  for (let i = 0; i < 60; i++) {
    got = await visit(from, headers);
    if (got === want) return;
    await sleep(200);
  }
  throw new Error(`a visitor from ${from} got ${got}, not ${want}`);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let page;
const dialogs = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on("dialog", async (d) => {
    dialogs.push(`${d.type()}: ${d.message()}`);
    await d.accept();
  });
  const consoleErrors = [];
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
  });

  step("log in");
  await page.goto(`${ADMIN}/login`);
  await page.getByLabel("User name").fill(USER);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();

  step("open the tenant's Access policies page");
  await page.goto(`${ADMIN}/tenants/${TENANT}`);
  await page.getByRole("link", { name: "Open the Access policies page →" }).click();
  await page.getByRole("heading", { name: /^Access policies/ }).waitFor();
  await page.getByText("No access policy").waitFor();
  await expectStatus(200, DENIED);

  step("deny 203.0.113.0/24 at the tenant scope");
  await page.getByLabel("IP deny list", { exact: true }).selectOption("on");
  await page.getByLabel("These are refused (403)").fill("203.0.113.0/24");
  await page.getByRole("button", { name: "Save IP deny list" }).click();
  await page.getByText("Policy saved").waitFor();
  await page.getByRole("cell", { name: "203.0.113.0/24" }).waitFor();

  step("a visitor from the denied block gets 403, another one 200");
  await expectStatus(403, DENIED);
  await expectStatus(200, ALLOWED);

  step("require an API key and create one");
  await page.getByLabel("API key required", { exact: true }).selectOption("on");
  await page.getByRole("button", { name: "Save API key rule" }).click();
  await page.getByText("Policy saved").waitFor();
  await page.getByLabel("Label").fill("browser test");
  await page.getByRole("button", { name: "Create API key" }).click();
  const key = (await page.locator("#secret").textContent()).trim();
  if (!/^rak_[0-9a-f]+_[A-Za-z0-9_-]{43}$/.test(key)) throw new Error(`not an API key: ${key}`);
  const id = key.split("_")[1];
  await page.getByRole("link", { name: "← Back" }).click();
  await page.getByRole("heading", { name: /^Access policies/ }).waitFor();
  if ((await page.content()).includes(key)) throw new Error("the key is shown again");

  step("without the key 401, with it 200, from the denied block still 403");
  await expectStatus(401, ALLOWED);
  await expectStatus(200, ALLOWED, { "x-relay-key": key });
  await expectStatus(403, DENIED, { "x-relay-key": key });
  await page.screenshot({ path: join(SHOTS, "policies.png"), fullPage: true });

  step("revoke the key: it is refused again");
  await page.getByRole("button", { name: `Revoke API key ${id}` }).click();
  await page.getByText("API key revoked").waitFor();
  await expectStatus(401, ALLOWED, { "x-relay-key": key });

  if (!dialogs.some((d) => d.startsWith("confirm: Revoke API key"))) throw new Error("revoking asked no confirmation");
  if (dialogs.some((d) => d.startsWith("alert"))) throw new Error(`script ran: ${dialogs}`);
  const csp = consoleErrors.filter((m) => m.includes("Content Security Policy"));
  if (csp.length) throw new Error(`CSP violations: ${csp.join("\n")}`);
  step("ok");
} catch (e) {
  if (page) {
    console.error(`browser: failed on ${page.url()}`);
    await page.screenshot({ path: join(SHOTS, "policies-failure.png"), fullPage: true }).catch(() => {});
    console.error((await page.content().catch(() => "")).slice(0, 4000));
  }
  throw e;
} finally {
  await browser.close();
}
