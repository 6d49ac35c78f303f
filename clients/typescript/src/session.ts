// VerdictSession: one party's page in one session. It reports presence the
// way the server wants it (join, heartbeat a third of the session's
// presence_timeout_seconds, leave when the page goes away, join again after
// a network drop), never a status, and learns the outcome by polling the
// session until it is terminal, whoever ended it.
//
// Timing is kept as wall-clock deadlines (Date.now()), not as counted timer
// ticks: a browser throttles the timers of a hidden tab, so every wake-up
// (the timer, the tab becoming visible, the `online` event, an optional
// worker's tick) checks which deadlines have passed and acts on them.

import {
  createVerdictClient,
  isTerminal,
  type EndResponse,
  type FetchLike,
  type Session,
  type TokenSource,
  type VerdictClient,
} from "./client";
import { VerdictProblem } from "./problem";

export type SessionState = "idle" | "joined" | "offline" | "left" | "decided";

/** The outcome, as the server decided it. */
export interface DecidedEvent {
  status: string;
  reason: string | null;
  billable_seconds: number | null;
  /** `customer`, `provider`, `service`, `admin`, or `system` for the sweeper. */
  ended_by: string | null;
  ended_at: string | null;
  session: Session;
}

export interface OfflineEvent {
  /** Why the presence call failed: a network error, or a transient problem (5xx, rate limited). */
  error: unknown;
  /** When the next attempt goes out, in milliseconds from now. */
  retryInMs: number;
}

export interface HeartbeatEvent {
  /** When it was sent (Date.now()). */
  at: number;
  /** When the next one is due (Date.now() scale). */
  nextAt: number;
}

export interface VerdictSessionEvents {
  decided: DecidedEvent;
  joined: Session;
  /** The server's answer, or undefined for the keepalive leave sent on `pagehide`. */
  left: Session | undefined;
  offline: OfflineEvent;
  rejoined: Session;
  heartbeat: HeartbeatEvent;
  error: VerdictProblem | Error;
}

/** What the session listens on: a window, or anything with its events. */
export interface EventTargetLike {
  addEventListener(type: string, listener: (event: Event) => void): void;
  removeEventListener(type: string, listener: (event: Event) => void): void;
  /** A window's document, for `visibilityState`. */
  document?: { visibilityState?: string };
}

export interface VerdictSessionOptions {
  baseUrl: string;
  /** The party's token (customer or provider), or a function giving the current one. */
  token: TokenSource;
  sessionId: string;
  fetch?: FetchLike;
  /** How often the session is read for its outcome (default 2000 ms). */
  pollIntervalMs?: number;
  /**
   * Where `pagehide`, `pageshow`, `visibilitychange` and `online` are heard;
   * defaults to globalThis when it has addEventListener (a window). `null`:
   * none.
   */
  target?: EventTargetLike | null;
  /**
   * A same-origin script that calls `startTicker()` from
   * `verdict-client/worker`: its ticks wake the session even where the
   * browser throttles a hidden tab's timers. Not a blob: URL (the page's
   * CSP `script-src 'self'` refuses those).
   */
  workerUrl?: string | URL;
}

/** Default outcome polling period. */
export const DEFAULT_POLL_INTERVAL_MS = 2000;
/** First retry after a failed presence call; doubles up to the heartbeat interval. */
export const RETRY_MIN_MS = 1000;
/** Never retry less often than this, whatever the heartbeat interval. */
export const RETRY_MAX_MS = 30_000;

/** A third of the session's presence timeout (at least a second). */
export function heartbeatIntervalMs(session: Pick<Session, "presence_timeout_seconds">): number {
  return Math.max(1000, Math.floor((session.presence_timeout_seconds * 1000) / 3));
}

/** A network failure or a transient problem: the same call may work later. */
function isTransient(error: unknown): boolean {
  return error instanceof VerdictProblem ? error.transient : true;
}

function asError(error: unknown): VerdictProblem | Error {
  return error instanceof Error ? error : new Error(String(error));
}

type Handler<K extends keyof VerdictSessionEvents> = (payload: VerdictSessionEvents[K]) => void;

export class VerdictSession {
  readonly sessionId: string;
  /** The typed client this session calls through (usable for any route). */
  readonly client: VerdictClient;

  readonly #pollIntervalMs: number;
  readonly #target: EventTargetLike | undefined;
  readonly #workerUrl: string | URL | undefined;
  readonly #handlers = new Map<keyof VerdictSessionEvents, Set<(payload: never) => void>>();

  #state: SessionState = "idle";
  #session: Session | undefined;
  #starting: Promise<Session> | undefined;
  /** Bumped by stop(): a start() still reading the session then gives up. */
  #generation = 0;
  /** True between start() and decided/stop(): timers and listeners are live. */
  #running = false;
  /** The session takes the parties' own presence (`presence_source` `any`). */
  #ownPresence = false;
  /** Presence calls are wanted now (joined or offline, not left). */
  #presenceActive = false;
  #everJoined = false;
  #leftOnPagehide = false;
  #intervalMs = 20_000;
  /** Next heartbeat, or next rejoin attempt while offline (Date.now() scale). */
  #presenceAt: number | undefined;
  #pollAt: number | undefined;
  #presenceBusy = false;
  #pollBusy = false;
  #attempt = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #detach: (() => void) | undefined;

  constructor(options: VerdictSessionOptions) {
    this.sessionId = options.sessionId;
    this.client = createVerdictClient({
      baseUrl: options.baseUrl,
      token: options.token,
      fetch: options.fetch,
    });
    this.#pollIntervalMs = Math.max(10, options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS);
    const fallback = globalThis as unknown as Partial<EventTargetLike>;
    this.#target =
      options.target === null
        ? undefined
        : (options.target ??
          (typeof fallback.addEventListener === "function"
            ? (fallback as EventTargetLike)
            : undefined));
    this.#workerUrl = options.workerUrl;
  }

  get state(): SessionState {
    return this.#state;
  }

  /** The last representation of the session seen. */
  get session(): Session | undefined {
    return this.#session;
  }

  /** The heartbeat period in milliseconds (known after start()). */
  get heartbeatIntervalMs(): number {
    return this.#intervalMs;
  }

  on<K extends keyof VerdictSessionEvents>(event: K, handler: Handler<K>): () => void {
    let set = this.#handlers.get(event);
    if (!set) {
      set = new Set();
      this.#handlers.set(event, set);
    }
    set.add(handler as (payload: never) => void);
    return () => {
      set.delete(handler as (payload: never) => void);
    };
  }

  /**
   * Reads the session; when its presence is the parties' own, joins and
   * heartbeats; polls until it is terminal, then emits `decided` once and
   * stops. A terminal session is decided at once, without a presence call.
   * Rejects when the session cannot be read (404, 403, 401) or the first
   * join is refused for good.
   */
  start(): Promise<Session> {
    if (this.#state === "decided" && this.#session) return Promise.resolve(this.#session);
    if (this.#state === "left" && this.#running && this.#ownPresence) {
      return this.#rejoinAfterLeave();
    }
    this.#starting ??= this.#start().finally(() => {
      this.#starting = undefined;
    });
    return this.#starting;
  }

  async #start(): Promise<Session> {
    const generation = this.#generation;
    const session = await this.client.getSession(this.sessionId);
    this.#session = session;
    if (generation !== this.#generation) return session;
    if (isTerminal(session)) {
      this.#decide(session);
      return session;
    }
    this.#running = true;
    this.#ownPresence = session.presence_source === "any";
    this.#intervalMs = heartbeatIntervalMs(session);
    this.#attach();
    this.#pollAt = Date.now() + this.#pollIntervalMs;
    if (this.#ownPresence) {
      this.#presenceActive = true;
      try {
        await this.#join(true);
      } catch (error) {
        this.stop();
        throw error;
      }
      await this.#firstHeartbeat();
    }
    this.#arm();
    return this.#session ?? session;
  }

  /** Leaves the session: no more heartbeats; the outcome is still followed. */
  async leave(): Promise<void> {
    if (this.#state === "decided") return;
    this.#presenceActive = false;
    this.#presenceAt = undefined;
    this.#leftOnPagehide = false;
    this.#setState("left");
    if (!this.#ownPresence && this.#session !== undefined) {
      // Presence from the platform: nothing to tell the server.
      this.#emit("left", undefined);
      return;
    }
    try {
      const session = await this.client.leave(this.sessionId);
      this.#session = session;
      this.#emit("left", session);
    } catch (error) {
      if (this.#isTerminalConflict(error)) {
        this.#pollNow();
        return;
      }
      throw error;
    }
  }

  /**
   * Ends the session. No body is sent: the server decides from what it saw.
   * `decided` fires with the outcome before this resolves.
   */
  async end(): Promise<EndResponse> {
    const response = await this.client.end(this.sessionId);
    this.#decide(response.session);
    return response;
  }

  /** Stops timers, listeners and the worker; sends nothing. */
  stop(): void {
    this.#generation += 1;
    this.#running = false;
    this.#presenceActive = false;
    this.#teardown();
  }

  // ---- presence -------------------------------------------------------

  /**
   * Joins (first time or again); failures go through #presenceFailed, except
   * that start()'s first join rejects when refused for good (401, 403, 429).
   */
  async #join(fromStart = false): Promise<void> {
    this.#presenceBusy = true;
    try {
      const session = await this.client.join(this.sessionId);
      if (!this.#presenceActive) return;
      this.#session = session;
      this.#attempt = 0;
      // The first heartbeat is due at once (see #firstHeartbeat).
      this.#presenceAt = Date.now();
      const again = this.#everJoined;
      this.#everJoined = true;
      this.#setState("joined");
      this.#emit(again ? "rejoined" : "joined", session);
    } catch (error) {
      if (fromStart && !isTransient(error) && !this.#isTerminalConflict(error)) {
        throw error;
      }
      this.#presenceFailed(error);
    } finally {
      this.#presenceBusy = false;
    }
  }

  async #heartbeat(): Promise<void> {
    this.#presenceBusy = true;
    const at = Date.now();
    try {
      await this.client.heartbeat(this.sessionId);
      if (!this.#presenceActive) return;
      this.#attempt = 0;
      this.#presenceAt = at + this.#intervalMs;
      this.#emit("heartbeat", { at, nextAt: this.#presenceAt });
    } catch (error) {
      this.#presenceFailed(error);
    } finally {
      this.#presenceBusy = false;
    }
  }

  #presenceFailed(error: unknown): void {
    if (!this.#presenceActive) return;
    if (this.#isTerminalConflict(error)) {
      // The session ended meanwhile: no more presence, read the outcome.
      this.#presenceActive = false;
      this.#presenceAt = undefined;
      this.#pollNow();
      return;
    }
    if (error instanceof VerdictProblem && error.slug === "presence-from-platform") {
      // Never expected: presence_source is read before any call.
      this.#presenceActive = false;
      this.#presenceAt = undefined;
      this.#emit("error", error);
      return;
    }
    if (!isTransient(error)) {
      this.#emit("error", asError(error));
      this.#presenceAt = Date.now() + this.#intervalMs;
      return;
    }
    this.#attempt += 1;
    const backoff = Math.min(
      RETRY_MIN_MS * 2 ** (this.#attempt - 1),
      Math.min(this.#intervalMs, RETRY_MAX_MS),
    );
    const retryAfter =
      error instanceof VerdictProblem && error.retryAfterSeconds !== undefined
        ? error.retryAfterSeconds * 1000
        : 0;
    // Jitter: between half and all of the backoff, so that a room's parties
    // coming back from one outage do not retry in step.
    const delay = Math.max(retryAfter, Math.round(backoff * (0.5 + Math.random() * 0.5)));
    this.#presenceAt = Date.now() + delay;
    if (this.#state !== "offline") {
      this.#setState("offline");
      this.#emit("offline", { error, retryInMs: delay });
    }
  }

  #isTerminalConflict(error: unknown): boolean {
    return error instanceof VerdictProblem && error.status === 409 && error.slug === "conflict";
  }

  async #rejoinAfterLeave(): Promise<Session> {
    this.#presenceActive = true;
    this.#leftOnPagehide = false;
    await this.#join();
    await this.#firstHeartbeat();
    this.#arm();
    return this.#session as Session;
  }

  /**
   * The heartbeat right after a join. The server counts a party that never
   * heartbeats in its presence interval as present until it leaves
   * (docs/presence.md), so a tab that crashed before its first periodic heartbeat
   * would be billed until the end; one heartbeat at once arms the
   * server's timeout from the start.
   */
  async #firstHeartbeat(): Promise<void> {
    if (!this.#presenceActive || this.#state !== "joined" || this.#presenceBusy) return;
    this.#presenceAt = undefined;
    await this.#heartbeat();
  }

  // ---- outcome --------------------------------------------------------

  async #poll(): Promise<void> {
    this.#pollBusy = true;
    try {
      const session = await this.client.getSession(this.sessionId);
      if (!this.#running) return;
      this.#session = session;
      if (isTerminal(session)) this.#decide(session);
    } catch (error) {
      // A network drop is the presence loop's to report; the next poll retries.
      if (this.#running && !isTransient(error)) this.#emit("error", asError(error));
    } finally {
      this.#pollBusy = false;
      if (this.#running) this.#pollAt = Date.now() + this.#pollIntervalMs;
      this.#arm();
    }
  }

  #pollNow(): void {
    if (!this.#running) return;
    this.#pollAt = Date.now();
    this.#wake();
  }

  #decide(session: Session): void {
    this.#session = session;
    if (this.#state === "decided") return;
    this.#running = false;
    this.#presenceActive = false;
    this.#teardown();
    this.#setState("decided");
    this.#emit("decided", {
      status: session.status,
      reason: session.reason ?? null,
      billable_seconds: session.billable_seconds ?? null,
      ended_by: session.ended_by ?? null,
      ended_at: session.ended_at ?? null,
      session,
    });
  }

  // ---- scheduling -----------------------------------------------------

  /** Acts on every deadline that has passed, then sleeps until the next. */
  #wake = (): void => {
    if (!this.#running) return;
    const now = Date.now();
    if (this.#presenceActive && !this.#presenceBusy && this.#presenceAt !== undefined && now >= this.#presenceAt) {
      this.#presenceAt = undefined;
      const step = this.#state === "offline" ? this.#join() : this.#heartbeat();
      void step.catch((error: unknown) => this.#emit("error", asError(error))).finally(() => this.#arm());
    }
    if (!this.#pollBusy && this.#pollAt !== undefined && now >= this.#pollAt) {
      this.#pollAt = undefined;
      void this.#poll();
    }
    this.#arm();
  };

  #arm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (!this.#running) return;
    const deadlines = [this.#pollAt, this.#presenceActive ? this.#presenceAt : undefined].filter(
      (at): at is number => at !== undefined,
    );
    if (deadlines.length === 0) return;
    const delay = Math.max(0, Math.min(...deadlines) - Date.now());
    this.#timer = setTimeout(this.#wake, delay);
  }

  #attach(): void {
    this.#detach?.();
    const target = this.#target;
    const cleanups: (() => void)[] = [];
    if (target) {
      const listen = (type: string, listener: (event: Event) => void) => {
        target.addEventListener(type, listener);
        cleanups.push(() => target.removeEventListener(type, listener));
      };
      listen("pagehide", this.#onPagehide);
      listen("pageshow", this.#onPageshow);
      listen("visibilitychange", this.#onVisibilityChange);
      listen("online", this.#onOnline);
    }
    if (this.#workerUrl !== undefined && typeof Worker === "function") {
      const worker = new Worker(this.#workerUrl);
      worker.onmessage = () => this.#wake();
      cleanups.push(() => worker.terminate());
    }
    this.#detach = () => {
      for (const cleanup of cleanups) cleanup();
      this.#detach = undefined;
    };
  }

  #teardown(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#presenceAt = undefined;
    this.#pollAt = undefined;
    this.#detach?.();
  }

  /** The page goes away: leave with a request that outlives it. */
  #onPagehide = (): void => {
    if (!this.#presenceActive) return;
    this.#presenceActive = false;
    this.#presenceAt = undefined;
    this.#leftOnPagehide = true;
    this.#setState("left");
    // keepalive fetch, not sendBeacon: a beacon cannot carry Authorization.
    this.client.leave(this.sessionId, { keepalive: true }).then(
      (session) => {
        this.#session = session;
      },
      () => undefined,
    );
    this.#emit("left", undefined);
  };

  /** Back from the back/forward cache after a pagehide: join again. */
  #onPageshow = (event: Event): void => {
    const persisted = (event as Event & { persisted?: boolean }).persisted === true;
    if (!persisted || !this.#leftOnPagehide || !this.#running) return;
    this.#leftOnPagehide = false;
    void this.#rejoinAfterLeave().catch((error: unknown) => this.#emit("error", asError(error)));
    this.#pollNow();
  };

  /** A tab coming back: throttled timers may be late, so act on what is due now. */
  #onVisibilityChange = (): void => {
    const visibility = this.#target?.document?.visibilityState ?? "visible";
    if (visibility === "visible") this.#wake();
  };

  /** The network is back: retry at once instead of waiting out the backoff. */
  #onOnline = (): void => {
    if (this.#state === "offline" && this.#presenceActive) {
      this.#presenceAt = Date.now();
    }
    this.#wake();
  };

  #setState(state: SessionState): void {
    this.#state = state;
  }

  #emit<K extends keyof VerdictSessionEvents>(event: K, payload: VerdictSessionEvents[K]): void {
    for (const handler of [...(this.#handlers.get(event) ?? [])]) {
      try {
        (handler as Handler<K>)(payload);
      } catch (error) {
        // A failing handler must not stop the session or the other
        // handlers: report it as the platform reports uncaught errors.
        const report = (globalThis as { reportError?: (error: unknown) => void }).reportError;
        if (typeof report === "function") {
          report(error);
        } else {
          queueMicrotask(() => {
            throw error;
          });
        }
      }
    }
  }
}
