// The price ladder of one panel: asks above (worst at the top, best next to the
// spread), bids below (best first), each row a size bar scaled to the largest
// visible level, the price, the size and the cumulative size from the spread.
//
// Rows are built once and reused. A render writes text node data, the bar's width
// and a class name, only where something changed; nothing reads layout. The bar
// changes width, not a transform: a transform is a paint property node, and
// changing its value makes the browser re-layerize the whole page every frame.
import { TextRows, fit } from "./columns.js";
import { el, setText } from "./dom.js";

export const LEVELS = 10; // rows a side
const FLASH_MS = 300; // a changed level stays highlighted this long
const SIDE_CHARS = 4; // "ask ", "bid ", "Side"
const HEAD = ["Price", "Size", "Total"];

/** Record that column `k` must hold `text`; true when it had to grow. */
function widen(content, k, text) {
  if (text.length <= content[k]) return false;
  content[k] = text.length;
  return true;
}

class Row {
  constructor(side) {
    this.side = side;
    this.px = document.createTextNode("");
    this.rest = document.createTextNode("");
    this.bar = el("span", "bar");
    this.label = el("span", "side", side + " ");
    this.node = el("div", `lrow lvl ${side} empty`, this.bar, this.label, el("span", "px", this.px), this.rest);
    this.base = `lrow lvl ${side}`;
    this.cls = `${this.base} empty`;
    this.price = NaN;
    this.size = NaN;
    this.cumLots = -1;
    this.pxStr = "";
    this.szStr = "";
    this.cumStr = "";
    this.scale = -1;
    this.textDirty = false;
    this.empty = true;
    this.hlUntil = 0; // performance.now() ms; 0: not highlighted
    this.ver = -1;
  }

  setClass() {
    const cls = this.base + (this.empty ? " empty" : this.hlUntil ? " hl" : "");
    if (cls !== this.cls) this.node.className = this.cls = cls;
  }
}

export class Ladder extends TextRows {
  constructor(id) {
    super();
    this.headPx = document.createTextNode("Price");
    this.headRest = document.createTextNode(" Size Total");
    const head = el("div", "lrow lhead", el("span", "side", "Side"), el("span", "px", this.headPx), this.headRest);
    this.asks = [];
    this.bids = [];
    for (let i = 0; i < LEVELS; i++) {
      this.asks.push(new Row("ask"));
      this.bids.push(new Row("bid"));
    }
    this.spreadText = document.createTextNode("spread –");
    const spread = el("div", "lrow spread", this.spreadText);
    this.node = el("div", "ladder", this.probe, head);
    for (let i = LEVELS - 1; i >= 0; i--) this.node.append(this.asks[i].node);
    this.node.append(spread);
    for (let i = 0; i < LEVELS; i++) this.node.append(this.bids[i].node);
    this.node.setAttribute("aria-label", `${id} order book: asks above the spread, bids below; price, size, total`);
    this.node.setAttribute("role", "group");
    this.content = [HEAD[0].length, HEAD[1].length, HEAD[2].length]; // widest text seen per column
    this.widths = [0, 0, 0];
    this.ver = 0;
    this.highlighted = 0;
    this._relayout();
  }

  _relayout() {
    fit(this.chars, SIDE_CHARS, this.content, this.widths);
    this.ver++;
    const [wp, ws, wc] = this.widths;
    setText(this.headPx, HEAD[0].padStart(wp));
    setText(this.headRest, HEAD[1].padStart(ws) + HEAD[2].padStart(wc));
  }

  setSpread(text) {
    setText(this.spreadText, text);
  }

  /** Show `book`; `prev` is the book shown before (to find the levels that changed). */
  render(inst, book, prev, now) {
    const { asks, bids } = book;
    let max = 0;
    const na = Math.min(asks.length, LEVELS);
    const nb = Math.min(bids.length, LEVELS);
    for (let i = 0; i < na; i++) if (asks[i][1] > max) max = asks[i][1];
    for (let i = 0; i < nb; i++) if (bids[i][1] > max) max = bids[i][1];
    // First the numbers and their strings, then (knowing the widest) the padded text.
    this._measure(inst, this.asks, asks, prev ? prev.asks : null, max, 1, now);
    this._measure(inst, this.bids, bids, prev ? prev.bids : null, max, -1, now);
    const c = this.content;
    let grew = false; // a boolean kept as 0/1 by the bitwise or below
    for (const rows of [this.asks, this.bids]) {
      for (let i = 0; i < LEVELS; i++) {
        const r = rows[i];
        grew = widen(c, 0, r.pxStr) | widen(c, 1, r.szStr) | widen(c, 2, r.cumStr) | grew;
      }
    }
    if (grew) this._relayout();
    this._write(this.asks);
    this._write(this.bids);
  }

  /** dir 1: asks (prices rise away from the spread), -1: bids (fall). */
  _measure(inst, rows, levels, prevLevels, max, dir, now) {
    const n = Math.min(levels.length, LEVELS);
    const pn = prevLevels ? prevLevels.length : 0;
    let cumLots = 0;
    let j = 0;
    for (let i = 0; i < LEVELS; i++) {
      const row = rows[i];
      if (i >= n) {
        if (!row.empty) {
          row.empty = true;
          row.price = row.size = NaN;
          row.cumLots = row.scale = -1;
          row.pxStr = row.szStr = row.cumStr = "";
          row.textDirty = true;
          row.bar.style.width = "0%";
          row.setClass();
        }
        continue;
      }
      const price = levels[i][0];
      const size = levels[i][1];
      cumLots += inst.lots(size);
      if (prevLevels) {
        // Walk the previous side in step: did this price level appear or change size?
        while (j < pn && (prevLevels[j][0] - price) * dir < 0) j++;
        if (!(j < pn && prevLevels[j][0] === price && prevLevels[j][1] === size)) {
          if (!row.hlUntil) this.highlighted++;
          row.hlUntil = now + FLASH_MS;
        }
      }
      if (price !== row.price) {
        row.price = price;
        row.pxStr = inst.price(price);
        row.textDirty = true;
      }
      if (size !== row.size) {
        row.size = size;
        row.szStr = inst.size(size);
        row.textDirty = true;
      }
      if (cumLots !== row.cumLots) {
        row.cumLots = cumLots;
        row.cumStr = ((cumLots * inst.lotUnits) / inst.sizeScale).toFixed(inst.sizeDecimals);
        row.textDirty = true;
      }
      const scale = max > 0 ? Math.round((size / max) * 100) : 0;
      if (scale !== row.scale) {
        row.scale = scale;
        row.bar.style.width = `${scale}%`;
      }
      row.empty = false;
      row.setClass();
    }
  }

  _write(rows) {
    const [wp, ws, wc] = this.widths;
    for (let i = 0; i < LEVELS; i++) {
      const row = rows[i];
      if (!row.textDirty && row.ver === this.ver) continue;
      row.textDirty = false;
      row.ver = this.ver;
      if (row.empty) {
        setText(row.px, "");
        setText(row.rest, "");
      } else {
        setText(row.px, row.pxStr.padStart(wp));
        setText(row.rest, row.szStr.padStart(ws) + row.cumStr.padStart(wc));
      }
    }
  }

  /** Clear highlights older than FLASH_MS; returns how many remain. */
  expire(now) {
    if (!this.highlighted) return 0;
    for (const rows of [this.asks, this.bids]) {
      for (let i = 0; i < LEVELS; i++) {
        const row = rows[i];
        if (row.hlUntil && row.hlUntil <= now) {
          row.hlUntil = 0;
          this.highlighted--;
          row.setClass();
        }
      }
    }
    return this.highlighted;
  }
}
