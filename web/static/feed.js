// One multiplexed WebSocket (/ws) for every panel: subscribes what the page wants,
// reconnects by itself with capped exponential backoff and jitter, resubscribes,
// and notices a dead connection (no message and no pong) without waiting for TCP.
// The page asks the bridge for batches (/ws?batch_ms=16): one frame per display
// frame at most, whatever the feed's rate, since each message event costs the page
// more than the JSON in it. Without batch_ms every message is its own frame. With
// deltas (/ws?deltas=1) a panel that finds a gap or a wrong checksum asks for the
// snapshot again (`resync`); the asks of one moment go out in one frame.

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 10000;
const CONNECT_TIMEOUT_MS = 5000;
const IDLE_BEFORE_PING_MS = 10000;
const PONG_TIMEOUT_MS = 5000;
const SUBSCRIBE_CHUNK = 40; // ids per subscribe frame, well under the bridge's --max-frame

// A book message as the ingestor encodes it begins with these fields in this order
// (marketdata/schema.py); the bridge forwards the bytes untouched.
const BOOK_HEAD = '{"v":1,"type":"book","instrument":"';

/** The integer value of `"key":` at or after `from` in `text`, or NaN. */
function peekInt(text, key, from) {
  const i = text.indexOf(key, from);
  if (i < 0) return NaN;
  let j = i + key.length;
  let n = 0;
  for (let c = text.charCodeAt(j); c >= 48 && c <= 57; c = text.charCodeAt(++j)) n = n * 10 + (c - 48);
  return j > i + key.length ? n : NaN;
}

/**
 * The routing fields of a book message without parsing it: {instrument, seq, ts,
 * pts, epoch}, or null when it does not look exactly as the ingestor writes it.
 * Most books are replaced by a newer one before the next frame, so only the one
 * shown is parsed. A book written before epochs existed is of epoch 0.
 */
export function peekBook(text) {
  if (!text.startsWith(BOOK_HEAD)) return null;
  const end = text.indexOf('"', BOOK_HEAD.length);
  if (end < 0) return null;
  const seq = peekInt(text, ',"seq":', end);
  const ts = peekInt(text, ',"ts":', end);
  const pts = peekInt(text, ',"pts":', end);
  if (Number.isNaN(seq) || Number.isNaN(ts) || Number.isNaN(pts)) return null;
  const epoch = peekInt(text, ',"epoch":', end);
  return { instrument: text.slice(BOOK_HEAD.length, end), seq, ts, pts, epoch: Number.isNaN(epoch) ? 0 : epoch };
}

/** The delay before retry number `attempt` (0-based): capped 2^n growth, 50-100 % jitter. */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
  return ceiling * (0.5 + random() / 2);
}

export class Feed {
  /**
   * onBook(instrument, text, head) gets each book message unparsed with its routing
   * fields ({seq, ts, pts, epoch}, see peekBook), onDelta(msg) each delta parsed,
   * onMessage(msg) every other server message parsed; onState(feed) is called when
   * `state` ("connecting", "open", "closed") or the retry schedule changes.
   */
  constructor(url, { onBook, onDelta = () => {}, onMessage, onState }) {
    this.url = url;
    this.onBook = onBook;
    this.onDelta = onDelta;
    this.onMessage = onMessage;
    this.onState = onState;
    this.wanted = new Set();
    this.state = "closed";
    this.retryAt = 0; // wall-clock ms of the next attempt while closed
    this.attempt = 0;
    this.messages = 0;
    this._ws = null;
    this._lastMessage = 0;
    this._pingSentAt = 0;
    this._retryTimer = 0;
    this._connectTimer = 0;
    this._started = false;
    this._resyncs = new Set(); // instruments to ask a snapshot of, sent at the end of this task
    setInterval(() => this._keepalive(), 1000);
    window.addEventListener("online", () => this.reconnectNow());
  }

  start() {
    this._started = true;
    this._connect();
  }

  /** Try at once (the network came back, or the user asked). */
  reconnectNow() {
    if (!this._started || this.state !== "closed") return;
    clearTimeout(this._retryTimer);
    this._connect();
  }

  subscribe(ids) {
    const fresh = ids.filter((id) => !this.wanted.has(id));
    for (const id of fresh) this.wanted.add(id);
    if (fresh.length && this.state === "open") this._send("subscribe", fresh);
  }

  unsubscribe(ids) {
    const gone = ids.filter((id) => this.wanted.delete(id));
    if (gone.length && this.state === "open") this._send("unsubscribe", gone);
  }

  /** Ask the bridge for the newest snapshot of `ids` again (after a gap or a checksum mismatch in a delta). */
  resync(ids) {
    const first = this._resyncs.size === 0;
    for (const id of ids) if (this.wanted.has(id)) this._resyncs.add(id);
    if (first && this._resyncs.size) {
      queueMicrotask(() => {
        const asked = [...this._resyncs];
        this._resyncs.clear();
        if (this.state === "open") this._send("resync", asked);
      });
    }
  }

  _send(op, ids) {
    for (let i = 0; i < ids.length; i += SUBSCRIBE_CHUNK) {
      const frame = { op, instruments: ids.slice(i, i + SUBSCRIBE_CHUNK) };
      if (op === "subscribe") frame.trades = true;
      this._ws.send(JSON.stringify(frame));
    }
  }

  _setState(state) {
    this.state = state;
    this.onState(this);
  }

  _connect() {
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this._closed();
      return;
    }
    this._ws = ws;
    this._setState("connecting");
    this._connectTimer = setTimeout(() => this._drop(ws, "connect timeout"), CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      clearTimeout(this._connectTimer);
      this._lastMessage = performance.now();
      this._pingSentAt = 0;
      this._setState("open");
      if (this.wanted.size) this._send("subscribe", [...this.wanted]);
    };
    ws.onmessage = (ev) => {
      this._lastMessage = performance.now();
      this._pingSentAt = 0;
      this.attempt = 0; // the server talks to us: the next drop starts the backoff afresh
      this.messages++;
      const text = ev.data;
      if (typeof text !== "string") return; // the protocol is text frames only
      const head = peekBook(text);
      if (head) {
        this.onBook(head.instrument, text, head);
        return;
      }
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        return; // not ours to crash on; the bridge never sends this
      }
      if (msg && msg.type === "batch" && Array.isArray(msg.messages)) {
        this.messages += msg.messages.length - 1;
        for (const item of msg.messages) this._dispatch(item);
      } else {
        this._dispatch(msg);
      }
    };
    ws.onclose = () => {
      if (this._ws === ws) this._closed();
    };
  }

  _dispatch(msg) {
    if (!msg || msg.type === "pong") return;
    if (msg.type === "delta") this.onDelta(msg);
    else if (msg.type === "book") this.onBook(msg.instrument, msg, { seq: msg.seq, ts: msg.ts, pts: msg.pts, epoch: msg.epoch || 0 });
    else this.onMessage(msg);
  }

  /** Give up on `ws` now (its close event may take long on a dead network). */
  _drop(ws, reason) {
    if (this._ws !== ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(4000, reason);
    } catch {
      /* already closing */
    }
    this._closed();
  }

  _closed() {
    clearTimeout(this._connectTimer);
    this._ws = null;
    const delay = backoffDelay(this.attempt++);
    this.retryAt = Date.now() + delay;
    this._retryTimer = setTimeout(() => this._connect(), delay);
    this._setState("closed");
  }

  _keepalive() {
    if (this.state !== "open") {
      if (this.state === "closed") this.onState(this); // refreshes the "retrying in" countdown
      return;
    }
    const now = performance.now();
    if (this._pingSentAt) {
      if (now - this._pingSentAt > PONG_TIMEOUT_MS) this._drop(this._ws, "no pong");
    } else if (now - this._lastMessage > IDLE_BEFORE_PING_MS) {
      this._pingSentAt = now;
      this._ws.send('{"op":"ping"}');
    }
  }
}
