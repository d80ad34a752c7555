// The operator console (/console): what a client of this server receives, live.
// Built only on /client.js; no secret is in the page. The token comes from the
// field, or from the URL's fragment (#token=…&channels=a,b, printed by
// `wsrt dev`), which a browser never sends to the server; it is removed from
// the address bar at once. The fragment's channels are subscribed on opening.

import { connect } from "/client.js";

const MAX_ROWS = 200;
const MAX_EVENTS = 100;
const RATE_WINDOW_MS = 5000;

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("state"),
  reconnects: $("reconnects"),
  transport: $("transport"),
  detail: $("detail"),
  token: $("token"),
  connectButton: $("connect-button"),
  disconnectButton: $("disconnect-button"),
  channel: $("channel"),
  channels: $("channels"),
  rewind: $("rewind"),
  snapshot: $("snapshot"),
  filter: $("filter"),
  stateSection: $("state-section"),
  state_: $("state-table").tBodies[0],
  subscribeButton: $("subscribe-button"),
  subscriptions: $("subscriptions").tBodies[0],
  messages: $("messages").tBodies[0],
  events: $("events"),
};

/** @type {import("/client.js").Client | null} */
let client = null;
/** channel → { row, cells, times: number[] } */
const channels = new Map();
/** State topics this token may subscribe to (from /console/channels). */
let stateTopics = new Set();
/** channel → the live Map of a state subscription (client.state). */
const states = new Map();
const MAX_STATE_ROWS = 500;
/** Messages received since the last frame was drawn. */
let incoming = [];

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text; // never innerHTML: data is whatever Kafka holds
  if (className) node.className = className;
  return node;
}

function event(text, kind = "info") {
  const item = element("li", `${new Date().toLocaleTimeString()}  ${text}`, kind);
  ui.events.prepend(item);
  while (ui.events.children.length > MAX_EVENTS) ui.events.lastChild.remove();
}

function age(ms) {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)} min`;
  return `${Math.floor(ms / 3600000)} h`;
}

function setState(state, detail) {
  ui.state.textContent = state;
  ui.state.dataset.state = state;
  ui.reconnects.textContent = String(detail.reconnects ?? 0);
  // WebSocket, or Server-Sent Events where a WebSocket cannot pass (client.js falls back).
  ui.transport.textContent = { websocket: "WebSocket", sse: "SSE" }[detail.transport] || "-";
  const text = detail.delay ? `${detail.text}; next attempt in ${(detail.delay / 1000).toFixed(1)} s` : detail.text;
  ui.detail.textContent = text;
  const connected = state !== "closed";
  ui.connectButton.disabled = connected;
  ui.disconnectButton.disabled = !connected;
  ui.subscribeButton.disabled = !connected;
  if (state !== "open") event(text, state === "closed" ? "error" : "warn");
}

async function loadChannels(token) {
  try {
    const answer = await fetch("/console/channels", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    if (!answer.ok) return;
    const { channels: names, state = [] } = await answer.json();
    stateTopics = new Set(state);
    ui.channels.replaceChildren(...names.map((name) => Object.assign(element("option"), { value: name })));
    if (!ui.channel.value && names.length) ui.channel.value = names[0];
  } catch {
    // The picker is a convenience: a channel can always be typed.
  }
}

function start(token) {
  client = connect(`${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`, {
    token,
    maxDelay: 5000, // an operator watching wants it back soon after the server is
    onState: setState,
    onNotice: (notice) => event(notice.text, notice.type === "error" || notice.type === "ended" ? "error" : "warn"),
  });
  return loadChannels(token); // which topics are state topics: known before the first subscribe
}

function stop() {
  if (client) client.close();
  client = null;
  for (const { row } of channels.values()) row.remove();
  channels.clear();
  states.clear();
  drawState();
}

function addChannelRow(sub, times) {
  const cells = {
    channel: element("td", sub.channel),
    count: element("td", "0", "number"),
    rate: element("td", "0.0/s", "number"),
    next: element("td", "", "mono"),
  };
  const button = element("button", "Unsubscribe");
  button.type = "button";
  button.addEventListener("click", async () => {
    await sub.unsubscribe();
    row.remove();
    channels.delete(sub.channel);
    states.delete(sub.channel);
    event(`unsubscribed ${sub.channel}`);
  });
  const action = element("td");
  action.append(button);
  const row = element("tr");
  row.dataset.channel = sub.channel;
  if (sub.narrowing.filter) {
    const shown = JSON.stringify(sub.narrowing.filter);
    const label = element("span", shown.length > 80 ? `${shown.slice(0, 80)}…` : shown, "muted mono");
    label.title = shown;
    cells.channel.append(" ", label);
    row.dataset.filter = shown;
  }
  row.append(cells.channel, cells.count, cells.rate, cells.next, action);
  ui.subscriptions.append(row);
  channels.set(sub.channel, { sub, row, cells, times });
}

async function subscribe(channel, rewind, filterText = "") {
  if (!client) return;
  let narrowing = {};
  if (filterText) {
    try {
      narrowing = { filter: JSON.parse(filterText) };
    } catch (error) {
      return event(`subscribe ${channel}: the filter is not JSON (${error.message})`, "error");
    }
  }
  const times = []; // arrival of each message in the rate window
  const received = (message) => {
    times.push(performance.now());
    if (message.type === "message") incoming.push(message);
  };
  try {
    let sub;
    if (stateTopics.has(channel.split(":")[0]) && ui.snapshot.checked && !(rewind > 0)) {
      states.set(channel, await client.state(channel, (map, frame) => received(frame), narrowing));
      sub = client.subscriptions.get(channel);
    } else {
      sub = await client.subscribe(channel, received, { ...narrowing, ...(rewind > 0 ? { rewind } : {}) });
    }
    addChannelRow(sub, times);
    const how = [rewind > 0 ? `with the last ${rewind} messages per partition` : "", narrowing.filter ? "filtered" : ""];
    event(`subscribed ${channel}${how.filter(Boolean).map((h) => ` ${h}`).join(",")}`);
  } catch (error) {
    event(`subscribe ${channel} refused: ${error.message}`, "error");
  }
}

/** Rows are added once per frame, newest first: a fast topic costs one layout per frame. */
function draw() {
  if (incoming.length) {
    const batch = incoming.slice(-MAX_ROWS);
    incoming = [];
    const rows = batch.reverse().map((m) => {
      const row = element("tr");
      row.dataset.partition = String(m.partition);
      row.dataset.offset = String(m.offset);
      row.dataset.channel = m.channel;
      row.dataset.timestamp = String(m.timestamp);
      const json = JSON.stringify(m.data);
      const data = element("td", json, "data mono");
      data.title = json.length > 2000 ? `${json.slice(0, 2000)}…` : json;
      row.append(
        element("td", m.channel),
        element("td", m.key === null ? "—" : m.key, m.key === null ? "muted" : "mono"),
        element("td", String(m.partition), "number"),
        element("td", String(m.offset), "number"),
        element("td", age(Date.now() - m.timestamp), "number age"),
        data,
      );
      return row;
    });
    ui.messages.prepend(...rows);
    while (ui.messages.rows.length > MAX_ROWS) ui.messages.lastChild.remove();
  }
  requestAnimationFrame(draw);
}

/** The state tables: one row per key of each state subscription, by channel then key. */
function drawState() {
  ui.stateSection.hidden = states.size === 0;
  const rows = [];
  for (const [channel, map] of states) {
    for (const key of [...map.keys()].sort()) {
      if (rows.length >= MAX_STATE_ROWS) break;
      const m = map.get(key);
      const row = element("tr");
      row.dataset.channel = channel;
      row.dataset.key = key;
      const json = JSON.stringify(m.data);
      row.append(
        element("td", channel),
        element("td", key, "mono"),
        element("td", `${m.partition}:${m.offset}`, "number"),
        element("td", age(Date.now() - m.timestamp), "number age"),
        element("td", json, "data mono"),
      );
      rows.push(row);
    }
  }
  ui.state_.replaceChildren(...rows);
}

/** Once a second: rates over the last five seconds, resume positions, ages, the state tables. */
function tick() {
  drawState();
  const now = performance.now();
  for (const { sub, cells, times } of channels.values()) {
    while (times.length && times[0] < now - RATE_WINDOW_MS) times.shift();
    cells.count.textContent = sub.received.toLocaleString();
    cells.rate.textContent = `${(times.length / (RATE_WINDOW_MS / 1000)).toFixed(1)}/s`;
    cells.next.textContent = Object.entries(sub.next).map(([p, o]) => `${p}=${o}`).join(" ");
  }
  for (const row of ui.messages.rows) {
    row.querySelector(".age").textContent = age(Date.now() - Number(row.dataset.timestamp));
  }
}

$("connect").addEventListener("submit", (e) => {
  e.preventDefault();
  stop();
  start(ui.token.value.trim());
});
ui.disconnectButton.addEventListener("click", stop);
$("subscribe").addEventListener("submit", (e) => {
  e.preventDefault();
  const channel = ui.channel.value.trim();
  if (channels.has(channel)) return event(`already subscribed to ${channel}`, "warn");
  subscribe(channel, Number(ui.rewind.value) || 0, ui.filter.value.trim());
});

const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  ui.token.value = fragment.get("token");
  history.replaceState(null, "", location.pathname + location.search); // out of the address bar and history
  const ready = start(ui.token.value);
  for (const channel of (fragment.get("channels") || "").split(",").filter(Boolean)) {
    ready.then(() => subscribe(channel, 0));
  }
}
setInterval(tick, 1000);
requestAnimationFrame(draw);
