// The order of one instrument's messages: (epoch, seq). Within an epoch seq only
// moves forward; another epoch is a reset, taken at once whatever its seq (the
// bridge confirmed it against Redis before forwarding it), and epochs are never
// compared by size. An epoch left behind never comes back: after a reconnect to a
// bridge that has not seen the new run yet, its old books are refused.

const RETIRED_KEPT = 8; // epochs remembered as left behind

export class Order {
  constructor() {
    this.epoch = null; // none yet
    this.seq = -1;
    this.retired = [];
  }

  /**
   * "next" (forward within the epoch), "reset" (a new epoch), or "" (drop it: not after
   * what we have). With `again`, the seq held is welcome again (the answer to a resync).
   */
  accept(epoch, seq, again = false) {
    if (epoch === this.epoch) {
      if (!(seq > this.seq || (again && seq === this.seq))) return "";
      this.seq = seq;
      return "next";
    }
    if (this.retired.includes(epoch)) return "";
    const first = this.epoch === null;
    if (!first) {
      this.retired.push(this.epoch);
      if (this.retired.length > RETIRED_KEPT) this.retired.shift();
    }
    this.epoch = epoch;
    this.seq = seq;
    return first ? "next" : "reset";
  }
}
