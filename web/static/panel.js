// One instrument's panel: summary figures, ladder, depth chart and last trades,
// a "book verified" badge, and whether its data is live or stale.
//
// Messages only store the newest book (latest wins) and ask for a frame; a frame
// renders each dirty panel once: every panel's DOM writes first, then every
// canvas. Nothing reads layout while rendering; sizes come from a ResizeObserver.
// A book goes on only if it is after the one held in (epoch, seq) order
// (held.js): never a lower seq within an epoch; a new epoch replaces the book. With
// deltas, each is applied and verified as it comes (held.js); a gap or a mismatch
// asks for the snapshot again, and the panel counts those resyncs in its stats.
import { charsIn } from "./columns.js";
import { ago, clock } from "./clock.js";
import { el, setText } from "./dom.js";
import { DepthChart } from "./depth.js";
import { HeldBook } from "./held.js";
import { Ladder } from "./ladder.js";
import { Trades } from "./trades.js";

const QUIET_MS = 5000; // no book for this long: the panel says it is stale
// A panel renders at most once per animation frame, and at most every
// MIN_RENDER_MS: numbers changing faster than about 10 times a second cannot be
// read, and the cap keeps eight busy panels within a frame's budget. Measured
// (bench/bench_dashboard.py, 8 panels, fastest feed, 2 cores): 50 ms gave 18-27
// fps, the main thread saturated by layout; 100 ms gives about 55.
const MIN_RENDER_MS = 100;

// -- frame scheduling -------------------------------------------------------------

const dirty = new Set();
let frameRequested = false;
export const renderStats = { frames: 0, renders: 0, renderMs: 0 };

function requestRender(panel) {
  if (panel.renderTimer) return; // already due at its next slot
  const wait = panel.renderedAt + MIN_RENDER_MS - performance.now();
  if (wait > 0) {
    panel.renderTimer = setTimeout(() => {
      panel.renderTimer = 0;
      enqueue(panel);
    }, wait);
  } else {
    enqueue(panel);
  }
}

function enqueue(panel) {
  dirty.add(panel);
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(flush);
  }
}

function flush() {
  frameRequested = false;
  const t0 = performance.now();
  for (const panel of dirty) {
    panel.renderedAt = t0;
    panel.render(t0);
  }
  for (const panel of dirty) panel.paint();
  renderStats.renders += dirty.size;
  dirty.clear();
  renderStats.frames++;
  renderStats.renderMs += performance.now() - t0;
}

// -- sizes, observed rather than measured ----------------------------------------

const observed = new WeakMap(); // element -> [panel, what]
const resizer = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const seen = observed.get(entry.target);
    if (!seen) continue;
    const [panel, what] = seen;
    const box = entry.contentBoxSize && entry.contentBoxSize[0];
    const w = box ? box.inlineSize : entry.contentRect.width;
    const h = box ? box.blockSize : entry.contentRect.height;
    if (panel.resized(what, w, h)) requestRender(panel);
  }
});

let chartColors = null;

/** New colours for every depth chart (after a theme change). */
export function setChartColors(colors) {
  chartColors = colors;
}

let nextId = 0;

// -- the panel -----------------------------------------------------------------------

export class Panel {
  /**
   * `inst` is an Instrument, or null when the server does not list `id`; `onResync(id)`
   * asks the bridge for the newest snapshot again; `deltas`: the socket gets deltas.
   */
  constructor(id, inst, { onRemove, onResync = () => {}, deltas = false }) {
    this.id = id;
    this.inst = inst;
    this.uid = `p${nextId++}`;
    this.held = new HeldBook(inst, () => onResync(id)); // newest book received
    this.deltas = deltas;
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
    this.flashTimer = 0;
    this.renderTimer = 0;
    this.renderedAt = -Infinity; // performance.now() of the last render
    this.state = "";
    this.stale = null; // {text, quiet} while stale
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
    return { head, remove };
  }

  _buildUnknown() {
    const { head, remove } = this._header();
    head.append(remove);
    const msg = el("p", "unknown-msg", `Unknown instrument “${this.id}”: this server does not list it. Check the name, or remove this panel.`);
    this.root.append(head, msg);
    this.root.dataset.state = this.state = "unknown";
  }

  _build() {
    const { head, remove } = this._header();
    this.badgeText = document.createTextNode("… checking");
    this.badge = el("span", "badge", this.badgeText);
    this.badge.dataset.verified = "pending";
    this.badge.setAttribute("role", "status");
    head.append(this.badge, remove);

    this.statusText = document.createTextNode("Waiting for the first book…");
    this.status = el("p", "panel-status", this.statusText);

    const stat = (label, cls = "") => {
      const text = document.createTextNode("–");
      const box = el("div", `stat ${cls}`, el("dt", "", label), el("dd", "", text));
      return { box, text };
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
    this.sResyncs = stat("Resyncs");
    this.sResyncs.box.title = this.deltas
      ? "snapshots asked for again after a gap or a checksum mismatch in a delta"
      : "deltas are off (?deltas=0): every update is a whole snapshot";
    const stats = el("dl", "stats");
    for (const s of [this.sBid, this.sAsk, this.sSpread, this.sMid, this.sUps, this.sLatTs, this.sLatPts, this.sResyncs]) {
      stats.append(s.box);
    }

    this.ladder = new Ladder(this.id);
    this.trades = new Trades(this.id);

    const canvas = el("canvas", "depth");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `${this.id} cumulative depth: bids to the left of the mid, asks to the right`);
    this.chart = new DepthChart(canvas);
    if (chartColors) this.chart.colors = chartColors;
    // Chart labels are DOM, not canvas text (canvas text makes the browser resolve
    // the canvas's style, forcing a layout mid-frame), and sit above the canvas,
    // not over it: content overlapping a canvas costs the compositor extra layers.
    this.midLabel = document.createTextNode("");
    const labels = el("div", "dlabels", el("span", "", "▲ BIDS (buy)"), el("span", "mid", this.midLabel), el("span", "", "ASKS (sell) ▼"));
    const depthBox = el("div", "depth-box", canvas);
    const aside = el("div", "aside", el("h3", "sub", "Depth"), labels, depthBox, el("h3", "sub", "Last trades"), this.trades.node);
    const body = el("div", "panel-body", this.ladder.node, aside);
    this.root.append(head, this.status, stats, body);
    this.root.dataset.state = this.state = "waiting";
    for (const [node, what] of [[canvas, "chart"], [this.ladder.node, "ladder"], [this.trades.node, "trades"]]) {
      observed.set(node, [this, what]);
      resizer.observe(node);
    }
  }

  /** A ResizeObserver saw `what` at w x h CSS pixels (layout is clean here, so reading is free). */
  resized(what, w, h) {
    if (what === "chart") {
      this.chartDirty = this.chart.resize(w, h, window.devicePixelRatio || 1) || this.chartDirty;
      return this.chartDirty;
    }
    if (what === "ladder") {
      if (!this.ladder.resize(charsIn(w, this.ladder.probe))) return false;
      this.shown = null; // write every row again at the new widths
      return true;
    }
    return this.trades.resize(charsIn(w, this.trades.probe));
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
    clearTimeout(this.flashTimer);
    clearTimeout(this.renderTimer);
    if (this.chart) {
      for (const node of [this.chart.canvas, this.ladder.node, this.trades.node]) resizer.unobserve(node);
    }
    this.root.remove();
  }

  // -- input (per message: store and ask for a frame, nothing else) --

  /** `book` is the message text (parsed only if it is shown) or an object; `head` its {seq, ts, pts, epoch}. */
  onBook(book, head) {
    if (!this.inst) return;
    const step = this.held.snapshot(book, head);
    if (!step) return;
    // A new epoch is another run of the market: its book replaces the old one, so the
    // ladder writes every row afresh instead of flashing the differences.
    if (step === "reset") this.shown = null;
    this._took(head.ts, head.pts);
  }

  /** A delta (parsed): applied to the book held, verified, or a resync asked (held.js). */
  onDelta(delta) {
    if (!this.inst) return;
    const resyncs = this.held.resyncs;
    if (this.held.delta(delta)) this._took(delta.ts, delta.pts);
    if (this.held.resyncs !== resyncs) this.statsDirty = true;
  }

  _took(ts, pts) {
    this.lastBookAt = Date.now();
    const nowUs = this.lastBookAt * 1000;
    this.count++;
    this.latTsSum += nowUs - ts;
    this.latPtsSum += nowUs - pts;
    if (!this.shown || (this.stale && this.stale.quiet)) {
      if (this.stale && this.stale.quiet) this.stale = null;
      this.statsDirty = true;
    }
    this.chartDirty = true;
    requestRender(this);
  }

  onTrade(msg) {
    if (this.inst && this.trades.push(msg)) requestRender(this);
  }

  /** Called about twice a second: rates, latency means, and whether the panel is stale. */
  tick(global, closeSecond) {
    if (!this.inst) return;
    this.held.tick(performance.now());
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
        const what = this.lastBookAt ? "no update" : "no book received";
        stale = { text: `Stale: ${what} since ${clock(last)} (${ago(last)})`, quiet: true };
      }
    }
    this.stale = stale;
    this.statsDirty = true;
    requestRender(this);
  }

  // -- output (once per frame at most) --

  render(now) {
    if (!this.inst) return;
    let flashing = false;
    const book = this.held.book && this.held.parsed();
    if (book && book !== this.shown) {
      this._renderBook(book, this.shown, now);
      this.shown = book;
    }
    flashing = this.ladder.expire(now) > 0;
    flashing = this.trades.render(this.inst, now) || flashing;
    if (flashing && !this.flashTimer) {
      // Come back to clear the highlights even if no message arrives meanwhile.
      this.flashTimer = setTimeout(() => {
        this.flashTimer = 0;
        requestRender(this);
      }, 150);
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
    const held = this.held;
    setText(this.sResyncs.text, this.deltas ? String(held.resyncs) : "off");
    const data = this.root.dataset;
    data.resyncs = held.resyncs;
    data.mismatches = this.mismatches + held.mismatches;
    data.deltas = held.applied;
    const state = this.stale ? "stale" : this.shown ? "live" : "waiting";
    if (state !== this.state) this.root.dataset.state = this.state = state;
    setText(this.statusText, this.stale ? this.stale.text : this.shown ? "" : "Waiting for the first book…");
  }

  _renderBook(book, prev, now) {
    const inst = this.inst;
    const { asks, bids } = book;
    this.ladder.render(inst, book, prev, now);

    setText(this.sBid.text, bids.length ? inst.price(bids[0][0]) : "–");
    setText(this.sAsk.text, asks.length ? inst.price(asks[0][0]) : "–");
    if (bids.length && asks.length) {
      // Spread and mid from integer ticks: no float drift in what is printed.
      const b = inst.ticks(bids[0][0]);
      const a = inst.ticks(asks[0][0]);
      const spread = inst.priceOfTicks(a - b);
      const bps = ((2e4 * (a - b)) / (a + b)).toFixed(2);
      const mid = inst.priceOfTicks((a + b) / 2, 1);
      setText(this.sSpread.text, `${spread} · ${bps} bps`);
      setText(this.sMid.text, mid);
      setText(this.midLabel, `mid ${mid}`);
      this.ladder.setSpread(`spread ${spread} (${bps} bps)`);
    } else {
      setText(this.sSpread.text, "–");
      setText(this.sMid.text, "–");
      setText(this.midLabel, bids.length || asks.length ? "one side empty" : "empty book");
      this.ladder.setSpread("spread –");
    }

    // A book made by a delta was verified when the delta was applied (held.js); a snapshot is verified here.
    const computed = book.verified === undefined ? inst.checksum(asks, bids) : null;
    const ok = computed === null ? book.verified : computed === book.checksum;
    if (!ok && computed !== null) this.mismatches++;
    const verdict = ok ? "ok" : "bad";
    if (this.badge.dataset.verified !== verdict) {
      this.badge.dataset.verified = verdict;
      setText(this.badgeText, ok ? "✓ book verified" : "✗ checksum mismatch");
    }
    this.badge.title = ok
      ? `CRC32 ${book.checksum} matches the book at seq ${book.seq}, computed in this browser`
      : `book at seq ${book.seq}: ${computed === null ? "its delta gives another book than" : `computed ${computed},`} the message's ${book.checksum} (${this.mismatches + this.held.mismatches} mismatches so far)`;
    this.root.dataset.seq = book.seq;
    this.root.dataset.epoch = book.epoch || 0;
  }
}
