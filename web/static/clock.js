// How the dashboard writes times: a time of day for states and staleness, one with
// milliseconds for trades (built by hand: it runs for every trade row written), and
// how long ago something was.

/** The local time of day of wall-clock `ms`, 24-hour ("14:03:27"). */
export function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

/** The local time of day of `us` microseconds since the epoch, with milliseconds and a trailing space ("14:03:27.041 "). */
export function clockMs(us) {
  const d = new Date(us / 1000);
  const p2 = (n) => (n < 10 ? "0" : "") + n;
  const ms = d.getMilliseconds();
  return `${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())}.${ms < 10 ? "00" : ms < 100 ? "0" : ""}${ms} `;
}

/** How long ago wall-clock `ms` was, in seconds up to 90 s, then in minutes. */
export function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 90 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}
