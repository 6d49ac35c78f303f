// Test support: a real `verdict serve` per test group, tokens, a fetch that
// records (and can cut) the client's traffic, and waiting with a bound.

import { mintToken, startServer } from "../scripts/server.mjs";
import { vi } from "vitest";

import {
  createVerdictClient,
  VerdictSession,
  type AuditEvent,
  type DecidedEvent,
  type Session,
  type VerdictClient,
  type VerdictSessionEvents,
} from "../src/index";

export const CUSTOMER = "cust-1";
export const PROVIDER = "prov-1";

export interface TestServer {
  baseUrl: string;
  /** A token for `role` `sub`. */
  token(role: "customer" | "provider" | "service" | "admin", sub: string): string;
  customerToken: string;
  providerToken: string;
  /** A client as the platform backend (`service`). */
  service: VerdictClient;
  admin: VerdictClient;
  /** Creates a `waiting` chat session between CUSTOMER and PROVIDER. */
  createSession(id: string, extra?: Record<string, unknown>): Promise<Session>;
  /** The whole audit trail of a session, as the service sees it. */
  events(id: string): Promise<AuditEvent[]>;
  /** Moves the server's manual clock (VERDICT_CLOCK=manual only). */
  advance(seconds: number): Promise<void>;
  stop(): Promise<void>;
}

export async function startVerdict(
  options: { manualClock?: boolean; env?: Record<string, string> } = {},
): Promise<TestServer> {
  const server = await startServer(options);
  const token = (role: "customer" | "provider" | "service" | "admin", sub: string) =>
    mintToken(server.secret, role, sub);
  const service = createVerdictClient({ baseUrl: server.baseUrl, token: token("service", "backend") });
  const admin = createVerdictClient({ baseUrl: server.baseUrl, token: token("admin", "ops") });
  return {
    baseUrl: server.baseUrl,
    token,
    customerToken: token("customer", CUSTOMER),
    providerToken: token("provider", PROVIDER),
    service,
    admin,
    createSession: (id, extra = {}) =>
      service.createSession({
        id,
        kind: "chat",
        customer_id: CUSTOMER,
        provider_id: PROVIDER,
        price: { mode: "flat", amount_cents: 2500, currency: "usd" },
        ...extra,
      }),
    async events(id) {
      const events: AuditEvent[] = [];
      let after: string | undefined;
      for (let pages = 0; pages < 20; pages += 1) {
        const page = await service.events(id, { after, limit: 500 });
        events.push(...page.items);
        if (!page.next_cursor) return events;
        after = page.next_cursor;
      }
      throw new Error(`session ${id} has more than 20 pages of events`);
    },
    async advance(seconds) {
      await admin.POST("/v1/test-clock/advance", { body: { seconds } });
    },
    stop: server.stop,
  };
}

/** One request the client made, as the injected fetch saw it. */
export interface Seen {
  method: string;
  path: string;
  keepalive: boolean;
  hasBody: boolean;
  status: number | "network-error";
}

/**
 * A fetch that records every request and, while `offline` is true, fails
 * like a dropped network (a TypeError, as fetch throws).
 */
export function recordingFetch() {
  const seen: Seen[] = [];
  const control = { offline: false };
  let inflight = 0;
  const fetcher = async (request: Request): Promise<Response> => {
    const entry: Seen = {
      method: request.method,
      path: new URL(request.url).pathname,
      keepalive: request.keepalive,
      hasBody: request.body !== null,
      status: "network-error",
    };
    seen.push(entry);
    if (control.offline) throw new TypeError("fetch failed: network is down (test)");
    inflight += 1;
    try {
      const response = await fetch(request);
      entry.status = response.status;
      return response;
    } finally {
      inflight -= 1;
    }
  };
  const count = (method: string, suffix: string) =>
    seen.filter((entry) => entry.method === method && entry.path.endsWith(suffix)).length;
  return { fetch: fetcher, seen, control, count, inflight: () => inflight };
}

/** The real setTimeout, taken before any test fakes the timers. */
const realSetTimeout = globalThis.setTimeout;

/**
 * Waits until `condition()` holds, letting real I/O run; fails after
 * `boundMs` of real time. Uses the real setTimeout and performance.now(),
 * which the tests' fake timers leave alone.
 */
export async function until(
  condition: () => boolean | Promise<boolean>,
  what: string,
  boundMs = 15_000,
): Promise<void> {
  const start = performance.now();
  while (!(await condition())) {
    if (performance.now() - start > boundMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => realSetTimeout(resolve, 5));
  }
}

/** A window-like event target whose visibility the test sets. */
export class FakeWindow extends EventTarget {
  document = { visibilityState: "visible" };

  fire(type: string, init: Record<string, unknown> = {}): void {
    this.dispatchEvent(Object.assign(new Event(type), init));
  }
}

/** The audit trail reduced to `type:party:actor-role` words, for assertions. */
export function trail(events: AuditEvent[]): string[] {
  return events.map((event) => [event.type, event.party ?? "-", event.actor.role].join(":"));
}

/** Only the client's timers and Date are faked: real I/O keeps running. */
export function fakeClientTimers(): void {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date"] });
}

const opened: VerdictSession[] = [];

/** Stops every VerdictSession `party()` made (call after each test). */
export function stopOpened(): void {
  for (const session of opened.splice(0)) session.stop();
}

const EVENT_NAMES: (keyof VerdictSessionEvents)[] = [
  "decided",
  "joined",
  "left",
  "offline",
  "rejoined",
  "heartbeat",
  "error",
];

/** A party's VerdictSession with a recording fetch, a fake window and a log of its events. */
export function party(
  server: TestServer,
  sessionId: string,
  who: "customer" | "provider",
  options: { pollIntervalMs?: number; token?: () => string } = {},
) {
  const recording = recordingFetch();
  const window = new FakeWindow();
  const session = new VerdictSession({
    baseUrl: server.baseUrl,
    token: options.token ?? (who === "customer" ? server.customerToken : server.providerToken),
    sessionId,
    fetch: recording.fetch,
    target: window,
    pollIntervalMs: options.pollIntervalMs ?? 20,
  });
  opened.push(session);
  const log: { event: keyof VerdictSessionEvents; payload: unknown }[] = [];
  for (const name of EVENT_NAMES) session.on(name, (payload) => log.push({ event: name, payload }));
  const fired = (name: keyof VerdictSessionEvents) => log.filter((entry) => entry.event === name);
  const decided = () => fired("decided")[0]?.payload as DecidedEvent | undefined;
  return { session, recording, window, log, fired, decided };
}

/**
 * Moves time for the server (its manual clock) and for the parties' fake
 * timers together, 10 s at a time, letting each step's requests finish: the
 * parties heartbeat as they would while that much time passes.
 */
export async function elapse(
  server: TestServer,
  seconds: number,
  ...parties: { recording: { inflight: () => number } }[]
): Promise<void> {
  for (let left = seconds; left > 0; left -= 10) {
    const step = Math.min(10, left);
    await server.advance(step);
    await vi.advanceTimersByTimeAsync(step * 1000);
    await until(() => parties.every((one) => one.recording.inflight() === 0), "the step's requests");
  }
}
