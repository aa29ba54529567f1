// The book one panel holds, kept from snapshots and deltas in (epoch, seq) order
// (order.js). A snapshot is kept as the text it came in until someone needs it
// parsed (most are replaced before they are shown). Each delta is applied to the
// book held (delta.js) and its result's checksum verified at once, shown or not. A
// delta that does not start at the book held (a gap) or whose result fails its
// checksum makes the holder ask for the snapshot again (a resync) and drop deltas
// until one comes; a resync unanswered for RESYNC_AGAIN_MS is asked again.
import { applyDelta } from "./delta.js";
import { Order } from "./order.js";

export const RESYNC_AGAIN_MS = 2000;

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null; // the bridge forwards what the ingestor wrote; this does not happen
  }
}

export class HeldBook {
  /** `inst` verifies the checksums; `ask()` asks the bridge for the newest snapshot again. */
  constructor(inst, ask) {
    this.inst = inst;
    this.ask = ask;
    this.order = new Order(); // (epoch, seq) of the book held
    this.book = null; // text or parsed object, null before the first
    this.stale = 0; // messages dropped for not being after the book held
    this.applied = 0; // deltas applied
    this.mismatches = 0; // deltas whose result failed its checksum
    this.resyncs = 0; // snapshots asked for again
    this.waiting = false; // a resync is asked: deltas are dropped until a snapshot comes
    this.askedAt = 0; // performance.now() of the last ask
  }

  /** The book held, parsed. */
  parsed() {
    if (typeof this.book === "string") this.book = parse(this.book);
    return this.book;
  }

  /** A snapshot (text or parsed) and its {epoch, seq}: "next", "reset" (a new epoch) or "" (dropped). */
  snapshot(book, head) {
    const step = this.order.accept(head.epoch, head.seq, this.waiting);
    if (!step) {
      this.stale++;
      return "";
    }
    this.waiting = false;
    this.book = book;
    return step;
  }

  /** A delta (parsed): the book it makes, with `verified` set, or null (dropped, or a resync asked). */
  delta(delta) {
    const order = this.order;
    if (this.waiting || delta.epoch !== order.epoch) return null; // another run's: its snapshot resets the book
    if (!(delta.seq > order.seq)) {
      this.stale++;
      return null;
    }
    const held = this.parsed();
    if (!held || delta.prev_seq !== order.seq) {
      this._resync();
      return null;
    }
    const next = applyDelta(held, delta);
    next.verified = this.inst.checksum(next.asks, next.bids) === delta.checksum;
    this.applied++;
    order.accept(delta.epoch, delta.seq);
    this.book = next;
    if (!next.verified) {
      this.mismatches++;
      this._resync();
    }
    return next;
  }

  /** Called now and then: a resync that went unanswered (a reconnect lost it) is asked again, not counted again. */
  tick(now) {
    if (this.waiting && now - this.askedAt > RESYNC_AGAIN_MS) {
      this.askedAt = now;
      this.ask();
    }
  }

  _resync() {
    this.waiting = true;
    this.resyncs++;
    this.askedAt = performance.now();
    this.ask();
  }
}
