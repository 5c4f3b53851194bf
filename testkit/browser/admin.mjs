// The management web in headless Chromium, end to end (testkit/tests/browser.rs starts the relay
// and a backend, then runs this with their addresses):
// log in → create a tenant → create a credential and read its secret from the page → start a
// real connector with it → see its session appear on the tenant page → send a request through
// the relay, and queue two messages it delivers (one the backend refuses) → find the request in
// the audit log → revoke the credential and see the session go → queue a message that waits →
// the tenant's Queue page: counts, a message's detail, the settings form, cancelling the waiting
// message → drain this relay node on the Nodes page and resume it.
// Screenshots of the main pages go to SCREENSHOT_DIR. Exits non-zero on the first failure.
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
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
const CONNECTOR = env("WALK_CONNECTOR_BIN");
const BACKEND = env("BACKEND_URL");
const SHOTS = env("SCREENSHOT_DIR");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TENANT = "browser-co";
const XSS = '"><img src=x onerror=alert(1)>';

mkdirSync(SHOTS, { recursive: true });
const step = (msg) => console.log(`browser: ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function relayGet(path) {
  return new Promise((resolve, reject) => {
    const req = https.get(RELAY + path, { ca: readFileSync(CA), timeout: 10000 }, (res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on("timeout", () => req.destroy(new Error("relay request timed out")));
    req.on("error", reject);
  });
}

function relaySend(method, path, headers, body) {
  return new Promise((resolve, reject) => {
    const req = https.request(RELAY + path, { method, headers, ca: readFileSync(CA), timeout: 10000 }, (res) => {
      let text = "";
      res.on("data", (c) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: text }));
    });
    req.on("timeout", () => req.destroy(new Error("relay request timed out")));
    req.on("error", reject);
    req.end(body);
  });
}

async function enqueue(path, body) {
  const answer = await relaySend("POST", `/queue/${TENANT}/app${path}`, { "content-type": "application/json" }, body);
  if (answer.status !== 202) throw new Error(`queueing ${path}: ${answer.status} ${answer.body}`);
  return answer.headers["x-relay-message-id"];
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let connector;
let page;
const dialogs = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: ADMIN });
  page = await context.newPage();
  page.setDefaultTimeout(15000);
  // Confirmation dialogs are accepted; any alert() would mean injected script ran.
  page.on("dialog", async (d) => {
    dialogs.push(`${d.type()}: ${d.message()}`);
    await d.accept();
  });
  const cspViolations = [];
  page.on("console", (m) => {
    if (m.type() === "error") cspViolations.push(m.text());
  });

  step("log in");
  await page.goto(`${ADMIN}/`);
  if (!page.url().endsWith("/login")) throw new Error(`not sent to the login page: ${page.url()}`);
  await page.screenshot({ path: join(SHOTS, "login.png") });
  await page.getByLabel("User name").fill(USER);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "__Host-relay-session");
  if (!session || !session.httpOnly || !session.secure || session.sameSite !== "Strict") {
    throw new Error(`session cookie not as expected: ${JSON.stringify(cookies)}`);
  }

  step("create a tenant");
  await page.getByRole("link", { name: "Tenants" }).click();
  await page.getByLabel("New tenant").fill(TENANT);
  await page.getByRole("button", { name: "Create tenant" }).click();
  await page.getByText("Tenant created.").waitFor();

  step("create a credential and read its secret from the page");
  await page.locator("#cred-label").fill("browser test"); // the credential form's label (pairing tokens have one too)
  await page.getByRole("button", { name: "Create credential" }).click();
  const secret = (await page.locator("#secret").textContent()).trim();
  if (!/^rsk_[0-9a-f]+_[A-Za-z0-9_-]{43}$/.test(secret)) throw new Error(`not a secret: ${secret}`);
  await page.getByRole("button", { name: "Copy" }).click();
  await page.getByRole("button", { name: /Copied|Selected/ }).waitFor();
  const copied = await page.evaluate(() => navigator.clipboard.readText()).catch(() => null);
  if (copied !== null && copied !== secret) throw new Error("the copy button copied something else");
  await page.screenshot({ path: join(SHOTS, "credential-created.png") });

  step("start a real connector with it");
  const dir = mkdtempSync(join(tmpdir(), "browser-connector-"));
  const secretFile = join(dir, "secret");
  writeFileSync(secretFile, secret + "\n", { mode: 0o600 });
  const transport = process.env.CONNECTOR_TRANSPORT || "auto";
  connector = spawn(CONNECTOR, [
    "run", "--server", RELAY, "--tenant", TENANT, "--secret-file", secretFile,
    "--ca-cert", CA, "--target", `app=${BACKEND}`, "--transport", transport,
  ], { stdio: ["ignore", "inherit", "inherit"] });

  step("see its session appear on the tenant page (no reload)");
  await page.goto(`${ADMIN}/tenants/${TENANT}`);
  await page.locator("#sessions").getByText(/quic|tcp/).first().waitFor({ timeout: 30000 });
  await page.screenshot({ path: join(SHOTS, "tenant.png"), fullPage: true });

  step("send a request through the relay");
  const answer = await relayGet(`/relay/${TENANT}/app/from-the-browser-test`);
  if (answer.status !== 200) throw new Error(`relay answered ${answer.status}: ${answer.body}`);
  const requestId = answer.headers["x-relay-request-id"];
  if (!requestId) throw new Error("no x-relay-request-id");

  step("queue two messages while the connector is online: one delivered, one the backend refuses");
  await enqueue("/orders", JSON.stringify({ order: 41, items: ["tea"] }));
  const refused = await enqueue("/status/400", JSON.stringify({ order: "not a number" }));

  step(`find request ${requestId} in the audit log`);
  let found = false;
  for (let i = 0; i < 40 && !found; i++) {
    await page.goto(`${ADMIN}/audit?tenant=${TENANT}`);
    found = (await page.getByText(requestId).count()) > 0;
    if (!found) await sleep(250);
  }
  if (!found) throw new Error("the request never appeared in the audit log");
  await page.screenshot({ path: join(SHOTS, "audit.png"), fullPage: true });
  await page.getByRole("link", { name: "Dashboard" }).click();
  await page.locator("svg.chart rect").first().waitFor();
  await page.screenshot({ path: join(SHOTS, "dashboard.png"), fullPage: true });

  step("the Nodes page counts the connector's sessions on this relay node");
  await page.getByRole("link", { name: "Nodes" }).click();
  await page.getByRole("heading", { name: "Relay nodes" }).waitFor();
  const sessions = await page.locator("tr", { hasText: "test-node" }).locator("td").nth(4).textContent();
  if (!(Number(sessions) >= 1)) throw new Error(`the Nodes page shows ${sessions} sessions`);
  await page.screenshot({ path: join(SHOTS, "nodes.png"), fullPage: true });

  step("a display name full of markup stays text");
  await page.goto(`${ADMIN}/tenants/${TENANT}`);
  await page.getByLabel("Display name").fill(XSS);
  await page.getByRole("button", { name: "Save settings" }).click();
  await page.getByText("Settings saved.").waitFor();
  const h1 = await page.locator("h1").first().textContent();
  if (!h1.includes(XSS)) throw new Error(`display name not shown as text: ${h1}`);
  if ((await page.locator("img").count()) !== 0) throw new Error("markup from data was rendered");
  await page.goto(`${ADMIN}/tenants`);
  if ((await page.locator("img").count()) !== 0) throw new Error("markup rendered in the tenant list");
  await page.screenshot({ path: join(SHOTS, "tenants.png"), fullPage: true });

  step("revoke the credential and see the session go");
  await page.goto(`${ADMIN}/tenants/${TENANT}`);
  await page.getByRole("button", { name: /^Revoke credential/ }).click();
  await page.getByText("Credential revoked").waitFor();
  await page.locator("#sessions").getByText("No connector online.").waitFor({ timeout: 30000 });

  step("queue a message while no connector is online: it waits");
  const waiting = await enqueue("/orders/42", JSON.stringify({ order: 42, items: ["coffee", "milk"] }));

  step("the tenant's Queue page counts messages by state");
  await page.goto(`${ADMIN}/tenants/${TENANT}`);
  await page.getByRole("link", { name: "Open the Queue page →" }).click();
  await page.getByRole("heading", { name: /^Queue \(/ }).waitFor();
  const count = async (state) => Number(await page.locator(`a.stat:has(span:text-is("${state}")) .n`).textContent());
  for (let i = 0; i < 40 && !((await count("failed")) === 1 && (await count("delivered")) === 1); i++) {
    await sleep(250);
    await page.reload();
  }
  if ((await count("failed")) !== 1 || (await count("delivered")) !== 1 || (await count("queued")) !== 1) {
    throw new Error("the Queue page does not count one failed, one delivered and one queued message");
  }
  await page.screenshot({ path: join(SHOTS, "queue.png"), fullPage: true });

  step("a message's detail shows its headers and body");
  await page.locator(`a[href$="/queue/${waiting}"]`).click();
  await page.getByRole("heading", { name: "Request body" }).waitFor();
  if (!(await page.locator("pre").first().textContent()).includes("coffee")) throw new Error("the body is not shown");
  await page.locator("code", { hasText: /^content-type$/ }).first().waitFor();
  await page.screenshot({ path: join(SHOTS, "queue-message.png"), fullPage: true });

  step("the refused message shows the backend's answer; retry it if the page offers to");
  await page.goto(`${ADMIN}/tenants/${TENANT}/queue/${refused}`);
  await page.getByRole("heading", { name: "Response 400" }).waitFor();
  const retry = page.getByRole("button", { name: "Retry now" });
  if ((await retry.count()) > 0) {
    await retry.click();
    await page.getByText("Message queued again").waitFor();
  }

  step("save the queue settings");
  await page.goto(`${ADMIN}/tenants/${TENANT}/queue`);
  await page.getByLabel("Order").selectOption("ordered");
  await page.getByLabel("Time to live").fill("2h");
  await page.getByRole("button", { name: "Save queue settings" }).click();
  await page.getByText("Queue settings saved").waitFor();
  if ((await page.getByLabel("Time to live").inputValue()) !== "2h") throw new Error("the time to live was not kept");

  step("cancel the waiting message from the list");
  await page.getByRole("button", { name: `Cancel message ${waiting.slice(0, 10)}…` }).click();
  await page.getByText("Message cancelled").waitFor();
  if ((await count("cancelled")) !== 1) throw new Error("the cancelled message is not counted");

  step("drain this relay node on the Nodes page, then resume it");
  await page.getByRole("link", { name: "Nodes" }).click();
  await page.getByRole("heading", { name: "Relay nodes" }).waitFor();
  await page.getByRole("button", { name: /^Drain node test-node/ }).click();
  await page.getByText("Node draining").waitFor();
  await page.getByRole("button", { name: /^Resume node test-node/ }).click();
  await page.getByText("Node active again").waitFor();
  await page.getByRole("button", { name: /^Drain node test-node/ }).waitFor();

  step("log out");
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("button", { name: "Log in" }).waitFor();
  await page.goto(`${ADMIN}/tenants`);
  if (!page.url().endsWith("/login")) throw new Error("still logged in after logout");

  const alerts = dialogs.filter((d) => d.startsWith("alert"));
  if (alerts.length) throw new Error(`script ran: ${alerts}`);
  if (!dialogs.some((d) => d.startsWith("confirm: Revoke"))) throw new Error("revoking asked no confirmation");
  if (!dialogs.some((d) => d.startsWith("confirm: Drain node"))) throw new Error("draining asked no confirmation");
  if (!dialogs.some((d) => d.startsWith("confirm: Cancel message"))) throw new Error("cancelling asked no confirmation");
  const csp = cspViolations.filter((m) => m.includes("Content Security Policy"));
  if (csp.length) throw new Error(`CSP violations: ${csp.join("\n")}`);
  step("ok");
} catch (e) {
  if (page) {
    console.error(`browser: failed on ${page.url()}`);
    await page.screenshot({ path: join(SHOTS, "failure.png"), fullPage: true }).catch(() => {});
    console.error((await page.content().catch(() => "")).slice(0, 4000));
  }
  throw e;
} finally {
  if (connector) connector.kill("SIGTERM");
  await browser.close();
}
