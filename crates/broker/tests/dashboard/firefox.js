// The dashboard's end-to-end test in Firefox, driven by tests/dashboard_firefox.rs: Debian's
// firefox-esr (headless, over WebDriver BiDi through puppeteer-core) against a broker the
// Rust test started with an HTTP listener and a token, a connected MQTT client
// "sensor-kick", a client publishing on "sensors/<room>/temp" and a retained message on
// "dash/retained/one". The same flows as e2e.js (Chromium), with the same selectors, minus
// the flood and the narrow screen.
//
// usage: node firefox.js <dashboard URL> <token> <screenshot dir>
// Prints what it measured, then "ok", and exits 0 when every step passed; exits 1 with the
// reason on stderr.
"use strict";

const path = require("node:path");
const fs = require("node:fs");
const os = require("node:os");
const puppeteer = require("puppeteer-core");

const [url, token, shots] = process.argv.slice(2);
const FIREFOX = process.env.SAGITTA_FIREFOX || "/usr/bin/firefox-esr";
const STEP = 10000; // ms: the longest any one expectation may take

// Whatever happens, the process ends: a watchdog well inside the Rust test's limit.
setTimeout(() => { console.error("watchdog: the test took longer than 50 s"); process.exit(1); }, 50000).unref();

function fail(message) { throw new Error(message); }

// Firefox must not reach the outside (the network here reaches only package registries, and
// a test should not depend on it anyway). puppeteer's own profile already turns off updates,
// safe browsing, health reports and points remote settings at a dummy host; on top of that:
const QUIET = {
  "app.update.enabled": false,
  "app.update.auto": false,
  "toolkit.telemetry.enabled": false,
  "toolkit.telemetry.unified": false,
  "toolkit.telemetry.archive.enabled": false,
  "toolkit.telemetry.server": "",
  "toolkit.coverage.endpoint.base": "",
  "browser.ping-centre.telemetry": false,
  "browser.newtabpage.activity-stream.telemetry": false,
  "browser.newtabpage.activity-stream.feeds.telemetry": false,
  "browser.discovery.enabled": false,
  "app.shield.optoutstudies.enabled": false,
  "app.normandy.enabled": false,
  "extensions.blocklist.enabled": false,
  "extensions.systemAddon.update.enabled": false,
  "browser.safebrowsing.provider.google4.updateURL": "",
  "browser.safebrowsing.provider.mozilla.updateURL": "",
  "browser.region.update.enabled": false,
  "browser.region.network.url": "",
  "browser.topsites.contile.enabled": false,
  "identity.fxaccounts.enabled": false,
  "media.gmp-gmpopenh264.enabled": false,
  "media.gmp-widevinecdm.enabled": false,
  "network.captive-portal-service.enabled": false,
  "network.connectivity-service.enabled": false,
  "network.dns.disablePrefetch": true,
  "network.prefetch-next": false,
  "network.predictor.enabled": false,
  "network.trr.mode": 5, // no DNS over HTTPS
  "security.OCSP.enabled": 0,
  "security.remote_settings.crlite_filters.enabled": false,
  "security.remote_settings.intermediates.enabled": false,
  // And a dead proxy for anything that is not loopback (loopback bypasses proxies by
  // default): whatever was forgotten above fails at once instead of leaving the machine.
  "network.proxy.type": 1,
  "network.proxy.http": "127.0.0.1",
  "network.proxy.http_port": 9,
  "network.proxy.ssl": "127.0.0.1",
  "network.proxy.ssl_port": 9,
  "network.proxy.no_proxies_on": "localhost, 127.0.0.1, ::1",
};

// Polls `fn` in the page until it returns something truthy. (puppeteer's waitForFunction
// builds its predicate with `new Function` inside the page, which Firefox rightly refuses
// under the dashboard's Content-Security-Policy; page.evaluate is not subject to it.)
async function poll(page, what, fn, ...args) {
  const deadline = Date.now() + STEP;
  for (;;) {
    const v = await page.evaluate(fn, ...args);
    if (v) return v;
    if (Date.now() > deadline) fail(`timed out after ${STEP} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// Waits until some element matching `selector` has text matching `text` (a string to
// contain, or a RegExp); like e2e.js's locator(selector, { hasText }).waitFor().
async function waitText(page, selector, text) {
  const [src, flags] = text instanceof RegExp ? [text.source, text.flags] : [null, null];
  await poll(page, `${selector} with text ${text}`, (sel, plain, src, flags) => {
    const re = src === null ? null : new RegExp(src, flags);
    return [...document.querySelectorAll(sel)].some((e) => re ? re.test(e.textContent) : e.textContent.includes(plain));
  }, selector, src === null ? text : "", src, flags);
}

async function visible(page, selector) {
  return page.evaluate((sel) => {
    const e = document.querySelector(sel);
    return !!e && e.getClientRects().length > 0 && getComputedStyle(e).visibility !== "hidden";
  }, selector);
}

async function fill(page, selector, value) {
  await page.$eval(selector, (e) => { e.value = ""; });
  await page.type(selector, value);
}

// Pixels of a canvas close to a colour: proof that a chart's line was drawn.
async function inked(page, selector, [r, g, b]) {
  return page.evaluate((sel, r, g, b) => {
    const c = document.querySelector(sel);
    if (!c || !c.width || !c.height) return 0;
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3] > 128 && Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - g) < 40 && Math.abs(d[i + 2] - b) < 40) n++;
    }
    return n;
  }, selector, r, g, b);
}

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  // A fresh profile, removed afterwards (puppeteer also makes a temporary one when given
  // none; ours is explicit so that nothing of the user's leaks in).
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "sagitta-firefox-"));
  const launched = Date.now();
  const browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: FIREFOX,
    headless: true,
    userDataDir: profile,
    extraPrefsFirefox: QUIET,
    defaultViewport: { width: 1360, height: 860, deviceScaleFactor: 1 },
    protocolTimeout: 30000,
  });
  const version = await browser.version();
  console.log(`browser: ${version}, started in ${Date.now() - launched} ms`);
  if (!/firefox/i.test(version)) fail(`not Firefox: ${version}`);
  const external = [];
  const errors = [];
  let requests = 0;
  try {
    const page = (await browser.pages())[0] || (await browser.newPage());
    page.setDefaultTimeout(STEP);
    page.on("dialog", (d) => { d.accept(); });
    page.on("pageerror", (e) => { errors.push(`page error: ${e.message}`); });
    page.on("console", (m) => { if (m.type() === "error") errors.push(`console error: ${m.text()}`); });
    const origin = new URL(url).origin;
    page.on("request", (r) => { requests++; const u = new URL(r.url()); if (u.origin !== origin && u.protocol !== "data:") external.push(r.url()); });
    const shot = async (file) => {
      await page.evaluate(() => { document.querySelector("#toast").hidden = true; });
      await new Promise((r) => setTimeout(r, 300));
      await page.screenshot({ path: path.join(shots, file) });
    };

    // 1. Without the token nothing is visible: a login form, and the API answers 401.
    await page.goto(url);
    await page.waitForSelector("#login-form", { visible: true });
    if (await visible(page, "#app")) fail("the app is visible before login");
    if (await page.$$eval("#main *", (e) => e.length) !== 0) fail("data rendered before login");
    const anonymous = await page.evaluate(async () => (await fetch("/api/v1/clients")).status);
    if (anonymous !== 401) fail(`GET /api/v1/clients without a token answered ${anonymous}`);
    await fill(page, "#login-token", "not-the-token");
    await page.click("#login-form button[type=submit]");
    await waitText(page, "#login-error", "Wrong token");
    await fill(page, "#login-token", token);
    await page.click("#login-form button[type=submit]");
    await page.waitForSelector("#app", { visible: true });
    await page.waitForSelector("#live-state.on");
    if (await visible(page, "#login")) fail("the login form is still visible after login");

    // 2. Overview: numbers, a live sample, and both charts drawn.
    await waitText(page, "#ov-version", /\d+\.\d+/);
    await poll(page, "a connection on the overview", () => Number(document.querySelector("#ov-connections").textContent) >= 1);
    await waitText(page, "#ov-in", /[1-9]/); // a live sample
    await poll(page, "the messages chart sized", () => document.querySelector("#chart-msgs").width > 0);
    // The "in" line (#1f6feb) and the connections line (#7c3aed), after a few samples.
    await new Promise((r) => setTimeout(r, 2500));
    const msgsInk = await inked(page, "#chart-msgs", [31, 111, 235]);
    const connsInk = await inked(page, "#chart-conns", [124, 58, 237]);
    console.log(`charts: ${msgsInk} px of the messages line, ${connsInk} px of the connections line`);
    if (msgsInk < 20) fail(`the messages chart has no line (${msgsInk} px)`);
    if (connsInk < 20) fail(`the connections chart has no line (${connsInk} px)`);

    // 3. Clients: the MQTT client is listed; the Disconnect button kicks it.
    await page.click("#nav a[data-page=clients]");
    const row = 'tr[data-client="sensor-kick"]';
    await page.waitForSelector(row);
    await page.click(`${row} td`);
    await waitText(page, "#client-detail h2", "sensor-kick");
    await waitText(page, "#client-detail td", "sensors/kick/cmd");
    await page.click(`${row} button[data-action=disconnect]`);
    await page.waitForSelector(row, { hidden: true });
    const after = await page.evaluate(async (t) => (await fetch("/api/v1/clients/sensor-kick", { headers: { Authorization: `Bearer ${t}` } })).status, token);
    if (after !== 404) fail(`after the kick, GET /api/v1/clients/sensor-kick answered ${after}`);

    // 4. Subscriptions, with a shared group.
    await page.click("#nav a[data-page=subscriptions]");
    await waitText(page, "td", "workers");

    // 5. Topic explorer: what the Rust side publishes shows live, then a message published
    // from the form, with its properties.
    await page.click("#nav a[data-page=explorer]");
    await fill(page, "#explorer-filter", "sensors/#");
    await page.click("#explorer-subscribe");
    await waitText(page, "#explorer-subscribe", "Unsubscribe");
    await waitText(page, "#explorer-rows td", "sensors/hall/temp");
    await page.click("#explorer-subscribe");
    await waitText(page, "#explorer-subscribe", /^Subscribe$/);
    await page.click("::-p-text(Clear)");
    await fill(page, "#explorer-filter", "dash/#");
    await page.click("#explorer-subscribe");
    await waitText(page, "#explorer-subscribe", "Unsubscribe");
    await page.click("#nav a[data-page=publish]");
    await fill(page, "#pub-topic", "dash/hello");
    await fill(page, "#pub-payload", '{"greeting": "hello from Firefox", "n": 42}');
    await page.select("#pub-qos", "1");
    await page.click("details.props summary");
    await fill(page, "#pub-content-type", "application/json");
    await fill(page, "#pub-user-props", "source=firefox");
    await page.click("#pub-send");
    await waitText(page, "#pub-result", "Published to dash/hello");
    await page.click("#nav a[data-page=explorer]");
    await waitText(page, "#explorer-rows tr", "dash/hello");
    await page.click("#explorer-pause");
    await page.evaluate(() => {
      [...document.querySelectorAll("#explorer-rows tr")].find((r) => r.textContent.includes("dash/hello")).click();
    });
    await waitText(page, "aside dd", "application/json");
    await waitText(page, "aside pre.payload", "hello from Firefox");
    await page.click("#explorer-pause");

    // 6. Retained: browse by prefix, view, delete.
    await page.click("#nav a[data-page=retained]");
    await fill(page, "input[aria-label='Topic prefix']", "dash/");
    const retainedRow = 'tr[data-topic="dash/retained/one"]';
    await page.waitForSelector(retainedRow);
    await page.click(`${retainedRow} td`);
    await page.click("button[data-view=hex]");
    await waitText(page, "#retained-detail pre.payload", "000000");
    await page.click("button[data-view=json]");
    await waitText(page, "#retained-detail pre.payload", "brightness");
    await page.click("#retained-delete");
    await page.waitForSelector(retainedRow, { hidden: true });

    // 7. Configuration: the token is masked.
    await page.click("#nav a[data-page=config]");
    await waitText(page, "td", "127.0.0.1:");
    const text = await page.$eval("#main", (e) => e.innerText);
    if (text.includes(token)) fail("the configuration page shows the token");

    // 8. Back to the overview: still live after all that navigation; the charts have a few
    // more seconds of samples for the screenshot.
    await page.click("#nav a[data-page=overview]");
    await waitText(page, "#ov-version", /\d+\.\d+/);
    await page.waitForSelector("#live-state.on");
    await new Promise((r) => setTimeout(r, 2000));
    if (await inked(page, "#chart-msgs", [31, 111, 235]) < 20) fail("the messages chart is empty after navigating back");
    await shot("firefox-overview.png");

    if (errors.length) fail(`errors in the page:\n${errors.join("\n")}`);
    if (requests < 10) fail(`only ${requests} requests seen: the request watch is not working`);
    if (external.length) fail(`requests to elsewhere: ${external.join(", ")}`);
    console.log(`${requests} requests, all to ${origin}`);
    console.log("ok");
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (e) => { console.error(e && e.stack ? e.stack : String(e)); process.exit(1); });
