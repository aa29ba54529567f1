// The last trades of one panel, newest first: time, side in words and arrow
// (never colour alone), price, size. A fixed ring of slots and a fixed set of
// rows: no allocation grows with the number of trades.
import { TextRows, fit } from "./columns.js";
import { clockMs } from "./clock.js";
import { el, setText } from "./dom.js";
import { Order } from "./order.js";

const TRADES = 12;
const FLASH_MS = 300;
const TIME_CHARS = 13; // "12:34:56.789 "
const SIDE_CHARS = 6; // "▲ BUY " / "▼ SELL"

export class Trades extends TextRows {
  constructor(id) {
    super();
    this.slots = Array.from({ length: TRADES }, () => ({ ts: 0, price: 0, size: 0, buy: false }));
    this.head = 0; // slot of the newest trade
    this.count = 0;
    this.fresh = 0; // trades pushed since the last render
    this.order = new Order(); // (epoch, seq) of the newest trade kept
    this.headS = document.createTextNode("Side  Price");
    this.headZ = document.createTextNode(" Size");
    this.headRow = el("div", "trow thead", el("span", "t", "Time".padEnd(TIME_CHARS)), el("span", "s", this.headS), this.headZ);
    this.rows = []; // in screen order, newest first
    for (let i = 0; i < TRADES; i++) {
      const t = document.createTextNode("");
      const s = document.createTextNode("");
      const z = document.createTextNode("");
      const node = el("div", "trow empty", el("span", "t", t), el("span", "s", s), z);
      this.rows.push({ node, t, s, z, buy: false, cls: "trow empty", hlUntil: 0 });
    }
    this.node = el("div", "trades", this.probe, this.headRow, ...this.rows.map((r) => r.node));
    this.node.setAttribute("role", "group");
    this.node.setAttribute("aria-label", `${id} last trades, newest first`);
    this.content = [5, 4]; // widest price and size text seen ("Price", "Size")
    this.widths = [0, 0];
    this.rewrite = true; // every row must be written (new column widths)
    this._relayout();
  }

  /** Keep `msg` if it is after what we hold in (epoch, seq) order (a resubscription replays recent trades). */
  push(msg) {
    if (!this.order.accept(msg.epoch || 0, msg.seq)) return false;
    this.head = (this.head + 1) % TRADES;
    const slot = this.slots[this.head];
    slot.ts = msg.ts;
    slot.price = msg.price;
    slot.size = msg.size;
    slot.buy = msg.side === "buy";
    if (this.count < TRADES) this.count++;
    if (this.fresh < TRADES) this.fresh++;
    return true;
  }

  _relayout() {
    fit(this.chars, TIME_CHARS + SIDE_CHARS, this.content, this.widths);
    setText(this.headS, "Side  " + "Price".padStart(this.widths[0]));
    setText(this.headZ, "Size".padStart(this.widths[1]));
    this.rewrite = true;
  }

  /** Show what arrived; returns whether a highlight is still showing. */
  render(inst, now) {
    const fresh = this.fresh;
    if (fresh || this.rewrite) {
      this.fresh = 0;
      for (let k = 0; k < fresh; k++) {
        const slot = this.slots[(this.head - k + TRADES) % TRADES];
        this._widen(inst.price(slot.price).length, inst.size(slot.size).length);
      }
      if (this.rewrite || fresh >= TRADES) {
        this.rewrite = false;
        for (let k = 0; k < this.count; k++) this._write(this.rows[k], k, inst, 0);
      } else {
        // New trades go on top in rows taken from the bottom: one row written per
        // trade instead of every row shifted by rewriting its text.
        for (let k = fresh - 1; k >= 0; k--) {
          const row = this.rows.pop();
          this.node.insertBefore(row.node, this.rows[0].node);
          this.rows.unshift(row);
          this._write(row, k, inst, now + FLASH_MS);
        }
      }
    }
    return this.expire(now);
  }

  _widen(p, z) {
    if (p <= this.content[0] && z <= this.content[1]) return;
    this.content[0] = Math.max(p, this.content[0]);
    this.content[1] = Math.max(z, this.content[1]);
    this._relayout();
  }

  /** Write the k-th newest trade into `row`, highlighted until `hlUntil` (0: not). */
  _write(row, k, inst, hlUntil) {
    const slot = this.slots[(this.head - k + TRADES) % TRADES];
    const [wp, wz] = this.widths;
    setText(row.t, clockMs(slot.ts));
    setText(row.s, (slot.buy ? "▲ BUY " : "▼ SELL") + inst.price(slot.price).padStart(wp));
    setText(row.z, inst.size(slot.size).padStart(wz));
    row.buy = slot.buy;
    row.hlUntil = hlUntil;
    this._classify(row);
  }

  _classify(row) {
    const cls = `trow ${row.buy ? "buy" : "sell"}${row.hlUntil ? " hl" : ""}`;
    if (cls !== row.cls) row.node.className = row.cls = cls;
  }

  /** Clear highlights once they are old; returns whether one remains. */
  expire(now) {
    let left = false;
    for (let k = 0; k < TRADES; k++) {
      const row = this.rows[k];
      if (!row.hlUntil) continue;
      if (row.hlUntil <= now) {
        row.hlUntil = 0;
        this._classify(row);
      } else {
        left = true;
      }
    }
    return left;
  }
}
