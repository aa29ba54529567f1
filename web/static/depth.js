// The cumulative depth chart of one panel, on a canvas: bid and ask stairs that
// start at zero at the mid and climb outwards. Sizes come from a ResizeObserver,
// never from reading layout while drawing, and the canvas draws no text (canvas
// text makes the browser resolve the canvas's style, forcing a layout mid-frame).

const PAD_X = 6;
const PAD_TOP = 6;
const PAD_BOTTOM = 2;

export class DepthChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: true });
    this.width = 0;
    this.height = 0;
    this.dpr = 1;
    this.colors = { bid: "#2ebd85", ask: "#f6465d", bidFill: "rgba(46,189,133,.25)", askFill: "rgba(246,70,93,.25)", grid: "#444" };
  }

  /** Set the drawing size in CSS pixels; the bitmap follows devicePixelRatio. */
  resize(width, height, dpr) {
    const w = Math.max(1, Math.round(width * dpr));
    const h = Math.max(1, Math.round(height * dpr));
    if (w === this.canvas.width && h === this.canvas.height && dpr === this.dpr) return false;
    this.width = width;
    this.height = height;
    this.dpr = dpr;
    this.canvas.width = w;
    this.canvas.height = h;
    return true;
  }

  /** Draw the stairs; returns nothing, the labels are the panel's DOM. */
  draw(bids, asks) {
    const { ctx, width: w, height: h, colors } = this;
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    if (w < 20 || h < 30 || !bids.length || !asks.length) return;
    const mid = (bids[0][0] + asks[0][0]) / 2;
    const span = Math.max(mid - bids[bids.length - 1][0], asks[asks.length - 1][0] - mid) || 1;
    let bidTotal = 0;
    let askTotal = 0;
    for (let i = 0; i < bids.length; i++) bidTotal += bids[i][1];
    for (let i = 0; i < asks.length; i++) askTotal += asks[i][1];
    const cx = w / 2;
    this._mid = mid;
    this._span = span;
    this._half = cx - PAD_X;
    this._base = h - PAD_BOTTOM;
    this._top = Math.max(bidTotal, askTotal) || 1;
    this._rise = this._base - PAD_TOP;

    ctx.strokeStyle = colors.grid;
    ctx.lineWidth = 1;
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(Math.round(cx) + 0.5, 0);
    ctx.lineTo(Math.round(cx) + 0.5, this._base);
    ctx.stroke();
    ctx.setLineDash([]);

    this._stairs(bids, cx, cx - this._half, colors.bid, colors.bidFill);
    this._stairs(asks, cx, cx + this._half, colors.ask, colors.askFill);
  }

  _x(price) {
    return this.width / 2 + ((price - this._mid) / this._span) * this._half;
  }

  _y(cum) {
    return this._base - (cum / this._top) * this._rise;
  }

  _stairs(levels, cx, edge, stroke, fill) {
    const ctx = this.ctx;
    const base = this._base;
    ctx.beginPath();
    ctx.moveTo(cx, base);
    let cum = 0;
    for (let i = 0; i < levels.length; i++) {
      const px = this._x(levels[i][0]);
      ctx.lineTo(px, this._y(cum));
      cum += levels[i][1];
      ctx.lineTo(px, this._y(cum));
    }
    ctx.lineTo(edge, this._y(cum));
    ctx.strokeStyle = stroke;
    ctx.lineWidth = 1.5;
    ctx.stroke();
    ctx.lineTo(edge, base);
    ctx.closePath();
    ctx.fillStyle = fill;
    ctx.fill();
  }
}
