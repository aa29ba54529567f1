// Instrument reference data in the browser: exact integer units from the decimal
// strings, formatting with the instrument's decimals, and the book checksum.
import { crc32 } from "./crc32.js";

export const CHECKSUM_DEPTH = 10;

/**
 * The integer number of 10^-decimals units in a decimal string ("0.25", 2 -> 25),
 * computed on the digits, so no float ever enters it.
 */
export function decimalUnits(step, decimals) {
  const m = /^\s*(\d*)(?:\.(\d*))?\s*$/.exec(String(step));
  if (!m || (m[1] === "" && !m[2])) throw new Error(`bad decimal ${JSON.stringify(step)}`);
  let frac = m[2] || "";
  if (frac.length > decimals) {
    if (/[^0]/.test(frac.slice(decimals))) throw new Error(`${step} has more than ${decimals} decimals`);
    frac = frac.slice(0, decimals);
  }
  const n = parseInt((m[1] || "0") + frac.padEnd(decimals, "0"), 10);
  if (!(n > 0)) throw new Error(`${step} is not a positive step`);
  return n;
}

export class Instrument {
  constructor(json) {
    this.id = json.id;
    this.kind = json.kind || "";
    this.description = json.description || "";
    this.priceDecimals = json.price_decimals;
    this.sizeDecimals = json.size_decimals;
    this.priceScale = 10 ** this.priceDecimals;
    this.sizeScale = 10 ** this.sizeDecimals;
    this.tickUnits = decimalUnits(json.tick_size, this.priceDecimals);
    this.lotUnits = decimalUnits(json.lot_size, this.sizeDecimals);
  }

  /** Integer ticks of a JSON price (it is the decimal rounded to price_decimals). */
  ticks(price) {
    return Math.round((price * this.priceScale) / this.tickUnits);
  }

  /** Integer lots of a JSON size. */
  lots(size) {
    return Math.round((size * this.sizeScale) / this.lotUnits);
  }

  price(value) {
    return value.toFixed(this.priceDecimals);
  }

  size(value) {
    return value.toFixed(this.sizeDecimals);
  }

  /** A price given in ticks (possibly a half tick, for a mid) with `extra` more decimals. */
  priceOfTicks(ticks, extra = 0) {
    return ((ticks * this.tickUnits) / this.priceScale).toFixed(this.priceDecimals + extra);
  }

  /** The text the checksum covers: best 10 asks then best 10 bids as ticks:lots. */
  checksumText(asks, bids) {
    return this._side(asks) + "|" + this._side(bids);
  }

  _side(levels) {
    let out = "";
    const n = Math.min(levels.length, CHECKSUM_DEPTH);
    for (let i = 0; i < n; i++) {
      const level = levels[i];
      if (i) out += ",";
      out += this.ticks(level[0]) + ":" + this.lots(level[1]);
    }
    return out;
  }

  /** CRC32 of the book as docs/architecture.md defines it; compare with the snapshot's `checksum`. */
  checksum(asks, bids) {
    return crc32(this.checksumText(asks, bids));
  }
}
