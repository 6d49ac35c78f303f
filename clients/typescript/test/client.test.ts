// createVerdictClient against a real server: typed calls, the bearer token,
// and every error raised as a typed VerdictProblem.

import { afterAll, beforeAll, describe, expect, test } from "vitest";

import { createVerdictClient, parseRetryAfter, VerdictProblem } from "../src/index";
import { CUSTOMER, PROVIDER, recordingFetch, startVerdict, type TestServer } from "./support";

let server: TestServer;
beforeAll(async () => {
  server = await startVerdict();
});
afterAll(async () => {
  await server?.stop();
});

async function problemOf(call: Promise<unknown>): Promise<VerdictProblem> {
  const error = await call.then(
    () => undefined,
    (error: unknown) => error,
  );
  expect(error).toBeInstanceOf(VerdictProblem);
  return error as VerdictProblem;
}

describe("problems are typed", () => {
  test("an unknown session is a 404 not-found problem", async () => {
    const customer = createVerdictClient({ baseUrl: server.baseUrl, token: server.customerToken });
    const problem = await problemOf(customer.getSession("no-such-session"));
    expect(problem).toBeInstanceOf(Error);
    expect(problem.status).toBe(404);
    expect(problem.type).toBe("urn:verdict:problem:not-found");
    expect(problem.slug).toBe("not-found");
    expect(problem.title).toBe("Not Found");
    expect(problem.detail).toContain("no-such-session");
    expect(problem.body.status).toBe(404);
    expect(problem.transient).toBe(false);
  });

  test("the other party's session is a 403 forbidden problem", async () => {
    await server.createSession("theirs", { customer_id: "someone-else" });
    const customer = createVerdictClient({ baseUrl: server.baseUrl, token: server.customerToken });
    const problem = await problemOf(customer.getSession("theirs"));
    expect(problem.status).toBe(403);
    expect(problem.slug).toBe("forbidden");
    expect(problem.detail).toContain(CUSTOMER);
    const join = await problemOf(customer.join("theirs"));
    expect(join.status).toBe(403);
    // Nothing was recorded for the stranger.
    expect((await server.events("theirs")).map((event) => event.type)).toEqual(["created"]);
  });

  test("an invalid field is a 422 invalid-field problem naming it", async () => {
    const problem = await problemOf(
      server.service.createSession({
        id: "bad id with spaces",
        kind: "chat",
        customer_id: CUSTOMER,
        provider_id: PROVIDER,
        price: { mode: "flat", amount_cents: 100, currency: "usd" },
      }),
    );
    expect(problem.status).toBe(422);
    expect(problem.slug).toBe("invalid-field");
    expect(problem.detail).toContain("id");
  });

  test("a forged token is a 401 unauthorized problem", async () => {
    const forged = createVerdictClient({ baseUrl: server.baseUrl, token: `${server.customerToken}x` });
    const problem = await problemOf(forged.getSession("anything"));
    expect(problem.status).toBe(401);
    expect(problem.slug).toBe("unauthorized");
  });

  test("a non-problem error answer is raised as an about:blank problem", async () => {
    const client = createVerdictClient({
      baseUrl: server.baseUrl,
      token: "t",
      fetch: async () =>
        new Response("<html>bad gateway</html>", {
          status: 502,
          statusText: "Bad Gateway",
          headers: { "content-type": "text/html", "retry-after": "7" },
        }),
    });
    const problem = await problemOf(client.getSession("x"));
    expect(problem.status).toBe(502);
    expect(problem.type).toBe("about:blank");
    expect(problem.title).toBe("Bad Gateway");
    expect(problem.retryAfterSeconds).toBe(7);
    expect(problem.transient).toBe(true);
  });

  test("a 5xx problem carries its request id, instance and Retry-After", async () => {
    const body = {
      type: "urn:verdict:problem:unavailable",
      title: "Service Unavailable",
      status: 503,
      detail: "the database is unavailable; retry later",
      instance: "/v1/sessions/x",
      request_id: "req-123",
    };
    const client = createVerdictClient({
      baseUrl: server.baseUrl,
      token: "t",
      fetch: async () =>
        new Response(JSON.stringify(body), {
          status: 503,
          headers: { "content-type": "application/problem+json", "retry-after": "1" },
        }),
    });
    const problem = await problemOf(client.getSession("x"));
    expect(problem).toMatchObject({
      status: 503,
      slug: "unavailable",
      instance: "/v1/sessions/x",
      requestId: "req-123",
      request_id: "req-123",
      retryAfterSeconds: 1,
      transient: true,
    });
    expect(problem.body).toEqual(body);
  });

  test("a network failure is fetch's own error, not a problem", async () => {
    const recording = recordingFetch();
    recording.control.offline = true;
    const client = createVerdictClient({ baseUrl: server.baseUrl, token: "t", fetch: recording.fetch });
    const error = await client.getSession("x").catch((error: unknown) => error);
    expect(error).toBeInstanceOf(TypeError);
    expect(error).not.toBeInstanceOf(VerdictProblem);
  });
});

test("Retry-After is read as seconds or as an HTTP date", () => {
  expect(parseRetryAfter("3")).toBe(3);
  expect(parseRetryAfter(null)).toBeUndefined();
  expect(parseRetryAfter("soon")).toBeUndefined();
  const now = Date.parse("2026-12-07T10:00:00Z");
  expect(parseRetryAfter("Mon, 07 Dec 2026 10:00:30 GMT", now)).toBe(30);
});

test("the token may be a function, asked on every request", async () => {
  await server.createSession("token-fn");
  let asked = 0;
  const customer = createVerdictClient({
    baseUrl: server.baseUrl,
    token: async () => {
      asked += 1;
      return server.customerToken;
    },
  });
  await customer.getSession("token-fn");
  await customer.join("token-fn");
  expect(asked).toBe(2);
});

test("end sends no body, and the typed client reaches any route", async () => {
  await server.createSession("no-body");
  const recording = recordingFetch();
  const customer = createVerdictClient({
    baseUrl: server.baseUrl,
    token: server.customerToken,
    fetch: recording.fetch,
  });
  const ended = await customer.end("no-body");
  expect(ended.outcome.status).toBe("cancelled");
  expect(ended.outcome.reason).toBe("no_show_both");
  expect(ended.session.ended_by).toBe("customer");
  const endCall = recording.seen.find((entry) => entry.path.endsWith("/end"));
  expect(endCall?.hasBody).toBe(false);
  // The audit trail's `claimed` is empty: the client claimed nothing.
  const { data } = await customer.GET("/v1/sessions/{id}/events", {
    params: { path: { id: "no-body" } },
  });
  const endedEvent = data?.items.find((event) => event.type === "ended");
  expect((endedEvent?.data as { claimed?: unknown } | undefined)?.claimed ?? null).toBeNull();
});

test("createSession honours an Idempotency-Key", async () => {
  const body = {
    kind: "video" as const,
    customer_id: CUSTOMER,
    provider_id: PROVIDER,
    price: { mode: "flat" as const, amount_cents: 900, currency: "usd" },
  };
  const first = await server.service.createSession(body, { idempotencyKey: "key-1" });
  const again = await server.service.createSession(body, { idempotencyKey: "key-1" });
  expect(again.id).toBe(first.id);
});
