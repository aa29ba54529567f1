// The dashboard: which instruments are on screen (kept in the URL), one panel
// each, one multiplexed WebSocket for all of them, and an honest account of the
// connection and of the feed.
import { clock } from "./clock.js";
import { Instrument } from "./instrument.js";
import { Feed, backoffDelay } from "./feed.js";
import { Panel, renderStats, setChartColors } from "./panel.js";
import { Picker } from "./picker.js";

const DEFAULT_PANELS = 4;
const TICK_MS = 500;
// One frame from the bridge per display frame at most (see feed.js); `?batch=0` in the
// page URL turns it off, `?batch=N` sets it.
const BATCH_MS = (() => {
  const asked = new URLSearchParams(location.search).get("batch");
  return asked !== null && /^\d{1,4}$/.test(asked) && Number(asked) <= 1000 ? Number(asked) : 16;
})();
// Deltas after the first snapshot of each book (see panel.js); `?deltas=0` turns them off.
const DELTAS = new URLSearchParams(location.search).get("deltas") !== "0";

const $ = (id) => document.getElementById(id);
const grid = $("panels");
const notice = $("notice");
const conn = $("conn");
const connText = $("conn-text");
const retryButton = $("retry");
const rateText = $("rate");

const instruments = new Map(); // id -> Instrument, as the server lists them
const listed = []; // ids in the server's order
let selection = []; // ids in panel order
const panels = new Map(); // id -> Panel
const picker = new Picker(
  { list: $("picker-list"), filter: $("picker-filter"), count: $("picker-count") },
  { onAdd: addInstrument, onRemove: removeInstrument },
);
let feedLive = { live: true, since: 0, reason: "" }; // the bridge's last `feed` message
let downSince = 0; // wall ms the socket went down (0: up, or never up yet)
let everOpen = false;

const feed = new Feed(`${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws?batch_ms=${BATCH_MS}${DELTAS ? "&deltas=1" : ""}`, {
  onBook,
  onDelta,
  onMessage,
  onState: onFeedState,
});

// -- messages -------------------------------------------------------------------

function onBook(instrument, book, head) {
  const panel = panels.get(instrument);
  if (panel) panel.onBook(book, head);
}

function onDelta(msg) {
  const panel = panels.get(msg.instrument);
  if (panel) panel.onDelta(msg);
}

function onMessage(msg) {
  switch (msg.type) {
    case "trade": {
      const panel = panels.get(msg.instrument);
      if (panel) panel.onTrade(msg);
      break;
    }
    case "feed":
      feedLive = { live: !!msg.live, since: msg.since ? msg.since / 1000 : Date.now(), reason: msg.reason || "" };
      renderConnection();
      tickPanels(false);
      break;
    case "error":
      onServerError(msg);
      break;
    default:
      break; // subscribed, unsubscribed
  }
}

function onServerError(msg) {
  if (msg.error === "unknown_instrument") {
    // The server stopped listing an instrument we asked for: say so in its panel.
    const m = /'([^']*)'/.exec(msg.message || "");
    const id = m ? m[1] : null;
    if (id && panels.has(id) && panels.get(id).inst) {
      instruments.delete(id);
      feed.unsubscribe([id]);
      replacePanel(id);
    }
    return;
  }
  console.warn(`bridge answered ${msg.error}: ${msg.message}`);
}

function onFeedState() {
  if (feed.state === "open") {
    everOpen = true;
    downSince = 0;
  } else if (everOpen && !downSince) {
    downSince = Date.now();
    feedLive = { live: true, since: 0, reason: "" }; // the next connection tells us afresh
  }
  renderConnection();
  tickPanels(false);
}

// -- connection indicator and staleness -----------------------------------------

let connState = "";

function renderConnection() {
  let state;
  let text;
  if (feed.state === "open") {
    if (feedLive.live) {
      state = "live";
      text = "Live";
    } else {
      state = "stale";
      text = `Connected, feed stale since ${clock(feedLive.since)}${feedLive.reason ? ` (${feedLive.reason})` : ""}`;
    }
  } else if (feed.state === "connecting") {
    state = "connecting";
    text = downSince ? `Reconnecting… (down since ${clock(downSince)})` : "Connecting…";
  } else {
    state = "closed";
    const wait = Math.max(0, Math.ceil((feed.retryAt - Date.now()) / 1000));
    text = `Disconnected${downSince ? ` since ${clock(downSince)}` : ""}, retrying in ${wait} s`;
  }
  if (state !== connState) {
    conn.dataset.state = connState = state;
    retryButton.hidden = state !== "closed";
  }
  if (connText.textContent !== text) connText.textContent = text;
}

/** Why every panel is stale right now, or null. */
function globalStale() {
  if (downSince) return `Disconnected since ${clock(downSince)}: showing the last book received`;
  if (feed.state === "open" && !feedLive.live) {
    return `Feed stale since ${clock(feedLive.since)}${feedLive.reason ? `: ${feedLive.reason}` : ""}`;
  }
  return null;
}

let secondStart = performance.now();
let lastMessages = 0;

function tickPanels(closeSecond) {
  const global = globalStale();
  for (const panel of panels.values()) panel.tick(global, closeSecond);
}

setInterval(() => {
  const now = performance.now();
  const closeSecond = now - secondStart >= 1000;
  if (closeSecond) {
    const rate = ((feed.messages - lastMessages) * 1000) / (now - secondStart);
    lastMessages = feed.messages;
    secondStart = now;
    rateText.textContent = `${Math.round(rate)} messages/s`;
  }
  tickPanels(closeSecond);
  if (feed.state === "closed") renderConnection();
}, TICK_MS);

retryButton.addEventListener("click", () => feed.reconnectNow());

// -- selection ------------------------------------------------------------------

function parseSelection() {
  const params = new URLSearchParams(location.search);
  if (!params.has("i")) return listed.slice(0, DEFAULT_PANELS);
  const ids = params
    .get("i")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  return [...new Set(ids)];
}

function writeUrl() {
  const params = new URLSearchParams(location.search);
  params.delete("i");
  const rest = params.toString();
  // Commas stay literal so the address reads /?i=BTC-USD,ETH-USD.
  const query = `${rest ? `${rest}&` : ""}i=${selection.map(encodeURIComponent).join(",")}`;
  history.replaceState(null, "", `${location.pathname}?${query}${location.hash}`);
}

function makePanel(id) {
  const panel = new Panel(id, instruments.get(id) || null, { onRemove: removeInstrument, onResync, deltas: DELTAS });
  panels.set(id, panel);
  return panel;
}

function onResync(id) {
  feed.resync([id]);
}

function replacePanel(id) {
  const old = panels.get(id);
  const panel = makePanel(id);
  grid.replaceChild(panel.root, old.root);
  old.destroy();
}

function applySelection(ids, updateUrl) {
  const gone = [];
  for (const [id, panel] of panels) {
    if (!ids.includes(id)) {
      panel.destroy();
      panels.delete(id);
      gone.push(id);
    }
  }
  const fresh = [];
  ids.forEach((id, k) => {
    let panel = panels.get(id);
    if (!panel) {
      panel = makePanel(id);
      if (panel.inst) fresh.push(id);
    }
    if (grid.children[k] !== panel.root) grid.insertBefore(panel.root, grid.children[k] || null);
  });
  selection = ids.slice();
  feed.unsubscribe(gone);
  feed.subscribe(fresh);
  picker.render(selection);
  notice.textContent = selection.length ? "" : "No instrument selected: tick one or more above.";
  notice.hidden = !!selection.length;
  if (updateUrl) writeUrl();
  tickPanels(false);
}

function addInstrument(id) {
  if (!selection.includes(id)) applySelection([...selection, id], true);
}

function removeInstrument(id) {
  const rest = selection.filter((x) => x !== id);
  applySelection(rest, true);
  // Keep keyboard focus somewhere sensible once the panel (and its button) is gone.
  const box = picker.box(id);
  if (box && document.activeElement === document.body) box.focus();
}

// -- theme --------------------------------------------------------------------------

const themeButton = $("theme");

function readChartColors() {
  const css = getComputedStyle(document.documentElement);
  const v = (name) => css.getPropertyValue(name).trim();
  setChartColors({ bid: v("--bid"), ask: v("--ask"), bidFill: v("--bid-fill"), askFill: v("--ask-fill"), grid: v("--border") });
}

function showTheme() {
  const light = document.documentElement.dataset.theme === "light";
  themeButton.setAttribute("aria-pressed", String(light));
  themeButton.textContent = light ? "☀ Light theme" : "☾ Dark theme";
  readChartColors();
  for (const panel of panels.values()) panel.repaint();
}

themeButton.addEventListener("click", () => {
  const light = document.documentElement.dataset.theme !== "light";
  document.documentElement.dataset.theme = light ? "light" : "dark";
  try {
    localStorage.setItem("md-theme", light ? "light" : "dark");
  } catch {
    /* not remembered, still switched */
  }
  showTheme();
});

// -- start ------------------------------------------------------------------------------

async function loadInstruments() {
  for (let attempt = 0; ; attempt++) {
    let problem;
    try {
      const res = await fetch("/api/instruments", { cache: "no-store" });
      if (res.ok) {
        const list = await res.json();
        if (Array.isArray(list) && list.length) return list;
        problem = "The feed has not listed any instrument yet";
      } else {
        problem = `The instrument list is unavailable (HTTP ${res.status})`;
      }
    } catch {
      problem = "Cannot reach the server";
    }
    notice.hidden = false;
    notice.textContent = `${problem}; retrying…`;
    await new Promise((resolve) => setTimeout(resolve, backoffDelay(attempt)));
  }
}

async function start() {
  showTheme();
  renderConnection();
  const list = await loadInstruments();
  for (const json of list) {
    try {
      instruments.set(json.id, new Instrument(json));
      listed.push(json.id);
    } catch (err) {
      console.warn(`skipping instrument ${json && json.id}: ${err.message}`);
    }
  }
  picker.build(listed, instruments);
  applySelection(parseSelection(), false);
  feed.start();
}

// For benchmarks and the curious: counters, never needed by the page itself.
window.marketdata = {
  stats: () => ({ messages: feed.messages, state: feed.state, panels: panels.size, ...renderStats }),
};

start();
