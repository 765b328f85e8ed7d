// The dashboard's end-to-end test, driven by tests/dashboard.rs: the system Chromium
// (headless, through playwright-core) against a broker the Rust test started with an HTTP
// listener and a token, a connected MQTT client "sensor-kick" and a retained message on
// "dash/retained/one".
//
// usage: node e2e.js <dashboard URL> <token> <screenshot dir>
// Prints what it measured, then "ok", and exits 0 when every step passed; exits 1 with the reason on stderr.
"use strict";

const path = require("node:path");
const fs = require("node:fs");
const os = require("node:os");
const { chromium } = require("playwright-core");

const [url, token, shots] = process.argv.slice(2);
const CHROMIUM = process.env.SAGITTA_CHROMIUM || "/usr/bin/chromium";
const STEP = 10000; // ms: the longest any one expectation may take

// Whatever happens, the process ends: a watchdog well inside the Rust test's limit.
setTimeout(() => { console.error("watchdog: the test took longer than 50 s"); process.exit(1); }, 50000).unref();

function fail(message) { throw new Error(message); }

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "sagitta-chromium-"));
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // A closed network: nothing may try to reach the outside.
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      `--disk-cache-dir=${profile}`],
  });
  const external = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1360, height: 860 }, deviceScaleFactor: 1 });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP);
    page.on("dialog", (d) => d.accept());
    page.on("pageerror", (e) => { console.error(`page error: ${e.message}`); });
    page.on("request", (r) => { const u = new URL(r.url()); if (u.origin !== new URL(url).origin && u.protocol !== "data:") external.push(r.url()); });
    const shot = async (name) => {
      await page.evaluate(() => { document.querySelector("#toast").hidden = true; });
      await page.waitForTimeout(300);
      await page.screenshot({ path: path.join(shots, `${name}.png`) });
    };

    // 1. Without the token nothing is visible: a login form, and the API answers 401.
    await page.goto(url);
    await page.locator("#login-form").waitFor({ state: "visible" });
    if (await page.locator("#app").isVisible()) fail("the app is visible before login");
    if (await page.locator("#main *").count() !== 0) fail("data rendered before login");
    const anonymous = await page.evaluate(async () => (await fetch("/api/v1/clients")).status);
    if (anonymous !== 401) fail(`GET /api/v1/clients without a token answered ${anonymous}`);
    await page.fill("#login-token", "not-the-token");
    await page.click("#login-form button[type=submit]");
    await page.locator("#login-error", { hasText: "Wrong token" }).waitFor();
    await shot("login");
    await page.fill("#login-token", token);
    await page.click("#login-form button[type=submit]");
    await page.locator("#app").waitFor({ state: "visible" });
    await page.locator("#live-state.on").waitFor();

    // 2. Overview: numbers and live charts.
    await page.locator("#ov-version").filter({ hasText: /\d+\.\d+/ }).waitFor();
    await page.waitForFunction(() => Number(document.querySelector("#ov-connections").textContent) >= 1);
    await page.locator("#ov-in").filter({ hasText: /[1-9]/ }).waitFor(); // a live sample

    // 3. Clients: the MQTT client is listed; the Disconnect button kicks it.
    await page.click("#nav a[data-page=clients]");
    const row = page.locator('tr[data-client="sensor-kick"]');
    await row.waitFor();
    await row.click();
    await page.locator("#client-detail h2", { hasText: "sensor-kick" }).waitFor();
    await page.locator("#client-detail td", { hasText: "sensors/kick/cmd" }).waitFor();
    await shot("clients");
    await row.locator("button[data-action=disconnect]").click();
    await row.waitFor({ state: "detached" });
    const after = await page.evaluate(async (t) => (await fetch("/api/v1/clients/sensor-kick", { headers: { Authorization: `Bearer ${t}` } })).status, token);
    if (after !== 404) fail(`after the kick, GET /api/v1/clients/sensor-kick answered ${after}`);

    // 4. Subscriptions, with a shared group.
    await page.click("#nav a[data-page=subscriptions]");
    await page.locator("td", { hasText: "workers" }).first().waitFor();
    await shot("subscriptions");

    // 5. Topic explorer under a flood (the Rust side publishes as fast as it can, up to
    // 100k msg/s): the page samples and stays responsive.
    await page.click("#nav a[data-page=explorer]");
    await page.fill("#explorer-filter", "#");
    await page.click("#explorer-subscribe");
    await page.locator("#explorer-subscribe", { hasText: "Unsubscribe" }).waitFor();
    await page.locator("#explorer-rows td", { hasText: "flood/" }).first().waitFor();
    const frames = await page.evaluate(() => new Promise((done) => {
      let n = 0, worst = 0, last = performance.now();
      const start = last;
      const tick = (t) => { n++; worst = Math.max(worst, t - last); last = t; if (t - start < 2000) requestAnimationFrame(tick); else done({ n, worst }); };
      requestAnimationFrame(tick);
    }));
    const rows = await page.locator("#explorer-rows tr").count();
    const stats = await page.locator(".stats").innerText();
    console.log(`explorer under flood: ${frames.n} frames in 2 s, longest frame ${Math.round(frames.worst)} ms, ${rows} rows; ${stats.replace(/\s+/g, " ")}`);
    if (rows > 500) fail(`${rows} rows: the ring is not bounded`);
    if (frames.worst > 1000) fail(`the page froze for ${Math.round(frames.worst)} ms under the flood`);
    const clicked = Date.now();
    await page.click("#explorer-pause");
    await page.locator("#explorer-pause", { hasText: "Resume" }).waitFor({ timeout: 2000 });
    const reaction = Date.now() - clicked;
    if (reaction > 1000) fail(`Pause took ${reaction} ms under the flood`);
    await page.locator("#explorer-rows tr").nth(3).click();
    await shot("explorer-flood");
    await page.click("#explorer-pause");
    // Then only what the test publishes, as a user would narrow the filter.
    await page.click("#explorer-subscribe");
    await page.locator("#explorer-subscribe", { hasText: /^Subscribe$/ }).waitFor();
    await page.click("text=Clear");
    await page.fill("#explorer-filter", "dash/#");
    await page.click("#explorer-subscribe");
    await page.locator("#explorer-subscribe", { hasText: "Unsubscribe" }).waitFor();
    await page.click("#nav a[data-page=publish]");
    await page.fill("#pub-topic", "dash/hello");
    await page.fill("#pub-payload", '{"greeting": "hello from the dashboard", "n": 42}');
    await page.selectOption("#pub-qos", "1");
    await page.click("details.props summary");
    await page.fill("#pub-content-type", "application/json");
    await page.fill("#pub-user-props", "source=e2e");
    await shot("publish");
    await page.click("#pub-send");
    await page.locator("#pub-result", { hasText: "Published to dash/hello" }).waitFor();
    await page.click("#nav a[data-page=explorer]");
    const hello = page.locator("#explorer-rows tr", { hasText: "dash/hello" }).first();
    await hello.waitFor();
    await page.click("#explorer-pause");
    await hello.click();
    await page.locator("aside dd", { hasText: "application/json" }).waitFor();
    await page.locator("aside pre.payload", { hasText: "hello from the dashboard" }).waitFor();
    await shot("explorer");
    await page.click("#explorer-pause");

    // 6. Retained: browse by prefix, view, delete.
    await page.click("#nav a[data-page=retained]");
    await page.fill("input[aria-label='Topic prefix']", "dash/");
    const retainedRow = page.locator('tr[data-topic="dash/retained/one"]');
    await retainedRow.waitFor();
    await retainedRow.click();
    await page.click("button[data-view=hex]");
    await page.locator("#retained-detail pre.payload", { hasText: "000000" }).waitFor();
    await page.click("button[data-view=json]");
    await shot("retained");
    await page.click("#retained-delete");
    await retainedRow.waitFor({ state: "detached" });

    // 7. Listeners and configuration: the token is masked.
    await page.click("#nav a[data-page=config]");
    await page.locator("td", { hasText: "127.0.0.1:" }).first().waitFor();
    const text = await page.locator("#main").innerText();
    if (text.includes(token)) fail("the configuration page shows the token");
    await shot("config");

    // 8. Bridges: the one configured, its remote unreachable, with the reason.
    await page.click("#nav a[data-page=bridges]");
    const bridgeRow = page.locator("#bridge-rows tr", { hasText: "cloud" });
    await bridgeRow.locator("td", { hasText: "disconnected" }).waitFor();
    await bridgeRow.locator("td", { hasText: "127.0.0.1:1" }).first().waitFor();
    await shot("bridges");

    // 9. Back to the overview: the charts have a few seconds of live samples now.
    await page.click("#nav a[data-page=overview]");
    await page.locator("#ov-version").filter({ hasText: /\d+\.\d+/ }).waitFor();
    await page.waitForTimeout(3000);
    await shot("overview");

    // 10. A narrow screen: the navigation folds under the menu button.
    await page.setViewportSize({ width: 390, height: 760 });
    await page.waitForTimeout(300);
    if (await page.locator("#nav").isVisible()) fail("the navigation does not fold on a narrow screen");
    await page.click("#menu");
    await page.locator("#nav").waitFor({ state: "visible" });
    await shot("narrow");

    if (external.length) fail(`requests to elsewhere: ${external.join(", ")}`);
    console.log("ok");
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (e) => { console.error(e && e.stack ? e.stack : String(e)); process.exit(1); });
