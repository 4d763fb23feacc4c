// walhook console: polls the admin API and calls its token routes.
//
// Everything shown is put in the page with textContent (never innerHTML),
// so no value from the database, an endpoint or the file can become markup.
// The admin token is typed in once and kept in sessionStorage (this tab
// only); it goes out in the Authorization header, never in a URL.
"use strict";

const POLL_MS = 1000;
const CONFIG_EVERY = 10;
const RATE_WINDOW_MS = 5000;
const TOKEN_KEY = "walhook.token";

const $ = (id) => document.getElementById(id);
const state = {
  commands: false,
  strategies: [],
  config: null,
  history: new Map(), // strategy -> [[ms, delivered_records]]
  armed: null, // "delete:ID" while a delete waits for its confirmation
  tick: 0,
};

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "message error" : "message";
}

async function api(method, path, needsToken) {
  const headers = { Accept: "application/json" };
  if (needsToken) {
    const t = token();
    if (!t) throw new Error("enter the admin token first");
    headers.Authorization = "Bearer " + t;
  }
  const response = await fetch(path, { method, headers, cache: "no-store", credentials: "omit" });
  const text = await response.text();
  if (response.status === 401 && needsToken) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSession();
    throw new Error("the admin token was refused; enter it again");
  }
  if (!response.ok) throw new Error(text.trim() || method + " " + path + ": HTTP " + response.status);
  return text ? JSON.parse(text) : null;
}

// ---- formatting -----------------------------------------------------------

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v : v.toFixed(1)) + " " + units[i];
}

function seconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  return Math.round(s / 60) + " min";
}

function ago(iso) {
  if (!iso) return "never";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return new Date(t).toLocaleString();
}

function ms(v) {
  return v === null || v === undefined ? "—" : v.toFixed(v < 10 ? 1 : 0) + " ms";
}

// ---- tables ---------------------------------------------------------------

// Keeps one <tr> per key: cells are updated in place, so focus and
// half-typed confirmations survive a refresh.
function syncRows(table, items, key, columns, fill, emptyText) {
  const body = table.tBodies[0];
  const seen = new Set();
  for (const item of items) {
    const k = String(key(item));
    seen.add(k);
    let tr = body.querySelector('tr[data-key="' + CSS.escape(k) + '"]');
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.key = k;
      for (let i = 0; i < columns; i++) tr.appendChild(document.createElement("td"));
    }
    body.appendChild(tr); // keeps the order of `items`
    fill(tr, item);
  }
  for (const tr of Array.from(body.rows)) {
    if (!tr.dataset.key || !seen.has(tr.dataset.key)) tr.remove();
  }
  if (items.length === 0) {
    const tr = document.createElement("tr");
    const td = el("td", emptyText, "empty");
    td.colSpan = columns;
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

function setCell(td, text, cls) {
  const value = text === null || text === undefined ? "" : String(text);
  if (td.textContent !== value) td.textContent = value;
  if (cls !== undefined && td.className !== cls) td.className = cls;
}

function setBadge(td, text, kind) {
  const cls = "badge " + (kind || text);
  const badge = td.firstElementChild;
  if (badge && badge.textContent === text && badge.className === cls) return;
  td.replaceChildren(el("span", text, cls));
}

// The actions cell is rebuilt only when the set of actions changes.
function setActions(td, signature, build) {
  if (td.dataset.actions === signature) return;
  td.dataset.actions = signature;
  td.replaceChildren(...build());
  td.className = "cmd";
}

function button(label, name, onClick, cls) {
  const b = el("button", label, cls);
  b.type = "button";
  b.setAttribute("aria-label", label + " " + name);
  b.addEventListener("click", onClick);
  return b;
}

function canCommand() {
  return state.commands && !!token();
}

// ---- strategies -------------------------------------------------------------

function rate(name, delivered) {
  const now = Date.now();
  const points = state.history.get(name) || [];
  points.push([now, delivered]);
  while (points.length > 2 && now - points[0][0] > RATE_WINDOW_MS) points.shift();
  state.history.set(name, points);
  if (points.length < 2) return null;
  const [t0, c0] = points[0];
  const dt = (now - t0) / 1000;
  return dt > 0 ? Math.max(0, (delivered - c0) / dt) : null;
}

async function command(path, what) {
  try {
    await api("POST", path, true);
    say(what);
    await refresh();
  } catch (err) {
    say(err.message, true);
  }
}

function parked(p) {
  if (!p || !p.parked_batches) return p && p.full ? "full" : "—";
  const limit = p.limit_bytes ? " of " + bytes(p.limit_bytes) : "";
  return p.parked_batches + " (" + bytes(p.parked_bytes) + limit + (p.full ? ", full" : "") + ")";
}

// Everything that is wrong with a strategy, most urgent first: the state
// store, its own last error, a worker a reload replaced that still drains.
function strategyErrors(s) {
  const parts = [];
  if (s.state_error) parts.push("state store: " + s.state_error);
  if (s.last_error) parts.push(s.last_error);
  for (const d of s.draining || []) {
    parts.push("draining worker " + d.state + " (" + d.attempts + " attempts" +
      (d.last_error ? ": " + d.last_error : "") + ")");
  }
  if (s.parked && s.parked.held) parts.push("held: " + s.parked.held);
  return parts.join(" · ");
}

function renderStatus(doc) {
  const role = doc.role ? " (" + doc.role + ")" : "";
  const err = doc.last_error ? " · " + doc.last_error : "";
  const health = doc.health ? doc.health.text + " · " : "";
  $("source").textContent = health + "slot " + doc.slot + " · " + doc.state + role +
    " · lag " + bytes(doc.lag_bytes) + " · acked " + doc.acked_lsn + err;
  $("source").dataset.health = doc.health ? doc.health.state : "";
  state.strategies = doc.strategies || [];
  syncRows($("strategies"), state.strategies, (s) => s.name, 11, (tr, s) => {
    const c = tr.cells;
    tr.dataset.state = s.state;
    setCell(c[0], s.name);
    let shown = s.pause_reason && s.pause_reason !== "admin" ? s.state + ": " + s.pause_reason : s.state;
    if ((s.draining || []).length) shown += " (draining)";
    setBadge(c[1], shown, s.state);
    const r = rate(s.name, s.delivered_records);
    setCell(c[2], r === null ? "—" : r.toFixed(1), "num");
    setCell(c[3], s.delivered_records, "num delivered");
    setCell(c[4], s.queue_records, "num");
    setCell(c[5], s.in_flight, "num");
    setCell(c[6], bytes(s.lag_bytes) + " · " + seconds(s.lag_seconds), "num");
    setCell(c[7], parked(s.parked), "num parked");
    setCell(c[8], ago(s.last_success));
    setCell(c[9], strategyErrors(s), "error");
    if (!canCommand()) {
      setActions(c[10], "none", () => []);
      return;
    }
    const paused = s.state === "paused";
    const base = "/strategies/" + encodeURIComponent(s.name);
    const stuck = ["failing", "parked", "blocked"].includes(s.state);
    const headSkippable = s.state === "failing" || s.state === "blocked";
    setActions(c[10], (paused ? "resume" : "pause") + (stuck ? ":retry" : "") + (headSkippable ? ":head" : ""), () => {
      const buttons = [
        paused
          ? button("Resume", s.name, () => command(base + "/resume", "resumed " + s.name))
          : button("Pause", s.name, () => command(base + "/pause", "paused " + s.name)),
      ];
      if (stuck) buttons.push(button("Retry now", s.name, () => command(base + "/retry", "retrying " + s.name)));
      if (headSkippable) {
        buttons.push(button("Dead-letter head", s.name, () => command(base + "/dead-letter-head", "dead-lettered the head batch of " + s.name), "danger"));
      }
      return buttons;
    });
  }, "no strategies");
  const select = $("run-strategy");
  const names = state.strategies.map((s) => s.name);
  if (Array.from(select.options).map((o) => o.value).join("\n") !== names.join("\n")) {
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => { const o = el("option", n); o.value = n; return o; }));
    if (names.includes(chosen)) select.value = chosen;
  }
}

// ---- endpoints --------------------------------------------------------------

function renderEndpoints(doc) {
  const configured = (state.config && state.config.endpoints) || {};
  syncRows($("endpoints"), doc.endpoints || [], (e) => e.name, 7, (tr, e) => {
    const c = tr.cells;
    setCell(c[0], e.name);
    setCell(c[1], (configured[e.name] && configured[e.name].url) || "", "url");
    const status = e.circuit_open ? "down" : e.up === null ? "unknown" : e.up ? "up" : "down";
    setBadge(c[2], e.circuit_open ? "down: circuit open" : status, status);
    setCell(c[3], ms(e.last_latency_ms) + " (avg " + ms(e.avg_latency_ms) + ")", "num");
    setCell(c[4], e.last_status === null ? (e.attempts ? "no answer" : "—") : e.last_status, "num");
    setCell(c[5], e.attempts + (e.failures ? " (" + e.failures + " failed)" : ""), "num");
    setCell(c[6], e.last_error || "", "error");
  }, "no endpoints in use");
}

// ---- dead letters -------------------------------------------------------------

async function showPayload(id) {
  try {
    const letter = await api("GET", "/dead-letters/" + id, true);
    $("payload-h").textContent = "Dead letter " + id + " (" + letter.strategy + ", batch " + letter.batch_id + ")";
    $("payload-body").textContent = JSON.stringify(letter.payload, null, 2);
    $("payload").hidden = false;
    $("payload-body").focus();
  } catch (err) {
    say(err.message, true);
  }
}

async function replay(id) {
  try {
    await api("POST", "/dead-letters/" + id + "/replay", true);
    say("dead letter " + id + " delivered again");
  } catch (err) {
    say("replay of dead letter " + id + " failed: " + err.message, true);
  }
  await refresh();
}

async function remove(id) {
  if (state.armed !== "delete:" + id) {
    state.armed = "delete:" + id;
    await refresh();
    return;
  }
  state.armed = null;
  try {
    await api("DELETE", "/dead-letters/" + id, true);
    say("dead letter " + id + " deleted");
  } catch (err) {
    say(err.message, true);
  }
  await refresh();
}

function renderDeadLetters(page) {
  const letters = page ? page.dead_letters : [];
  syncRows($("dead-letters"), letters, (d) => d.id, 8, (tr, d) => {
    const c = tr.cells;
    setCell(c[0], d.id, "num");
    setCell(c[1], d.strategy);
    setCell(c[2], ago(d.created_at));
    setCell(c[3], d.last_status === null ? "—" : d.last_status, "num");
    setCell(c[4], d.last_error || "", "error");
    setCell(c[5], d.attempts, "num");
    setCell(c[6], bytes(d.payload_bytes), "num");
    const armed = state.armed === "delete:" + d.id;
    const name = "dead letter " + d.id;
    setActions(c[7], armed ? "armed" : "idle", () => [
      button("View", name, () => showPayload(d.id)),
      button("Replay", name, () => replay(d.id)),
      button(armed ? "Confirm delete" : "Delete", name, () => remove(d.id), "danger"),
    ]);
  }, page ? "no dead letters" : "");
}

// ---- runs ---------------------------------------------------------------------

async function startRun(event) {
  event.preventDefault();
  const name = $("run-strategy").value;
  const params = new URLSearchParams({ mode: $("run-mode").value });
  const filter = $("run-filter").value.trim();
  if (filter) params.set("filter", filter);
  const limit = $("run-limit").value.trim();
  if (limit) params.set("limit", limit);
  try {
    say("starting a run of " + name + "…");
    const reply = await api("POST", "/strategies/" + encodeURIComponent(name) + "/runs?" + params, true);
    const id = reply.id !== undefined ? reply.id : reply.run_id;
    say(reply.id !== undefined
      ? "run " + id + " started"
      : "run " + id + " " + reply.state + ": " + reply.records + " records delivered");
    await refresh();
  } catch (err) {
    say("run not started: " + err.message, true);
  }
}

async function cancelRun(id) {
  try {
    await api("DELETE", "/runs/" + id, true);
    say("run " + id + " cancelling");
  } catch (err) {
    say(err.message, true);
  }
  await refresh();
}

// Pause stops reading after the chunk under way; resume reads on from
// the next one.
async function pauseRun(id, pause) {
  try {
    await api("POST", "/runs/" + id + (pause ? "/pause" : "/resume"), true);
    say("run " + id + (pause ? " pausing" : " resumed"));
  } catch (err) {
    say(err.message, true);
  }
  await refresh();
}

function renderRuns(runs) {
  syncRows($("runs"), runs, (r) => r.id, 7, (tr, r) => {
    const c = tr.cells;
    tr.dataset.state = r.state;
    setCell(c[0], r.id, "num");
    setCell(c[1], r.strategy);
    setCell(c[2], r.filter || "all rows");
    setBadge(c[3], r.state);
    const counts = r.counts || {};
    const progress = r.progress || {};
    const delivered = counts.delivered || 0;
    const done = progress.done !== undefined && progress.done !== null ? progress.done : delivered;
    tr.dataset.delivered = delivered;
    let bar = c[4].querySelector("progress");
    let label = c[4].querySelector("span");
    if (!bar) {
      bar = document.createElement("progress");
      label = el("span");
      c[4].replaceChildren(bar, document.createTextNode(" "), label);
    }
    if (progress.percent !== undefined && progress.percent !== null) {
      bar.max = 100;
      bar.value = progress.percent;
    } else {
      bar.max = Math.max(counts.estimate || 0, counts.read || 0, done, 1);
      bar.value = r.state === "succeeded" ? bar.max : done;
    }
    bar.setAttribute("aria-label", "run " + r.id + " progress");
    const parts = [done + (counts.estimate ? " of ~" + counts.estimate : "") + " rows done",
      delivered + " delivered"];
    if (counts.failed) parts.push(counts.failed + " failed");
    if (r.state === "running" && progress.rows_per_second) parts.push(Math.round(progress.rows_per_second) + " rows/s");
    if (r.state === "running" && progress.eta_seconds !== undefined && progress.eta_seconds !== null) {
      parts.push(seconds(progress.eta_seconds) + " left");
    }
    label.textContent = parts.join(" · ");
    setCell(c[5], ago(r.started_at));
    const going = (r.state === "running" || r.state === "paused") && canCommand();
    setActions(c[6], going ? r.state : "none", () => going ? [
      r.state === "paused"
        ? button("Resume", "run " + r.id, () => pauseRun(r.id, false))
        : button("Pause", "run " + r.id, () => pauseRun(r.id, true)),
      button("Cancel", "run " + r.id, () => cancelRun(r.id), "danger"),
    ] : []);
  }, "no runs yet");
}

// ---- session --------------------------------------------------------------------

function showSession() {
  const has = !!token();
  $("readonly").hidden = state.commands;
  $("token-form").hidden = !state.commands || has;
  $("token-set").hidden = !state.commands || !has;
  $("run-form").hidden = !canCommand();
  for (const note of document.querySelectorAll(".needs-token")) {
    note.hidden = canCommand();
    note.textContent = state.commands
      ? "Enter the admin token above to see and use this."
      : "Needs the admin API: set [admin].token.";
  }
  for (const id of ["runs", "dead-letters"]) $(id).hidden = !canCommand();
  if (!canCommand()) $("payload").hidden = true;
}

// ---- loop -----------------------------------------------------------------------

let timer = null;
let busy = false;

async function refresh() {
  if (busy) return;
  busy = true;
  try {
    if (state.config === null || state.tick % CONFIG_EVERY === 0) {
      const doc = await api("GET", "/config", false);
      state.commands = !!doc.commands;
      state.config = doc.config || {};
      $("config").textContent = JSON.stringify(state.config, null, 2);
      showSession();
    }
    state.tick++;
    const [status, endpoints] = await Promise.all([
      api("GET", "/status", false),
      api("GET", "/endpoints", false),
    ]);
    renderStatus(status);
    renderEndpoints(endpoints);
    if (canCommand()) {
      const [page, runs] = await Promise.all([
        api("GET", "/dead-letters?limit=100", true).catch((err) => { say(err.message, true); return null; }),
        api("GET", "/runs?limit=20", true).then((doc) => doc.runs).catch(() => []),
      ]);
      renderDeadLetters(page);
      renderRuns(runs);
    }
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    if ($("message").className === "message error" && $("message").textContent.startsWith("admin server")) say("");
  } catch (err) {
    say("admin server not answering: " + err.message, true);
  } finally {
    busy = false;
  }
}

function loop() {
  refresh().finally(() => { timer = setTimeout(loop, POLL_MS); });
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token-input");
    const value = input.value.trim();
    input.value = "";
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    showSession();
    say("token kept for this tab");
    for (const td of document.querySelectorAll("td.cmd")) delete td.dataset.actions;
    refresh();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showSession();
    say("token forgotten");
    refresh();
  });
  $("run-form").addEventListener("submit", startRun);
  $("payload-close").addEventListener("click", () => { $("payload").hidden = true; });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer !== null) { clearTimeout(timer); loop(); }
  });
  loop();
});
