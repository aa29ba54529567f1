// One instrument's panel: ladder, summary figures, depth chart and last trades.
//
// Messages only store the newest book (latest wins) and ask for a frame; the
// frame renders each dirty panel once. The DOM is built once per panel and then
// only text node data, one transform and a class name change; nothing reads
// layout while rendering (the canvas size comes from a ResizeObserver).
import { DepthChart } from "./depth.js";

export const LEVELS = 10; // ladder rows a side
const TRADES = 12;
const QUIET_MS = 5000; // no book for this long: the panel says it is stale

// -- frame scheduling: at most one render per panel per animation frame ----------

const dirty = new Set();
let frameRequested = false;
export const renderStats = { frames: 0, renders: 0, renderMs: 0 };

function requestRender(panel) {
  dirty.add(panel);
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(flush);
  }
}

function flush() {
  frameRequested = false;
  const t0 = performance.now();
  // Every DOM write first, then every canvas: a canvas call that needs style
  // then finds it clean once, instead of once per panel.
  for (const panel of dirty) panel.render();
  for (const panel of dirty) panel.paint();
  renderStats.renders += dirty.size;
  dirty.clear();
  renderStats.frames++;
  renderStats.renderMs += performance.now() - t0;
}

// -- canvas sizes, observed rather than measured ---------------------------------

const charts = new WeakMap();
const resizer = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const panel = charts.get(entry.target);
    if (!panel) continue;
    const box = entry.contentBoxSize && entry.contentBoxSize[0];
    const w = box ? box.inlineSize : entry.contentRect.width;
    const h = box ? box.blockSize : entry.contentRect.height;
    if (panel.chart.resize(w, h, window.devicePixelRatio || 1)) {
      panel.chartDirty = true;
      requestRender(panel);
    }
  }
});

let chartColors = null;

/** New colours for every depth chart (after a theme change). */
export function setChartColors(colors) {
  chartColors = colors;
}

// -- small DOM helpers ---------------------------------------------------------------

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) node.append(child);
  return node;
}

/** A span holding one text node whose data the renderer rewrites. */
function cell(className, initial = "") {
  const text = document.createTextNode(initial);
  return { node: el("span", `c ${className}`, text), text };
}

function setText(text, value) {
  if (text.data !== value) text.data = value;
}

function clock(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour12: false });
}

function clockMs(us) {
  const d = new Date(us / 1000);
  const p2 = (n) => (n < 10 ? "0" : "") + n;
  const ms = d.getMilliseconds();
  return `${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())}.${ms < 10 ? "00" : ms < 100 ? "0" : ""}${ms}`;
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 90 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}

let nextId = 0;

// -- the panel -----------------------------------------------------------------------

export class Panel {
  /** `inst` is an Instrument, or null when the server does not list `id`. */
  constructor(id, inst, { onRemove }) {
    this.id = id;
    this.inst = inst;
    this.uid = `p${nextId++}`;
    this.book = null; // newest book received
    this.shown = null; // book on screen
    this.lastBookAt = 0; // wall ms
    this.createdAt = Date.now();
    this.count = 0; // books this second
    this.latTsSum = 0;
    this.latPtsSum = 0;
    this.ups = 0;
    this.latTs = NaN;
    this.latPts = NaN;
    this.statsDirty = true;
    this.chartDirty = false;
    this.tradesDirty = false;
    this.trades = Array.from({ length: TRADES }, () => ({ ts: 0, seq: 0, price: 0, size: 0, side: "" }));
    this.tradeHead = 0; // slot of the newest trade
    this.tradeCount = 0;
    this.tradesShown = -1;
    this.lastTradeTs = 0;
    this.lastTradeSeq = 0;
    this.state = "";
    this.stale = null; // {text} when stale
    this.mismatches = 0;
    this.root = el("section", "panel");
    this.root.dataset.instrument = id;
    this.root.setAttribute("aria-labelledby", `${this.uid}-title`);
    this._onRemove = onRemove;
    if (inst) this._build();
    else this._buildUnknown();
  }

  // -- construction --

  _header() {
    const title = el("h2", "title", this.id);
    title.id = `${this.uid}-title`;
    const head = el("header", "panel-head", title);
    if (this.inst && this.inst.description) head.append(el("span", "desc", this.inst.description));
    const remove = el("button", "remove", "×");
    remove.type = "button";
    remove.title = `Remove ${this.id}`;
    remove.setAttribute("aria-label", `Remove ${this.id}`);
    remove.addEventListener("click", () => this._onRemove(this.id));
    this.headEl = head;
    return { head, remove };
  }

  _buildUnknown() {
    const { head, remove } = this._header();
    head.append(remove);
    const msg = el("p", "unknown-msg");
    msg.append(`Unknown instrument “${this.id}”: this server does not list it. Check the name, or remove this panel.`);
    this.root.append(head, msg);
    this.root.dataset.state = this.state = "unknown";
  }

  _build() {
    const { head, remove } = this._header();
    this.badge = el("span", "badge", "");
    this.badgeText = document.createTextNode("… checking");
    this.badge.append(this.badgeText);
    this.badge.dataset.verified = "pending";
    this.badge.setAttribute("role", "status");
    head.append(this.badge, remove);

    this.statusText = document.createTextNode("Waiting for the first book…");
    this.status = el("p", "panel-status", this.statusText);

    const stat = (label, cls = "") => {
      const c = cell("v");
      const box = el("div", "stat " + cls, el("dt", "", label), el("dd", "", c.node));
      return { box, text: c.text };
    };
    this.sBid = stat("Best bid", "bid");
    this.sAsk = stat("Best ask", "ask");
    this.sSpread = stat("Spread", "wide");
    this.sMid = stat("Mid");
    this.sUps = stat("Updates/s");
    this.sLatTs = stat("Latency exch.");
    this.sLatPts = stat("Latency publ.");
    this.sLatTs.box.title = "exchange time (ts) to this browser, mean over the last second";
    this.sLatPts.box.title = "publish time at the ingestor (pts) to this browser, mean over the last second";
    const stats = el("dl", "stats");
    for (const s of [this.sBid, this.sAsk, this.sSpread, this.sMid, this.sUps, this.sLatTs, this.sLatPts]) stats.append(s.box);

    // Ladder: asks (worst at top, best next to the spread), spread row, bids (best first).
    const ladder = el("div", "ladder");
    ladder.setAttribute("role", "table");
    ladder.setAttribute("aria-label", `${this.id} order book ladder`);
    const headRow = el("div", "lrow lhead");
    headRow.setAttribute("role", "row");
    for (const [cls, name] of [["side", "Side"], ["px", "Price"], ["sz", "Size"], ["cum", "Total"]]) {
      const c = el("span", `c ${cls}`, name);
      c.setAttribute("role", "columnheader");
      headRow.append(c);
    }
    ladder.append(headRow);
    this.askRows = [];
    this.bidRows = [];
    const askNodes = [];
    for (let i = 0; i < LEVELS; i++) {
      const row = this._levelRow("ask");
      this.askRows.push(row);
      askNodes.unshift(row.node);
    }
    ladder.append(...askNodes);
    const spread = cell("mid", "spread –");
    this.spreadText = spread.text;
    const spreadRow = el("div", "lrow spread", spread.node);
    spreadRow.setAttribute("role", "row");
    ladder.append(spreadRow);
    for (let i = 0; i < LEVELS; i++) {
      const row = this._levelRow("bid");
      this.bidRows.push(row);
      ladder.append(row.node);
    }

    const canvas = el("canvas", "depth");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `${this.id} cumulative depth: bids to the left of the mid, asks to the right`);
    this.chart = new DepthChart(canvas);
    if (chartColors) this.chart.colors = chartColors;
    charts.set(canvas, this);

    const trades = el("div", "trades");
    trades.setAttribute("role", "table");
    trades.setAttribute("aria-label", `${this.id} last trades, newest first`);
    const tHead = el("div", "trow thead");
    tHead.setAttribute("role", "row");
    for (const [cls, name] of [["t", "Time"], ["s", "Side"], ["px", "Price"], ["sz", "Size"]]) {
      const c = el("span", `c ${cls}`, name);
      c.setAttribute("role", "columnheader");
      tHead.append(c);
    }
    trades.append(tHead);
    this.tradeRows = [];
    for (let i = 0; i < TRADES; i++) {
      const t = cell("t"), s = cell("s"), p = cell("px"), z = cell("sz");
      const node = el("div", "trow empty", t.node, s.node, p.node, z.node);
      node.setAttribute("role", "row");
      this.tradeRows.push({ node, t: t.text, s: s.text, p: p.text, z: z.text, seq: -1, ts: -1, cls: "trow empty" });
    }
    trades.append(...this.tradeRows.map((r) => r.node));

    const midLabel = cell("", "");
    this.midLabelText = midLabel.text;
    midLabel.node.className = "dlabel mid";
    const depthBox = el("div", "depth-box", canvas, el("span", "dlabel bids", "▲ BIDS (buy)"), el("span", "dlabel asks", "ASKS (sell) ▼"), midLabel.node);
    const side = el("div", "aside", el("h3", "sub", "Depth"), depthBox, el("h3", "sub", "Last trades"), trades);
    const body = el("div", "panel-body", ladder, side);
    this.root.append(head, this.status, stats, body);
    this.root.dataset.state = this.state = "waiting";
    resizer.observe(canvas);
  }

  _levelRow(side) {
    const label = cell("side", side);
    const px = cell("px"), sz = cell("sz"), cum = cell("cum");
    const bar = el("span", "bar");
    const node = el("div", `lrow lvl ${side} empty`, bar, label.node, px.node, sz.node, cum.node);
    node.setAttribute("role", "row");
    return { node, bar, px: px.text, sz: sz.text, cum: cum.text, price: NaN, size: NaN, cumLots: -1, scale: -1, base: `lrow lvl ${side}`, cls: `lrow lvl ${side} empty`, flip: false };
  }

  /** Redraw the chart on the next frame (new theme colours). */
  repaint() {
    if (!this.inst) return;
    if (chartColors) this.chart.colors = chartColors;
    this.chartDirty = true;
    requestRender(this);
  }

  destroy() {
    dirty.delete(this);
    if (this.chart) resizer.unobserve(this.chart.canvas);
    this.root.remove();
  }

  // -- input (per message: store and ask for a frame, nothing else) --

  onBook(msg) {
    if (!this.inst) return;
    this.book = msg;
    this.lastBookAt = Date.now();
    const nowUs = this.lastBookAt * 1000;
    this.count++;
    this.latTsSum += nowUs - msg.ts;
    this.latPtsSum += nowUs - msg.pts;
    if (!this.shown || (this.stale && this.stale.quiet)) {
      if (this.stale && this.stale.quiet) this.stale = null;
      this.statsDirty = true;
    }
    this.chartDirty = true;
    requestRender(this);
  }

  onTrade(msg) {
    if (!this.inst) return;
    // A resubscription replays recent trades: keep only what is newer than what we hold.
    if (msg.ts < this.lastTradeTs || (msg.ts === this.lastTradeTs && msg.seq <= this.lastTradeSeq)) return;
    this.lastTradeTs = msg.ts;
    this.lastTradeSeq = msg.seq;
    this.tradeHead = (this.tradeHead + 1) % TRADES;
    const slot = this.trades[this.tradeHead];
    slot.ts = msg.ts;
    slot.seq = msg.seq;
    slot.price = msg.price;
    slot.size = msg.size;
    slot.side = msg.side;
    if (this.tradeCount < TRADES) this.tradeCount++;
    this.tradesDirty = true;
    requestRender(this);
  }

  /** Called about twice a second: rates, latency means, and whether the panel is stale. */
  tick(global, closeSecond) {
    if (!this.inst) return;
    if (closeSecond) {
      this.ups = this.count;
      if (this.count) {
        this.latTs = this.latTsSum / this.count / 1000;
        this.latPts = this.latPtsSum / this.count / 1000;
      }
      this.count = this.latTsSum = this.latPtsSum = 0;
    }
    let stale = null;
    if (global) {
      stale = { text: global, quiet: false };
    } else {
      const last = this.lastBookAt || this.createdAt;
      if (Date.now() - last > QUIET_MS) {
        stale = {
          text: this.lastBookAt ? `Stale: no update since ${clock(last)} (${ago(last)})` : `Stale: no book received since ${clock(last)} (${ago(last)})`,
          quiet: true,
        };
      }
    }
    this.stale = stale;
    this.statsDirty = true;
    requestRender(this);
  }

  // -- output (once per frame at most) --

  render() {
    if (!this.inst) return;
    const book = this.book;
    if (book !== this.shown && book) {
      this._renderBook(book, this.shown);
      this.shown = book;
    }
    if (this.tradesDirty) {
      this.tradesDirty = false;
      this._renderTrades();
    }
    if (this.statsDirty) {
      this.statsDirty = false;
      this._renderStatus();
    }
  }

  /** The canvas part of a frame, after every panel's DOM writes. */
  paint() {
    if (this.chartDirty && this.shown) {
      this.chartDirty = false;
      this.chart.draw(this.shown.bids, this.shown.asks);
    }
  }

  _renderStatus() {
    setText(this.sUps.text, String(this.ups));
    setText(this.sLatTs.text, Number.isNaN(this.latTs) ? "–" : `${this.latTs.toFixed(1)} ms`);
    setText(this.sLatPts.text, Number.isNaN(this.latPts) ? "–" : `${this.latPts.toFixed(1)} ms`);
    const state = this.stale ? "stale" : this.shown ? "live" : "waiting";
    if (state !== this.state) this.root.dataset.state = this.state = state;
    setText(this.statusText, this.stale ? this.stale.text : this.shown ? "" : "Waiting for the first book…");
  }

  _renderBook(book, prev) {
    const inst = this.inst;
    const { asks, bids } = book;
    let max = 0;
    const na = Math.min(asks.length, LEVELS);
    const nb = Math.min(bids.length, LEVELS);
    for (let i = 0; i < na; i++) if (asks[i][1] > max) max = asks[i][1];
    for (let i = 0; i < nb; i++) if (bids[i][1] > max) max = bids[i][1];
    this._renderSide(this.askRows, asks, prev ? prev.asks : null, max, 1);
    this._renderSide(this.bidRows, bids, prev ? prev.bids : null, max, -1);

    const bid = bids.length ? bids[0][0] : NaN;
    const ask = asks.length ? asks[0][0] : NaN;
    setText(this.sBid.text, bids.length ? inst.price(bid) : "–");
    setText(this.sAsk.text, asks.length ? inst.price(ask) : "–");
    if (bids.length && asks.length) {
      const b = inst.ticks(bid);
      const a = inst.ticks(ask);
      const spread = inst.priceOfTicks(a - b);
      const bps = ((2e4 * (a - b)) / (a + b)).toFixed(2);
      setText(this.sSpread.text, `${spread} · ${bps} bps`);
      const mid = inst.priceOfTicks((a + b) / 2, 1);
      setText(this.sMid.text, mid);
      setText(this.midLabelText, `mid ${mid}`);
      setText(this.spreadText, `spread ${spread} (${bps} bps)`);
    } else {
      setText(this.sSpread.text, "–");
      setText(this.sMid.text, "–");
      setText(this.midLabelText, bids.length || asks.length ? "one side empty" : "empty book");
      setText(this.spreadText, "spread –");
    }

    const computed = inst.checksum(asks, bids);
    const ok = computed === book.checksum;
    if (!ok) this.mismatches++;
    const verdict = ok ? "ok" : "bad";
    if (this.badge.dataset.verified !== verdict) this.badge.dataset.verified = verdict;
    setText(this.badgeText, ok ? "✓ book verified" : "✗ checksum mismatch");
    this.badge.title = ok
      ? `checksum ${book.checksum} matches the book at seq ${book.seq}`
      : `book at seq ${book.seq}: computed ${computed}, message says ${book.checksum} (${this.mismatches} mismatches so far)`;
    this.root.dataset.seq = book.seq;
  }

  /** dir 1: asks (prices rising away from the spread), -1: bids (falling). */
  _renderSide(rows, levels, prevLevels, max, dir) {
    const inst = this.inst;
    const n = Math.min(levels.length, LEVELS);
    let cumLots = 0;
    let j = 0;
    const pn = prevLevels ? prevLevels.length : 0;
    for (let i = 0; i < LEVELS; i++) {
      const row = rows[i];
      if (i >= n) {
        if (row.cls !== row.base + " empty") {
          row.node.className = row.cls = row.base + " empty";
          setText(row.px, "");
          setText(row.sz, "");
          setText(row.cum, "");
          row.bar.style.transform = "scaleX(0)";
          row.price = row.size = NaN;
          row.cumLots = row.scale = -1;
        }
        continue;
      }
      const price = levels[i][0];
      const size = levels[i][1];
      cumLots += inst.lots(size);
      // Did this price level change since the last frame? Walk the previous side in step.
      let changed = false;
      if (prevLevels) {
        while (j < pn && (prevLevels[j][0] - price) * dir < 0) j++;
        changed = !(j < pn && prevLevels[j][0] === price && prevLevels[j][1] === size);
      }
      if (price !== row.price) {
        row.price = price;
        setText(row.px, inst.price(price));
      }
      if (size !== row.size) {
        row.size = size;
        setText(row.sz, inst.size(size));
      }
      if (cumLots !== row.cumLots) {
        row.cumLots = cumLots;
        setText(row.cum, ((cumLots * inst.lotUnits) / inst.sizeScale).toFixed(inst.sizeDecimals));
      }
      const scale = max > 0 ? Math.round((size / max) * 1000) : 0;
      if (scale !== row.scale) {
        row.scale = scale;
        row.bar.style.transform = `scaleX(${scale / 1000})`;
      }
      let cls = row.base;
      if (changed) {
        row.flip = !row.flip;
        cls += row.flip ? " fa" : " fb"; // a new animation name restarts the flash
      } else if (row.cls !== row.base + " empty") {
        cls = row.cls; // keep a running flash
      }
      if (cls !== row.cls) row.node.className = row.cls = cls;
    }
  }

  _renderTrades() {
    const inst = this.inst;
    for (let k = 0; k < TRADES; k++) {
      const row = this.tradeRows[k];
      if (k >= this.tradeCount) {
        if (row.seq !== -1) {
          row.node.className = row.cls = "trow empty";
          setText(row.t, "");
          setText(row.s, "");
          setText(row.p, "");
          setText(row.z, "");
          row.seq = row.ts = -1;
        }
        continue;
      }
      const trade = this.trades[(this.tradeHead - k + TRADES) % TRADES];
      if (trade.seq === row.seq && trade.ts === row.ts) continue;
      const fresh = k === 0;
      row.seq = trade.seq;
      row.ts = trade.ts;
      const buy = trade.side === "buy";
      setText(row.t, clockMs(trade.ts));
      setText(row.s, buy ? "▲ BUY" : "▼ SELL");
      setText(row.p, inst.price(trade.price));
      setText(row.z, inst.size(trade.size));
      const cls = `trow ${buy ? "buy" : "sell"}${fresh ? (row.cls.endsWith(" fa") ? " fb" : " fa") : ""}`;
      if (cls !== row.cls) row.node.className = row.cls = cls;
    }
  }
}
