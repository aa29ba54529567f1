// Rows of padded monospace text. A ladder or trade row is one or two text nodes,
// not a cell per number: a changed row then costs the browser one small inline
// layout instead of one per cell. Column widths are counted in characters, from
// the row's observed width and the width of one character of the font.

const PROBE_TEXT = "0000000000";

/** A hidden span whose width gives the width of one character of its font. */
function makeProbe() {
  const probe = document.createElement("span");
  probe.className = "probe";
  probe.setAttribute("aria-hidden", "true");
  probe.textContent = PROBE_TEXT;
  return probe;
}

/**
 * Characters that fit on a row of a box `width` CSS pixels wide, one kept for the
 * row's padding. Call it from a ResizeObserver, where layout is clean.
 */
export function charsIn(width, probe) {
  const w = probe.getBoundingClientRect().width / PROBE_TEXT.length;
  return w > 0 ? Math.floor(width / w) - 1 : 0;
}

/**
 * A block of such rows (the ladder, the trades), `chars` characters wide. It holds
 * the probe that measures its font; a subclass lays its columns out again in
 * `_relayout()` when the width changes.
 */
export class TextRows {
  constructor() {
    this.probe = makeProbe();
    this.chars = 40;
  }

  /** The block is now `chars` characters wide; returns whether that changes anything. */
  resize(chars) {
    if (chars === this.chars || chars <= 0) return false;
    this.chars = chars;
    this._relayout();
    return true;
  }
}

/**
 * Padded widths for right-aligned columns holding at most `content[i]` characters,
 * after `fixed` characters of other text, spreading what is left of `chars` as
 * gaps (at least one space before each column). Writes into `out` and returns it.
 */
export function fit(chars, fixed, content, out) {
  const n = content.length;
  let extra = chars - fixed;
  for (let i = 0; i < n; i++) extra -= content[i];
  const gap = Math.max(1, Math.floor(extra / n));
  for (let i = 0; i < n; i++) out[i] = content[i] + gap;
  out[n - 1] += Math.max(0, extra - gap * n);
  return out;
}
