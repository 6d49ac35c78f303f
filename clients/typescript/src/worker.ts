// The ticker a page's worker script runs, for `VerdictSession`'s
// `workerUrl` option. Browsers throttle the timers of a hidden tab (Chrome
// runs them at most once a minute after five minutes hidden), which could
// make heartbeats late; a dedicated worker's timers are not throttled that
// way, and each tick it posts wakes the session, which then sends whatever
// is due by the wall clock.
//
// The worker script must be a same-origin file (a blob: URL would break a
// CSP of `script-src 'self'`), e.g. one bundled with esbuild from:
//
//     import { startTicker } from "verdict-client/worker";
//     startTicker(self);

/** The part of a worker's global scope the ticker uses. */
export interface TickerScope {
  postMessage(message: unknown): void;
}

/** Default tick period: often enough for any heartbeat interval of a second or more. */
export const DEFAULT_TICK_MS = 1000;

/** Posts `{ type: "tick" }` every `intervalMs`; returns a function that stops it. */
export function startTicker(scope: TickerScope, intervalMs: number = DEFAULT_TICK_MS): () => void {
  const timer = setInterval(() => scope.postMessage({ type: "tick" }), Math.max(100, intervalMs));
  return () => clearInterval(timer);
}
