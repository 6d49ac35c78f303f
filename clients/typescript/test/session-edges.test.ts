// VerdictSession's edges against a real server: what stops after leave()
// and after `decided`, refused calls reported as `error`, Retry-After
// honoured, handlers that unsubscribe or throw.

import { afterAll, afterEach, beforeAll, expect, test, vi } from "vitest";

import { VerdictProblem, VerdictSession } from "../src/index";
import { elapse, FakeWindow, fakeClientTimers, party, startVerdict, stopOpened, until, type TestServer } from "./support";

let server: TestServer;
beforeAll(async () => {
  server = await startVerdict({ manualClock: true });
});
afterAll(async () => {
  await server?.stop();
});
afterEach(() => {
  stopOpened();
  vi.useRealTimers();
});

test("after leave() no heartbeat goes out, and the outcome is still followed", async () => {
  fakeClientTimers();
  await server.createSession("leave-stops");
  const customer = party(server, "leave-stops", "customer", { pollIntervalMs: 10_000 });
  await customer.session.start();
  await customer.session.leave();
  await vi.advanceTimersByTimeAsync(60_000);
  // Only the one right after the join.
  expect(customer.recording.count("POST", "/heartbeat")).toBe(1);
  await server.service.end("leave-stops");
  const before = customer.session.session;
  await vi.advanceTimersByTimeAsync(10_000);
  await until(() => customer.session.session !== before, "a poll after the leave");
  expect(customer.decided()).toMatchObject({ status: "cancelled", ended_by: "service" });
});

test("after decided nothing more is sent, and decided fired once", async () => {
  fakeClientTimers();
  await server.createSession("quiet");
  const customer = party(server, "quiet", "customer", { pollIntervalMs: 1000 });
  await customer.session.start();
  await customer.session.end();
  const sent = customer.recording.seen.length;
  customer.window.fire("visibilitychange");
  customer.window.fire("online");
  customer.window.fire("pagehide", { persisted: false });
  await vi.advanceTimersByTimeAsync(3_600_000);
  expect(customer.recording.seen.length).toBe(sent);
  expect(customer.fired("decided")).toHaveLength(1);
  // start() again only answers the decided session.
  expect((await customer.session.start()).status).toBe("cancelled");
  expect(customer.recording.seen.length).toBe(sent);
});

test("a refused heartbeat (expired token) is an error event; heartbeats go on at their period", async () => {
  fakeClientTimers();
  await server.createSession("refused");
  let token = server.customerToken;
  const customer = party(server, "refused", "customer", {
    pollIntervalMs: 3_600_000,
    token: () => token,
  });
  await customer.session.start();
  token = `${server.customerToken}forged`;
  await vi.advanceTimersByTimeAsync(20_000);
  await until(() => customer.fired("error").length === 1, "the error event");
  const error = customer.fired("error")[0]?.payload;
  expect(error).toBeInstanceOf(VerdictProblem);
  expect((error as VerdictProblem).status).toBe(401);
  expect(customer.session.state).toBe("joined");
  token = server.customerToken;
  await vi.advanceTimersByTimeAsync(19_999);
  expect(customer.recording.count("POST", "/heartbeat")).toBe(2);
  await vi.advanceTimersByTimeAsync(1);
  await until(() => customer.fired("heartbeat").length === 2, "the next heartbeat");
});

test("a rate-limited heartbeat waits out Retry-After before retrying", async () => {
  fakeClientTimers();
  await server.createSession("limited");
  let limited = false;
  const seen: string[] = [];
  const session = new VerdictSession({
    baseUrl: server.baseUrl,
    token: server.customerToken,
    sessionId: "limited",
    target: null,
    pollIntervalMs: 3_600_000,
    fetch: async (request) => {
      const path = new URL(request.url).pathname;
      seen.push(path);
      if (limited && path.endsWith("/heartbeat")) {
        return new Response(
          JSON.stringify({
            type: "urn:verdict:problem:rate-limited",
            title: "Too Many Requests",
            status: 429,
            detail: "over its rate (test)",
          }),
          { status: 429, headers: { "content-type": "application/problem+json", "retry-after": "9" } },
        );
      }
      return fetch(request);
    },
  });
  const offline: number[] = [];
  session.on("offline", ({ retryInMs }) => offline.push(retryInMs));
  await session.start();
  limited = true;
  await vi.advanceTimersByTimeAsync(20_000);
  await until(() => offline.length === 1, "offline after the 429");
  expect(offline[0]).toBe(9000);
  limited = false;
  await vi.advanceTimersByTimeAsync(8_999);
  expect(seen.filter((path) => path.endsWith("/join"))).toHaveLength(1);
  await vi.advanceTimersByTimeAsync(1);
  await until(() => session.state === "joined", "joined again after Retry-After");
  expect(seen.filter((path) => path.endsWith("/join"))).toHaveLength(2);
  session.stop();
});

test("on() returns an unsubscribe, and a throwing handler does not stop the others", async () => {
  await server.createSession("handlers");
  const customer = party(server, "handlers", "customer");
  const calls: string[] = [];
  const unsubscribe = customer.session.on("joined", () => calls.push("removed"));
  unsubscribe();
  customer.session.on("joined", () => {
    calls.push("throws");
    throw new Error("a page's handler failed");
  });
  customer.session.on("joined", () => calls.push("after"));
  const uncaught: unknown[] = [];
  const listener = (error: unknown) => uncaught.push(error);
  process.on("uncaughtException", listener);
  try {
    await customer.session.start();
    await until(() => uncaught.length === 1, "the handler's error reported");
  } finally {
    process.off("uncaughtException", listener);
  }
  expect(calls).toEqual(["throws", "after"]);
  expect(customer.session.state).toBe("joined");
});

test("a page that dies right after joining is not billed past its presence timeout", async () => {
  fakeClientTimers();
  await server.createSession("crash");
  const customer = party(server, "crash", "customer");
  const provider = party(server, "crash", "provider");
  await customer.session.start();
  await provider.session.start();
  // The customer's tab crashes: no pagehide, no leave, no more heartbeats.
  customer.session.stop();
  await elapse(server, 120, provider);
  const ended = await provider.session.end();
  // Without the heartbeat right after the join, the server would count the
  // customer present until this end (120 s, completed).
  expect(ended.outcome.status).toBe("cancelled");
  expect(ended.outcome.billable_seconds).toBe(0);
});

test("a first join lost on the network leaves start() offline, and the retry is the first join", async () => {
  fakeClientTimers();
  await server.createSession("first-join-lost");
  let dropJoins = true;
  const window = new FakeWindow();
  const session = new VerdictSession({
    baseUrl: server.baseUrl,
    token: server.customerToken,
    sessionId: "first-join-lost",
    target: window,
    pollIntervalMs: 3_600_000,
    fetch: async (request) => {
      if (dropJoins && request.url.endsWith("/join")) throw new TypeError("fetch failed (test)");
      return fetch(request);
    },
  });
  const events: string[] = [];
  for (const name of ["joined", "rejoined", "offline"] as const) session.on(name, () => events.push(name));
  try {
    const started = await session.start();
    expect(started.status).toBe("waiting");
    expect(session.state).toBe("offline");
    dropJoins = false;
    window.fire("online");
    await until(() => session.state === "joined", "joined once the network is back");
    expect(events).toEqual(["offline", "joined"]);
  } finally {
    session.stop();
  }
});

test("stop() while start() is still reading the session makes it join nothing", async () => {
  await server.createSession("stopped-early");
  const customer = party(server, "stopped-early", "customer");
  const starting = customer.session.start();
  customer.session.stop();
  expect((await starting).status).toBe("waiting");
  expect(customer.recording.seen.map((entry) => `${entry.method} ${entry.path}`)).toEqual([
    "GET /v1/sessions/stopped-early",
  ]);
  expect(customer.session.state).toBe("idle");
});
