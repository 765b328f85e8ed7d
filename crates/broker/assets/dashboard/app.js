// Sagitta dashboard: plain ES modules, no framework, no build step. Every data request goes
// to the admin API with the token (kept in sessionStorage) as `Authorization: Bearer`; live
// data comes over one WebSocket (/api/v1/live) whose first message is the token.
import { LineChart, formatNumber } from "./chart.js";

const TOKEN_KEY = "sagitta.token";
const EXPLORER_ROWS = 500; // the explorer's ring of messages
const RENDER_EVERY = 250; // ms: the explorer renders at most 4 times a second
const PAGE_SIZE = 50;

const $ = (sel, root = document) => root.querySelector(sel);

// --- tiny DOM builder: text is always text (no innerHTML with data) -----------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function toast(text, bad = false) {
  const t = $("#toast");
  t.textContent = text;
  t.className = bad ? "toast bad" : "toast";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 3500);
}

function duration(s) {
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hh}h ${m}m`;
  if (hh) return `${hh}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function clock(t) {
  const d = new Date(t);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function bytes(n) {
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GiB";
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " B";
}

// --- API ---------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  let data = null;
  try { data = await r.json(); } catch { data = null; }
  if (r.status === 401) { showLogin("The token was refused. Sign in again."); throw new ApiError(401, "unauthorized"); }
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || `HTTP ${r.status}`);
  return data;
}

const enc = encodeURIComponent;

// --- live socket -------------------------------------------------------------------------
const live = {
  ws: null, open: false, retry: 500, listeners: new Set(), filter: null, history: [],
  connect() {
    if (this.ws) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/api/v1/live`);
    this.ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ token: sessionStorage.getItem(TOKEN_KEY) || "" }));
    };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch { return; }
      if (m.type === "hello") {
        this.open = true;
        this.retry = 500;
        this.history = m.history || [];
        setLiveState(true);
        if (this.filter) this.send({ type: "subscribe", filter: this.filter });
      } else if (m.type === "sample") {
        this.history.push(m.sample);
        if (this.history.length > 600) this.history.shift();
      } else if (m.type === "error" && m.error === "unauthorized") {
        showLogin("The token was refused. Sign in again.");
      }
      for (const l of this.listeners) l(m);
    };
    ws.onclose = () => {
      this.ws = null;
      this.open = false;
      setLiveState(false);
      if (!document.body.dataset.loggedOut) {
        setTimeout(() => this.connect(), this.retry);
        this.retry = Math.min(this.retry * 2, 10000);
      }
    };
  },
  close() { if (this.ws) { this.ws.onclose = null; this.ws.close(); this.ws = null; } this.open = false; setLiveState(false); },
  send(m) { if (this.ws && this.open) this.ws.send(JSON.stringify(m)); },
  subscribe(filter) { this.filter = filter; this.send({ type: "subscribe", filter }); },
  unsubscribe() { this.filter = null; this.send({ type: "unsubscribe" }); },
  on(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); },
};

function setLiveState(on) {
  const el = $("#live-state");
  el.textContent = on ? "live" : "offline";
  el.classList.toggle("on", on);
}

// --- login -------------------------------------------------------------------------------
function showLogin(message) {
  live.close();
  document.body.dataset.loggedOut = "1";
  sessionStorage.removeItem(TOKEN_KEY);
  $("#app").hidden = true;
  $("#main").replaceChildren();
  $("#login").hidden = false;
  const e = $("#login-error");
  e.textContent = message || "";
  e.hidden = !message;
  $("#login-token").value = "";
  $("#login-token").focus();
}

async function probe(token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await fetch("/api/v1/overview", { headers, cache: "no-store" });
  return r.status;
}

function startApp(withToken) {
  delete document.body.dataset.loggedOut;
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = !withToken;
  live.connect();
  route();
}

// --- pages -------------------------------------------------------------------------------
let cleanup = [];
function onLeave(fn) { cleanup.push(fn); }

function route() {
  for (const fn of cleanup) { try { fn(); } catch { /* page gone */ } }
  cleanup = [];
  const name = (location.hash.replace(/^#\/?/, "").split("?")[0]) || "overview";
  const page = PAGES[name] || PAGES.overview;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  $("#nav").classList.remove("open");
  const main = $("#main");
  main.replaceChildren();
  main.dataset.page = name;
  page(main);
}

function card(label, id) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", id }, "–"));
}

function overview(main) {
  main.append(
    h("h1", {}, "Overview"),
    h("div", { class: "cards" },
      card("Version", "ov-version"), card("Uptime", "ov-uptime"), card("Connections", "ov-connections"),
      card("Sessions", "ov-sessions"), card("Subscriptions", "ov-subscriptions"), card("Retained", "ov-retained"),
      card("Messages in / s", "ov-in"), card("Messages out / s", "ov-out"), card("Dropped / s", "ov-dropped")),
    h("div", { class: "charts" },
      h("section", { class: "panel" }, h("h2", {}, "Messages per second"),
        h("div", { class: "legend" }, h("span", {}, h("i", { class: "in" }), "in"), h("span", {}, h("i", { class: "out" }), "out")),
        h("canvas", { class: "chart", id: "chart-msgs" })),
      h("section", { class: "panel" }, h("h2", {}, "Connections"),
        h("div", { class: "legend" }, h("span", {}, h("i", { class: "conn" }), "connected clients")),
        h("canvas", { class: "chart", id: "chart-conns" }))),
    h("section", { class: "panel" }, h("h2", {}, "Totals since start"), h("dl", { class: "kv", id: "ov-totals" })),
  );
  const msgs = new LineChart($("#chart-msgs"), [
    { key: "in", color: "#1f6feb", fill: "rgba(31,111,235,.08)" },
    { key: "out", color: "#12b76a" },
  ]);
  const conns = new LineChart($("#chart-conns"), [{ key: "c", color: "#7c3aed", fill: "rgba(124,58,237,.08)" }]);
  onLeave(() => { msgs.destroy(); conns.destroy(); });
  const point = (s) => ({ t: s.t, values: { in: s.msgs_in, out: s.msgs_out, c: s.connections } });
  let uptimeBase = null;
  const showSample = (s) => {
    $("#ov-connections").textContent = formatNumber(s.connections);
    $("#ov-sessions").textContent = formatNumber(s.sessions);
    $("#ov-subscriptions").textContent = formatNumber(s.subscriptions);
    $("#ov-retained").textContent = formatNumber(s.retained);
    $("#ov-in").textContent = formatNumber(s.msgs_in);
    $("#ov-out").textContent = formatNumber(s.msgs_out);
    $("#ov-dropped").textContent = formatNumber(s.dropped);
    if (uptimeBase) $("#ov-uptime").textContent = duration(Math.floor((Date.now() - uptimeBase) / 1000));
  };
  const load = async () => {
    const o = await api("/api/v1/overview");
    uptimeBase = Date.now() - o.uptime * 1000;
    $("#ov-version").textContent = o.version;
    $("#ov-uptime").textContent = duration(o.uptime);
    $("#ov-connections").textContent = formatNumber(o.connections);
    $("#ov-sessions").textContent = formatNumber(o.sessions);
    $("#ov-subscriptions").textContent = formatNumber(o.subscriptions);
    $("#ov-retained").textContent = formatNumber(o.retained);
    const last = o.history[o.history.length - 1];
    if (last) showSample(last);
    const hist = o.history.length ? o.history : live.history;
    msgs.set(hist.map(point));
    conns.set(hist.map(point));
    const kv = $("#ov-totals");
    kv.replaceChildren(...[
      ["Messages received", o.messages_received.toLocaleString()],
      ["Messages sent", o.messages_sent.toLocaleString()],
      ["Bytes received", bytes(o.bytes_received)],
      ["Bytes sent", bytes(o.bytes_sent)],
      ["Messages dropped", o.dropped.toLocaleString()],
      ["Connections accepted", o.connections_total.toLocaleString()],
      ["Most connections at once", o.connections_maximum.toLocaleString()],
      ["Persistence", o.persistence ? "on" : "off (in memory)"],
    ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  };
  load().catch((e) => toast(e.message, true));
  const totals = setInterval(() => load().catch(() => {}), 10000);
  onLeave(() => clearInterval(totals));
  onLeave(live.on((m) => {
    if (m.type !== "sample") return;
    showSample(m.sample);
    msgs.push(point(m.sample));
    conns.push(point(m.sample));
  }));
}

// Pages with a server-side paged table: search, sort, pages, auto-refresh.
function pagedTable({ main, columns, fetchPage, row, sortable = true, refreshMs = 2000, searchLabel, initialSort }) {
  const state = { offset: 0, search: "", sort: initialSort || null, desc: false, total: 0 };
  const input = h("input", { class: "grow", type: "search", placeholder: searchLabel, "aria-label": searchLabel });
  const body = h("tbody");
  const info = h("span");
  const prev = h("button", { class: "small", onclick: () => { state.offset = Math.max(0, state.offset - PAGE_SIZE); load(); } }, "‹ Prev");
  const next = h("button", { class: "small", onclick: () => { state.offset += PAGE_SIZE; load(); } }, "Next ›");
  const head = h("tr", {}, columns.map((c) => {
    const th = h("th", { class: [c.num ? "num" : "", c.narrow ? "hide-narrow" : "", sortable && c.sort ? "sortable" : ""].join(" ") }, c.label);
    if (sortable && c.sort) {
      th.dataset.sort = c.sort;
      th.addEventListener("click", () => {
        if (state.sort === c.sort) state.desc = !state.desc; else { state.sort = c.sort; state.desc = false; }
        state.offset = 0;
        load();
      });
    }
    return th;
  }));
  let timer;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.search = input.value.trim(); state.offset = 0; load(); }, 250);
  });
  let loading = false;
  async function load() {
    if (loading) return;
    loading = true;
    try {
      lastLoad = Date.now();
      const page = await fetchPage(state);
      state.total = page.total;
      if (state.offset >= page.total && page.total > 0) { state.offset = Math.floor((page.total - 1) / PAGE_SIZE) * PAGE_SIZE; loading = false; return load(); }
      body.replaceChildren(...(page.items.length ? page.items.map(row) : [h("tr", {}, h("td", { class: "empty", colspan: columns.length }, "Nothing here."))]));
      const end = Math.min(state.offset + PAGE_SIZE, page.total);
      info.textContent = page.total ? `${state.offset + 1}–${end} of ${page.total.toLocaleString()}` : "0 of 0";
      prev.disabled = state.offset === 0;
      next.disabled = end >= page.total;
      for (const th of head.children) {
        th.classList.toggle("sorted", !!th.dataset.sort && th.dataset.sort === state.sort);
        th.classList.toggle("desc", state.desc);
      }
    } catch (e) {
      if (e.status !== 401) toast(e.message, true);
    } finally { loading = false; }
  }
  // Large lists refresh less often: each refresh sorts them all on the server.
  let lastLoad = 0;
  const refresh = setInterval(() => {
    const every = state.total > 10000 ? 10000 : refreshMs;
    if (!document.hidden && Date.now() - lastLoad >= every - 50) load();
  }, refreshMs);
  onLeave(() => clearInterval(refresh));
  const table = h("div", { class: "panel" },
    h("div", { class: "toolbar" }, input, h("button", { onclick: () => load() }, "Refresh")),
    h("div", { class: "table-wrap scroll" }, h("table", {}, h("thead", {}, head), body)),
    h("div", { class: "pager" }, info, prev, next));
  load();
  return { table, load, state };
}

function clients(main) {
  const detail = h("aside", { class: "panel", id: "client-detail" }, h("p", { class: "muted" }, "Select a client to see its details."));
  let selected = null;
  const { table, load } = pagedTable({
    main,
    searchLabel: "Search client id, address or user",
    initialSort: "client_id",
    columns: [
      { label: "Client id", sort: "client_id" }, { label: "Status", sort: "connected" },
      { label: "Address", sort: "peer", narrow: true }, { label: "User", sort: "username", narrow: true },
      { label: "In flight", sort: "inflight", num: true, narrow: true },
      { label: "Queued", sort: "queued", num: true }, { label: "" },
    ],
    fetchPage: async (s) => {
      const q = `offset=${s.offset}&limit=${PAGE_SIZE}&sort=${s.sort || "client_id"}&desc=${s.desc}` + (s.search ? `&search=${enc(s.search)}` : "");
      const r = await api(`/api/v1/clients?${q}`);
      return { total: r.total, items: r.clients };
    },
    row: (c) => h("tr", { class: "clickable" + (c.client_id === selected ? " selected" : ""), dataset: { client: c.client_id }, onclick: () => { selected = c.client_id; showClient(c.client_id); } },
      h("td", { class: "mono" }, c.client_id),
      h("td", { class: "nowrap" }, c.connected ? h("span", { class: "badge ok" }, "connected") : h("span", { class: "badge off" }, "offline")),
      h("td", { class: "mono hide-narrow" }, c.peer || "–"),
      h("td", { class: "hide-narrow" }, c.username || "–"),
      h("td", { class: "num hide-narrow" }, c.inflight),
      h("td", { class: "num" }, c.queued),
      h("td", { class: "actions" }, c.connected ? h("button", { class: "small danger", dataset: { action: "disconnect" }, onclick: (e) => { e.stopPropagation(); kick(c.client_id); } }, "Disconnect") : null)),
  });
  async function kick(id, endSession = false) {
    if (!confirm(endSession ? `End the session of "${id}"?` : `Disconnect "${id}"?`)) return;
    try {
      const r = await api(`/api/v1/clients/${enc(id)}${endSession ? "?session=true" : ""}`, { method: "DELETE" });
      toast(r.disconnected ? `Disconnected ${id}` : r.session_removed ? `Session of ${id} ended` : `${id} was not connected`);
      load();
      if (selected === id) showClient(id);
    } catch (e) { toast(e.message, true); }
  }
  async function showClient(id) {
    for (const tr of table.querySelectorAll("tr.clickable")) tr.classList.toggle("selected", tr.dataset.client === id);
    try {
      const c = await api(`/api/v1/clients/${enc(id)}`);
      detail.replaceChildren(
        h("h2", {}, c.client_id),
        h("dl", { class: "kv" }, [
          ["Status", c.connected ? "connected" : "offline"], ["Address", c.peer || "–"], ["User", c.username || "–"],
          ["Protocol", c.protocol || "–"], ["Keep alive", c.keep_alive != null ? `${c.keep_alive} s` : "–"],
          ["In flight", c.inflight], ["Queued", c.queued],
          ["Session expiry", c.session_expiry == null ? "never" : `${c.session_expiry} s`],
        ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
        h("h2", { class: "sub" }, `Subscriptions (${c.subscriptions.length})`),
        c.subscriptions.length
          ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Filter"), h("th", { class: "num" }, "QoS"))),
            h("tbody", {}, c.subscriptions.map((s) => h("tr", {}, h("td", { class: "mono" }, s.filter), h("td", { class: "num" }, s.qos)))))
          : h("p", { class: "muted" }, "None."),
        h("div", { class: "toolbar" },
          c.connected ? h("button", { class: "danger", onclick: () => kick(c.client_id) }, "Disconnect") : null,
          h("button", { class: "danger", onclick: () => kick(c.client_id, true) }, "End session")),
      );
    } catch (e) {
      detail.replaceChildren(h("p", { class: "muted" }, e.status === 404 ? "This client is gone." : e.message));
    }
  }
  main.append(h("h1", {}, "Clients"), h("div", { class: "split" }, table, detail));
}

function subscriptions(main) {
  const { table } = pagedTable({
    main,
    sortable: false,
    searchLabel: "Filter contains…",
    columns: [{ label: "Filter" }, { label: "Shared group" }, { label: "Client id" }, { label: "QoS", num: true }],
    fetchPage: async (s) => {
      const r = await api(`/api/v1/subscriptions?offset=${s.offset}&limit=${PAGE_SIZE}` + (s.search ? `&filter=${enc(s.search)}` : ""));
      return { total: r.total, items: r.subscriptions };
    },
    row: (s) => {
      const m = /^\$share\/([^/]+)\/(.*)$/.exec(s.filter);
      return h("tr", {},
        h("td", { class: "mono" }, m ? m[2] : s.filter),
        h("td", {}, m ? h("span", { class: "badge blue" }, m[1]) : "–"),
        h("td", { class: "mono" }, s.client_id),
        h("td", { class: "num" }, s.qos));
    },
  });
  main.append(h("h1", {}, "Subscriptions"), table);
}

function bridges(main) {
  const body = h("tbody", { id: "bridge-rows" });
  const empty = h("p", { class: "muted", hidden: true },
    "No bridges: add [[bridge]] tables to the configuration to forward topics to and from other brokers.");
  main.append(h("h1", {}, "Bridges"),
    h("section", { class: "panel" }, h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {},
        h("th", {}, "Name"), h("th", {}, "State"), h("th", {}, "Remote"),
        h("th", { class: "num" }, "Queued"), h("th", { class: "num" }, "In flight"),
        h("th", { class: "num" }, "Sent"), h("th", { class: "num" }, "Received"),
        h("th", { class: "num" }, "Dropped"), h("th", { class: "num hide-narrow" }, "Reconnects"),
        h("th", { class: "hide-narrow" }, "Last error"))),
      body)), empty));
  async function load() {
    try {
      const r = await api("/api/v1/bridges");
      empty.hidden = r.bridges.length > 0;
      body.replaceChildren(...r.bridges.map((b) => h("tr", {},
        h("td", { class: "mono" }, b.name),
        h("td", {}, b.connected ? h("span", { class: "badge ok" }, "connected") : h("span", { class: "badge off" }, "disconnected")),
        h("td", { class: "mono" }, b.remote || "–"),
        h("td", { class: "num" }, b.queued), h("td", { class: "num" }, b.inflight),
        h("td", { class: "num" }, b.sent), h("td", { class: "num" }, b.received),
        h("td", { class: "num" }, b.dropped), h("td", { class: "num hide-narrow" }, b.reconnects),
        h("td", { class: b.last_error ? "hide-narrow error" : "hide-narrow" }, b.last_error || "–"))));
    } catch (e) { if (e.status !== 401) toast(e.message, true); }
  }
  load();
  const timer = setInterval(load, 2000);
  onLeave(() => clearInterval(timer));
}

// --- payload views -------------------------------------------------------------------------
function payloadBytes(payload, encoding) {
  if (encoding === "base64") return Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
  return new TextEncoder().encode(payload);
}

function hexdump(b) {
  const lines = [];
  for (let i = 0; i < b.length; i += 16) {
    const chunk = b.slice(i, i + 16);
    const hex = Array.from(chunk, (x) => x.toString(16).padStart(2, "0")).join(" ");
    const asc = Array.from(chunk, (x) => (x >= 32 && x < 127 ? String.fromCharCode(x) : ".")).join("");
    lines.push(`${i.toString(16).padStart(6, "0")}  ${hex.padEnd(47)}  ${asc}`);
  }
  return lines.join("\n") || "(empty)";
}

function payloadView(payload, encoding) {
  const data = payloadBytes(payload, encoding);
  const text = encoding === "base64" ? null : payload;
  let json = null;
  if (text !== null) { try { json = JSON.stringify(JSON.parse(text), null, 2); } catch { json = null; } }
  const modes = { text: text !== null ? (text || "(empty)") : "(not UTF-8: see hex)", hex: hexdump(data), json: json ?? "(not JSON)" };
  const pre = h("pre", { class: "payload" });
  const buttons = {};
  const show = (m) => { pre.textContent = modes[m]; for (const [k, b] of Object.entries(buttons)) b.classList.toggle("active", k === m); };
  for (const m of ["text", "hex", "json"]) buttons[m] = h("button", { dataset: { view: m }, onclick: () => show(m) }, m.toUpperCase());
  show(json ? "json" : text !== null ? "text" : "hex");
  return h("div", {}, h("div", { class: "tabs" }, Object.values(buttons)), pre);
}

function propertiesList(p) {
  if (!p) return h("p", { class: "muted" }, "No properties.");
  const rows = [];
  for (const [k, v] of Object.entries(p)) {
    if (k === "user_properties") for (const [uk, uv] of v) rows.push([`user: ${uk}`, uv]);
    else rows.push([k.replaceAll("_", " "), String(v)]);
  }
  return h("dl", { class: "kv" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function retained(main) {
  const input = h("input", { class: "grow", type: "search", placeholder: "Topic prefix or filter (e.g. sensors/ or sensors/+/temp)", "aria-label": "Topic prefix" });
  const body = h("tbody");
  const info = h("span", { class: "muted" });
  const detail = h("aside", { class: "panel", id: "retained-detail" }, h("p", { class: "muted" }, "Select a message to see its payload."));
  let selected = null;
  const filterOf = (v) => {
    if (!v) return "#";
    if (v.includes("#") || v.includes("+")) return v;
    return v.endsWith("/") ? v + "#" : v + "/#";
  };
  async function load() {
    const v = input.value.trim();
    try {
      const r = await api(`/api/v1/retained?limit=1000&topic=${enc(filterOf(v))}`);
      let items = r.retained;
      let total = r.total;
      if (v && !v.includes("#") && !v.includes("+") && !v.endsWith("/")) {
        const exact = await api(`/api/v1/retained?topic=${enc(v)}`).catch(() => ({ retained: [], total: 0 }));
        items = exact.retained.concat(items);
        total += exact.total;
      }
      body.replaceChildren(...(items.length ? items.map((m) => h("tr", { class: "clickable" + (m.topic === selected ? " selected" : ""), dataset: { topic: m.topic }, onclick: () => select(m) },
        h("td", { class: "mono" }, m.topic),
        h("td", { class: "num" }, m.qos),
        h("td", { class: "num hide-narrow" }, bytes(payloadBytes(m.payload, m.encoding).length)),
        h("td", { class: "payload hide-narrow" }, m.encoding === "base64" ? "(binary)" : m.payload.slice(0, 200))))
        : [h("tr", {}, h("td", { class: "empty", colspan: 4 }, "No retained messages here."))]));
      info.textContent = `${total.toLocaleString()} retained message${total === 1 ? "" : "s"}` + (items.length < total ? ` (first ${items.length} shown)` : "");
    } catch (e) { if (e.status !== 401) toast(e.message, true); }
  }
  function select(m) {
    selected = m.topic;
    for (const tr of body.children) tr.classList.toggle("selected", tr.dataset.topic === m.topic);
    detail.replaceChildren(
      h("h2", { class: "mono" }, m.topic),
      h("dl", { class: "kv" }, h("dt", {}, "QoS"), h("dd", {}, String(m.qos)), h("dt", {}, "Size"), h("dd", {}, bytes(payloadBytes(m.payload, m.encoding).length))),
      payloadView(m.payload, m.encoding),
      h("h2", {}, "Properties"), propertiesList(m.properties),
      h("div", { class: "toolbar" }, h("button", { class: "danger", id: "retained-delete", onclick: () => del(m.topic) }, "Delete retained message")));
  }
  async function del(topic) {
    if (!confirm(`Delete the retained message on "${topic}"?`)) return;
    try {
      await api(`/api/v1/retained?topic=${enc(topic)}`, { method: "DELETE" });
      toast(`Deleted the retained message on ${topic}`);
      selected = null;
      detail.replaceChildren(h("p", { class: "muted" }, "Deleted."));
      load();
    } catch (e) { toast(e.message, true); }
  }
  let timer;
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(load, 250); });
  main.append(h("h1", {}, "Retained messages"),
    h("div", { class: "split" },
      h("div", { class: "panel" },
        h("div", { class: "toolbar" }, input, h("button", { onclick: load }, "Refresh")),
        h("div", { class: "table-wrap scroll" }, h("table", {},
          h("thead", {}, h("tr", {}, h("th", {}, "Topic"), h("th", { class: "num" }, "QoS"), h("th", { class: "num hide-narrow" }, "Size"), h("th", { class: "hide-narrow" }, "Payload"))), body)),
        h("div", { class: "pager" }, info)),
      detail));
  load();
}

// --- topic explorer: a bounded ring, rendered at most every RENDER_EVERY ms -----------------
const explorerState = { filter: "#", rows: [], paused: false, received: 0, sampled: 0, dropped: 0, subscribed: false };

function explorer(main) {
  const st = explorerState;
  const input = h("input", { class: "grow", id: "explorer-filter", value: st.filter, placeholder: "Topic filter, e.g. sensors/# or # ", "aria-label": "Topic filter" });
  const subBtn = h("button", { class: "primary", id: "explorer-subscribe" }, "Subscribe");
  const pauseBtn = h("button", { id: "explorer-pause" }, "Pause");
  const clearBtn = h("button", {}, "Clear");
  const stats = h("div", { class: "stats" });
  const body = h("tbody", { id: "explorer-rows" });
  const detail = h("aside", { class: "panel" }, h("p", { class: "muted" }, "Select a message to see it in full."));
  let shown = [];
  let dirty = true;
  const renderStats = () => {
    stats.replaceChildren(
      h("span", {}, "Status ", h("b", {}, st.subscribed ? `subscribed to ${st.filter}` : "not subscribed")),
      h("span", {}, "Received ", h("b", {}, st.received.toLocaleString())),
      h("span", {}, "Kept ", h("b", {}, `${st.rows.length} / ${EXPLORER_ROWS}`)),
      h("span", { title: "Messages the server skipped to keep the page fast (it sends the newest 100 per 250 ms)" }, "Sampled out ", h("b", {}, st.sampled.toLocaleString())),
      h("span", { title: "Messages dropped because this page fell behind" }, "Dropped ", h("b", {}, st.dropped.toLocaleString())),
      st.paused ? h("span", { class: "badge blue" }, "paused") : "");
  };
  const render = () => {
    renderStats();
    if (st.paused || !dirty) return;
    dirty = false;
    shown = st.rows.slice().reverse();
    body.replaceChildren(...(shown.length ? shown.map((m, i) => h("tr", { class: "clickable", onclick: () => select(i) },
      h("td", { class: "mono hide-narrow" }, clock(m.t)),
      h("td", { class: "mono" }, m.topic),
      h("td", { class: "num" }, m.qos),
      h("td", {}, m.retain ? h("span", { class: "badge blue" }, "retain") : ""),
      h("td", { class: "num hide-narrow" }, bytes(m.size)),
      h("td", { class: "payload" }, m.payload !== undefined ? m.payload.slice(0, 200) : "(binary)")))
      : [h("tr", {}, h("td", { class: "empty", colspan: 6 }, st.subscribed ? "Waiting for messages…" : "Subscribe to a topic filter to watch its messages."))]));
  };
  const select = (i) => {
    const m = shown[i];
    if (!m) return;
    Array.from(body.children).forEach((tr, j) => tr.classList.toggle("selected", j === i));
    detail.replaceChildren(
      h("h2", { class: "mono" }, m.topic),
      h("dl", { class: "kv" }, h("dt", {}, "Received"), h("dd", {}, new Date(m.t).toLocaleString()), h("dt", {}, "QoS"), h("dd", {}, String(m.qos)),
        h("dt", {}, "Retain"), h("dd", {}, m.retain ? "yes" : "no"), h("dt", {}, "Size"), h("dd", {}, bytes(m.size) + (m.truncated ? " (preview: first 2 KiB)" : ""))),
      payloadView(m.payload !== undefined ? m.payload : m.payload_base64, m.payload !== undefined ? "text" : "base64"),
      h("h2", {}, "Properties"), propertiesList(m.properties));
  };
  subBtn.addEventListener("click", () => {
    if (st.subscribed) { live.unsubscribe(); st.subscribed = false; subBtn.textContent = "Subscribe"; dirty = true; render(); return; }
    st.filter = input.value.trim() || "#";
    live.subscribe(st.filter);
  });
  pauseBtn.addEventListener("click", () => { st.paused = !st.paused; pauseBtn.textContent = st.paused ? "Resume" : "Pause"; dirty = true; render(); });
  clearBtn.addEventListener("click", () => { st.rows = []; st.received = st.sampled = st.dropped = 0; dirty = true; render(); });
  pauseBtn.textContent = st.paused ? "Resume" : "Pause";
  subBtn.textContent = st.subscribed ? "Unsubscribe" : "Subscribe";
  onLeave(live.on((m) => {
    if (m.type === "subscribed") { st.subscribed = true; subBtn.textContent = "Unsubscribe"; dirty = true; }
    else if (m.type === "unsubscribed") { st.subscribed = false; }
    else if (m.type === "error") toast(m.error, true);
  }));
  const timer = setInterval(render, RENDER_EVERY);
  const stopDirty = live.on((m) => { if (m.type === "messages") dirty = true; });
  onLeave(() => { clearInterval(timer); stopDirty(); });
  main.append(h("h1", {}, "Topic explorer"),
    h("div", { class: "split" },
      h("div", { class: "panel" },
        h("div", { class: "toolbar" }, input, subBtn, pauseBtn, clearBtn),
        stats,
        h("div", { class: "table-wrap scroll" }, h("table", {},
          h("thead", {}, h("tr", {}, h("th", { class: "hide-narrow" }, "Time"), h("th", {}, "Topic"), h("th", { class: "num" }, "QoS"), h("th", {}, "Flags"), h("th", { class: "num hide-narrow" }, "Size"), h("th", {}, "Payload"))),
          body))),
      detail));
  render();
}

// The explorer's buffer fills whatever page is open: leaving the page doesn't lose messages.
live.on((m) => {
  const st = explorerState;
  if (m.type === "subscribed") { st.subscribed = true; st.filter = m.filter; }
  if (m.type !== "messages") return;
  st.received += m.messages.length + m.sampled_out + m.dropped;
  st.sampled += m.sampled_out;
  st.dropped += m.dropped;
  if (st.paused) return;
  for (const msg of m.messages) { msg.t = msg.t || m.t; st.rows.push(msg); }
  if (st.rows.length > EXPLORER_ROWS) st.rows.splice(0, st.rows.length - EXPLORER_ROWS);
});

function publish(main) {
  const f = (id, label, input, cls) => h("div", { class: cls }, h("label", { for: id }, label), input);
  const topic = h("input", { id: "pub-topic", required: true, placeholder: "e.g. sensors/room1/temp" });
  const payload = h("textarea", { id: "pub-payload", rows: 6, placeholder: "Payload" });
  const encoding = h("select", { id: "pub-encoding" }, h("option", { value: "text" }, "Text (UTF-8)"), h("option", { value: "base64" }, "Base64"));
  const qos = h("select", { id: "pub-qos" }, h("option", { value: "0" }, "0 – at most once"), h("option", { value: "1" }, "1 – at least once"), h("option", { value: "2" }, "2 – exactly once"));
  const retain = h("input", { id: "pub-retain", type: "checkbox" });
  const contentType = h("input", { id: "pub-content-type", placeholder: "e.g. application/json" });
  const responseTopic = h("input", { id: "pub-response-topic" });
  const correlation = h("input", { id: "pub-correlation", placeholder: "base64" });
  const expiry = h("input", { id: "pub-expiry", type: "number", min: 0, placeholder: "seconds" });
  const pfi = h("select", { id: "pub-pfi" }, h("option", { value: "" }, "not set"), h("option", { value: "true" }, "UTF-8 text"), h("option", { value: "false" }, "bytes"));
  const userProps = h("textarea", { id: "pub-user-props", rows: 3, placeholder: "key=value, one per line" });
  const result = h("p", { class: "muted", id: "pub-result" });
  const form = h("form", { class: "panel", id: "publish-form" },
    h("div", { class: "form-grid" },
      f("pub-topic", "Topic", topic, "wide"),
      f("pub-payload", "Payload", payload, "wide"),
      f("pub-encoding", "Payload encoding", encoding),
      f("pub-qos", "QoS", qos),
      h("label", { class: "check" }, retain, "Retain")),
    h("details", { class: "props" }, h("summary", {}, "MQTT 5.0 properties"),
      h("div", { class: "form-grid" },
        f("pub-content-type", "Content type", contentType),
        f("pub-response-topic", "Response topic", responseTopic),
        f("pub-correlation", "Correlation data", correlation),
        f("pub-expiry", "Message expiry interval", expiry),
        f("pub-pfi", "Payload format indicator", pfi),
        f("pub-user-props", "User properties", userProps, "wide"))),
    h("div", { class: "toolbar" }, h("button", { class: "primary", type: "submit", id: "pub-send" }, "Publish"), result));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const properties = {};
    if (contentType.value) properties.content_type = contentType.value;
    if (responseTopic.value) properties.response_topic = responseTopic.value;
    if (correlation.value) properties.correlation_data = correlation.value;
    if (expiry.value !== "") properties.message_expiry_interval = Number(expiry.value);
    if (pfi.value) properties.payload_format_indicator = pfi.value === "true";
    const ups = userProps.value.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => { const i = l.indexOf("="); return i < 0 ? [l, ""] : [l.slice(0, i), l.slice(i + 1)]; });
    if (ups.length) properties.user_properties = ups;
    const body = { topic: topic.value, payload: payload.value, encoding: encoding.value, qos: Number(qos.value), retain: retain.checked };
    if (Object.keys(properties).length) body.properties = properties;
    try {
      const r = await api("/api/v1/publish", { method: "POST", body });
      result.className = "muted";
      result.textContent = `Published to ${r.topic}: queued for ${r.queued_for} subscriber${r.queued_for === 1 ? "" : "s"}.`;
      toast(`Published to ${r.topic}`);
    } catch (err) {
      result.className = "error";
      result.textContent = err.message;
    }
  });
  main.append(h("h1", {}, "Publish"), form);
}

async function config(main) {
  main.append(h("h1", {}, "Listeners and configuration"));
  try {
    const c = await api("/api/v1/config");
    const bound = c.bound || [];
    main.append(h("section", { class: "panel" }, h("h2", {}, "Listeners"),
      h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Type"), h("th", {}, "Address"), h("th", {}, "Anonymous"), h("th", { class: "hide-narrow" }, "Client certificates"))),
        h("tbody", {}, bound.map((l) => h("tr", {},
          h("td", { class: "mono" }, l.name), h("td", {}, h("span", { class: "badge blue" }, l.kind.toUpperCase())), h("td", { class: "mono" }, l.local_addr),
          h("td", {}, l.allow_anonymous ? "allowed" : "refused"), h("td", { class: "hide-narrow" }, l.verifies_client_certificates ? "verified" : "–"))))))));
    if (c.http) main.append(h("section", { class: "panel" }, h("h2", {}, "HTTP listener"), h("dl", { class: "kv" },
      h("dt", {}, "bind"), h("dd", { class: "mono" }, c.http.bind), h("dt", {}, "token"), h("dd", { class: "mono" }, c.http.token || "not set (open)"),
      h("dt", {}, "HTTPS"), h("dd", { class: "mono" }, c.http.https ? `yes (${c.http.cert})` : "no"))));
    const skip = new Set(["listeners", "bound", "http", "listen"]);
    const rows = Object.entries(c).filter(([k]) => !skip.has(k));
    main.append(h("section", { class: "panel" }, h("h2", {}, "Broker settings (read-only; secrets are never shown)"),
      h("dl", { class: "kv" }, rows.flatMap(([k, v]) => [h("dt", { class: "mono" }, k), h("dd", { class: "mono" }, v === null ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v))]))));
  } catch (e) { if (e.status !== 401) main.append(h("p", { class: "error" }, e.message)); }
}

const PAGES = { overview, clients, subscriptions, retained, explorer, publish, bridges, config };

// --- start -------------------------------------------------------------------------------
async function init() {
  $("#menu").addEventListener("click", () => {
    const nav = $("#nav");
    nav.classList.toggle("open");
    $("#menu").setAttribute("aria-expanded", String(nav.classList.contains("open")));
  });
  $("#logout").addEventListener("click", () => showLogin());
  window.addEventListener("hashchange", () => { if (!$("#app").hidden) route(); });
  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = $("#login-token").value.trim();
    try {
      const status = await probe(token);
      if (status === 401) { $("#login-error").textContent = "Wrong token."; $("#login-error").hidden = false; return; }
      sessionStorage.setItem(TOKEN_KEY, token);
      startApp(true);
    } catch (err) { $("#login-error").textContent = `The broker cannot be reached: ${err.message}`; $("#login-error").hidden = false; }
  });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  try {
    const status = await probe(saved);
    if (status === 401) showLogin(saved ? "The token was refused. Sign in again." : "");
    else startApp(!!saved || false);
  } catch {
    showLogin("The broker cannot be reached.");
  }
}

init();
