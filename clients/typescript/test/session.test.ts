// VerdictSession against a real `verdict serve` (SQLite, manual clock):
// presence calls, their audit trail, network drops, platform sessions and
// the `decided` event. The client's own timers are faked where a test needs
// to move them; the server's time moves only by /v1/test-clock/advance.

import { afterAll, afterEach, beforeAll, describe, expect, test, vi } from "vitest";

import { startTicker, type Session } from "../src/index";
import { elapse, fakeClientTimers, party, startVerdict, stopOpened, trail, until, type TestServer } from "./support";

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

describe("presence and outcome", () => {
  test("both parties join, one leaves and rejoins, the customer ends: the audit trail and decided for both", async () => {
    fakeClientTimers();
    await server.createSession("flow");
    const customer = party(server, "flow", "customer");
    const provider = party(server, "flow", "provider");

    const started = await customer.session.start();
    expect(started.presence_source).toBe("any");
    expect(customer.session.state).toBe("joined");
    expect(customer.fired("joined")).toHaveLength(1);
    await provider.session.start();
    expect(provider.session.state).toBe("joined");
    expect(provider.session.session?.status).toBe("live");

    // Together 30 s, the provider away 30 s (longer than
    // reconnect_grace_seconds), together 40 s more: 70 s overlap. The
    // parties heartbeat all along (client timers and server clock move
    // together).
    await elapse(server, 30, customer, provider);
    await provider.session.leave();
    expect(provider.session.state).toBe("left");
    expect((provider.fired("left")[0]?.payload as Session).id).toBe("flow");
    await elapse(server, 30, customer, provider);
    await provider.session.start();
    expect(provider.session.state).toBe("joined");
    expect(provider.fired("rejoined")).toHaveLength(1);
    await elapse(server, 40, customer, provider);
    expect(customer.fired("heartbeat").length).toBeGreaterThanOrEqual(5);

    const ended = await customer.session.end();
    expect(ended.outcome).toMatchObject({ status: "completed", reason: "completed", billable_seconds: 70 });
    expect(customer.session.state).toBe("decided");
    expect(customer.decided()).toMatchObject({
      status: "completed",
      reason: "completed",
      billable_seconds: 70,
      ended_by: "customer",
    });
    // The provider learns it by polling.
    await until(async () => {
      await vi.advanceTimersByTimeAsync(20);
      return provider.decided() !== undefined;
    }, "the provider's decided event");
    expect(provider.decided()).toMatchObject({ status: "completed", billable_seconds: 70, ended_by: "customer" });
    expect(provider.session.state).toBe("decided");
    expect(provider.fired("decided")).toHaveLength(1);

    expect(trail(await server.events("flow"))).toEqual([
      "created:-:service",
      "joined:customer:customer",
      "joined:provider:provider",
      "left:provider:provider",
      "joined:provider:provider",
      "ended:-:customer",
    ]);
    // The end carried no body: nothing claimed.
    const endCall = customer.recording.seen.find((entry) => entry.path.endsWith("/end"));
    expect(endCall).toMatchObject({ method: "POST", hasBody: false, status: 200 });
  });

  test("start() on a session that has ended makes no presence call and decides at once", async () => {
    await server.createSession("over");
    await server.service.end("over");
    const customer = party(server, "over", "customer");
    const session = await customer.session.start();
    expect(session.status).toBe("cancelled");
    expect(customer.session.state).toBe("decided");
    expect(customer.decided()).toMatchObject({ status: "cancelled", reason: "no_show_both", ended_by: "service" });
    expect(customer.recording.seen.map((entry) => `${entry.method} ${entry.path}`)).toEqual([
      "GET /v1/sessions/over",
    ]);
  });

  test("start() rejects with the problem when the session cannot be read", async () => {
    const customer = party(server, "missing", "customer");
    await expect(customer.session.start()).rejects.toMatchObject({ status: 404, slug: "not-found" });
    expect(customer.session.state).toBe("idle");
  });

  test("a session the service ends is decided through the refused heartbeat", async () => {
    fakeClientTimers();
    await server.createSession("service-ends");
    const customer = party(server, "service-ends", "customer", { pollIntervalMs: 3_600_000 });
    await customer.session.start();
    await server.service.end("service-ends");
    await vi.advanceTimersByTimeAsync(customer.session.heartbeatIntervalMs);
    await until(() => customer.decided() !== undefined, "decided after the 409");
    // The first heartbeat right after the join, then the refused one.
    expect(
      customer.recording.seen.filter((entry) => entry.path.endsWith("/heartbeat")).map((entry) => entry.status),
    ).toEqual([204, 409]);
    expect(customer.decided()).toMatchObject({ status: "cancelled", ended_by: "service" });
    expect(customer.fired("error")).toHaveLength(0);
  });
});

describe("heartbeats", () => {
  test("the heartbeat period is a third of the session's presence timeout", async () => {
    fakeClientTimers();
    await server.createSession("period");
    const customer = party(server, "period", "customer", { pollIntervalMs: 3_600_000 });
    const session = await customer.session.start();
    expect(session.presence_timeout_seconds).toBe(60);
    expect(customer.session.heartbeatIntervalMs).toBe(20_000);
    const beats = () => customer.recording.count("POST", "/heartbeat");
    // One at once after the join (it arms the server's timeout), then one
    // every 20 s.
    expect(beats()).toBe(1);
    for (let period = 2; period <= 3; period += 1) {
      await vi.advanceTimersByTimeAsync(19_999);
      expect(beats()).toBe(period - 1);
      await vi.advanceTimersByTimeAsync(1);
      await until(() => customer.fired("heartbeat").length === period, `heartbeat ${period}`);
      expect(beats()).toBe(period);
    }
    expect(
      customer.recording.seen.filter((entry) => entry.path.endsWith("/heartbeat")).map((entry) => entry.status),
    ).toEqual([204, 204, 204]);
    expect(customer.session.state).toBe("joined");
  });

  test("a tab coming back from the background sends an overdue heartbeat at once", async () => {
    fakeClientTimers();
    await server.createSession("background");
    const customer = party(server, "background", "customer", { pollIntervalMs: 3_600_000 });
    await customer.session.start();
    const beats = () => customer.recording.count("POST", "/heartbeat");
    // A hidden tab's throttled timer has not fired although the wall
    // clock is past the deadline.
    customer.window.document.visibilityState = "hidden";
    vi.setSystemTime(Date.now() + 25_000);
    customer.window.fire("visibilitychange");
    expect(beats()).toBe(1);
    customer.window.document.visibilityState = "visible";
    customer.window.fire("visibilitychange");
    await until(() => customer.fired("heartbeat").length === 2, "the overdue heartbeat");
    expect(beats()).toBe(2);
    // The next one is a full period after that one, not after the missed deadline.
    const next = customer.fired("heartbeat")[1]?.payload as { at: number; nextAt: number };
    expect(next.nextAt - next.at).toBe(20_000);
  });

  test("a worker's ticks post wake-ups on their own period", () => {
    fakeClientTimers();
    vi.useFakeTimers({ toFake: ["setInterval", "clearInterval"] });
    const posted: unknown[] = [];
    const stop = startTicker({ postMessage: (message) => posted.push(message) }, 1000);
    vi.advanceTimersByTime(3500);
    expect(posted).toEqual([{ type: "tick" }, { type: "tick" }, { type: "tick" }]);
    stop();
    vi.advanceTimersByTime(5000);
    expect(posted).toHaveLength(3);
  });
});

describe("network drops", () => {
  test("a dropped network goes offline, retries with backoff, and rejoins once the network is back", async () => {
    fakeClientTimers();
    await server.createSession("drop");
    const customer = party(server, "drop", "customer", { pollIntervalMs: 3_600_000 });
    await customer.session.start();
    expect(customer.fired("heartbeat")).toHaveLength(1);

    customer.recording.control.offline = true;
    await vi.advanceTimersByTimeAsync(20_000);
    await until(() => customer.session.state === "offline", "offline");
    const offline = customer.fired("offline")[0]?.payload as { retryInMs: number; error: unknown };
    expect(offline.error).toBeInstanceOf(TypeError);
    expect(offline.retryInMs).toBeGreaterThanOrEqual(500);
    expect(offline.retryInMs).toBeLessThanOrEqual(1000);
    // It retries (a join) after the backoff, and stays offline.
    const attempts = () => customer.recording.seen.filter((entry) => entry.status === "network-error").length;
    const before = attempts();
    await vi.advanceTimersByTimeAsync(offline.retryInMs);
    await until(() => attempts() === before + 1, "a retry after the backoff");
    expect(customer.recording.seen.at(-1)?.path).toBe("/v1/sessions/drop/join");
    expect(customer.fired("offline")).toHaveLength(1);

    // Meanwhile the server counts the customer gone (its timeout is 60 s).
    await server.advance(90);
    customer.recording.control.offline = false;
    customer.window.fire("online");
    await until(() => customer.session.state === "joined", "joined again");
    expect(customer.fired("rejoined")).toHaveLength(1);

    const events = await server.events("drop");
    expect(trail(events)).toEqual([
      "created:-:service",
      "joined:customer:customer",
      "left:customer:system",
      "joined:customer:customer",
    ]);
    expect(events[2]?.data).toMatchObject({ cause: "heartbeat_lapsed" });
    // A heartbeat at once after the rejoin, then on the normal period.
    await vi.advanceTimersByTimeAsync(0);
    await until(() => customer.fired("heartbeat").length === 2, "the heartbeat after the rejoin");
    const beats = customer.recording.count("POST", "/heartbeat");
    await vi.advanceTimersByTimeAsync(20_000);
    await until(() => customer.recording.count("POST", "/heartbeat") === beats + 1, "a heartbeat after the rejoin");
  });
});

describe("the page going away", () => {
  test("pagehide leaves with a keepalive request; back from the cache it joins again", async () => {
    await server.createSession("pagehide");
    const customer = party(server, "pagehide", "customer");
    await customer.session.start();
    customer.window.fire("pagehide", { persisted: true });
    expect(customer.session.state).toBe("left");
    await until(
      async () => trail(await server.events("pagehide")).includes("left:customer:customer"),
      "the customer's left event",
    );
    const leave = customer.recording.seen.find((entry) => entry.path.endsWith("/leave"));
    expect(leave).toMatchObject({ method: "POST", keepalive: true });

    customer.window.fire("pageshow", { persisted: true });
    await until(() => customer.session.state === "joined", "joined after pageshow");
    expect(customer.fired("rejoined")).toHaveLength(1);
    expect(trail(await server.events("pagehide")).at(-1)).toBe("joined:customer:customer");
  });
});

describe("platform presence", () => {
  test("a session whose presence comes from its video platform gets no presence call at all", async () => {
    fakeClientTimers();
    await server.createSession("platform", {
      kind: "video",
      room: "room-platform",
      customer_identity: "alice",
      provider_identity: "bob",
      presence_source: "platform",
    });
    const customer = party(server, "platform", "customer", { pollIntervalMs: 5000 });
    const session = await customer.session.start();
    expect(session.presence_source).toBe("platform");
    expect(customer.session.state).toBe("idle");
    // A minute of polls every 5 s, and not one presence call.
    for (let poll = 1; poll <= 12; poll += 1) {
      const before = customer.session.session;
      await vi.advanceTimersByTimeAsync(5000);
      // Each poll's answer replaces the session the client holds.
      await until(() => customer.session.session !== before, `poll ${poll}`);
    }
    expect(customer.recording.count("GET", "/platform")).toBe(13);
    customer.window.fire("visibilitychange");
    customer.window.fire("online");
    customer.window.fire("pagehide", { persisted: false });
    await customer.session.leave();
    expect(customer.fired("left")).toHaveLength(1);

    const ended = await customer.session.end();
    expect(ended.outcome.reason).toBe("no_show_both");
    expect(customer.decided()).toMatchObject({ status: "cancelled", ended_by: "customer" });
    const calls = new Set(customer.recording.seen.map((entry) => `${entry.method} ${entry.path}`));
    expect([...calls].sort()).toEqual(["GET /v1/sessions/platform", "POST /v1/sessions/platform/end"]);
  });
});

describe("the sweeper", () => {
  let own: TestServer;
  beforeAll(async () => {
    own = await startVerdict({ manualClock: true });
  });
  afterAll(async () => {
    await own?.stop();
  });

  test("decided fires when the sweeper ends the session", async () => {
    await own.createSession("swept");
    const customer = party(own, "swept", "customer");
    await customer.session.start();
    // Past the join deadline (join_grace_seconds 900) without the provider.
    await own.advance(901);
    await until(() => customer.decided() !== undefined, "decided after the sweep", 30_000);
    expect(customer.decided()).toMatchObject({
      status: "expired",
      reason: "no_show_provider",
      ended_by: "system",
    });
    expect(customer.session.state).toBe("decided");
  });
});
