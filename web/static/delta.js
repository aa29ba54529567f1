// Book deltas in the browser: a delta message applied to the book held, as
// marketdata/delta.py does it. A delta side lists, best first, the levels that
// changed or entered the published depth and, with size 0, those that left it, so
// the result is exactly the next published book: nothing to sort, nothing to cut.

/**
 * One side of the book (best-first [price, size] pairs) with `changes` applied;
 * `descending` for bids. Both walk in step, as two sorted lists merge; prices are
 * the JSON numbers, and one price always decodes to the same number.
 */
export function applySide(levels, changes, descending) {
  const out = [];
  let i = 0;
  let j = 0;
  while (i < levels.length && j < changes.length) {
    const p = levels[i][0];
    const [q, size] = changes[j];
    if (p === q) {
      if (size) out.push(changes[j]);
      i++;
      j++;
    } else if (p > q === descending) {
      out.push(levels[i++]);
    } else {
      if (size) out.push(changes[j]);
      j++;
    }
  }
  while (i < levels.length) out.push(levels[i++]);
  for (; j < changes.length; j++) if (changes[j][1]) out.push(changes[j]);
  return out;
}

/** The book a delta makes of `book` (a parsed book message, or one made by this): a new object, the old one kept. */
export function applyDelta(book, delta) {
  return {
    type: "book",
    instrument: delta.instrument,
    seq: delta.seq,
    ts: delta.ts,
    pts: delta.pts,
    epoch: delta.epoch,
    bids: applySide(book.bids, delta.bids, true),
    asks: applySide(book.asks, delta.asks, false),
    checksum: delta.checksum,
  };
}
