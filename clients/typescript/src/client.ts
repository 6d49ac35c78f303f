// createVerdictClient: an openapi-fetch client typed by the generated
// `paths`, with the bearer token attached to every request and every
// answer that is not a success raised as a VerdictProblem. On top, a few
// typed helpers for the session routes a page calls.

import createClient, { type Client, type Middleware } from "openapi-fetch";

import { VerdictProblem } from "./problem";
import type { components, paths } from "./schema";

export type Session = components["schemas"]["SessionDto"];
export type EndResponse = components["schemas"]["EndResponse"];
export type Outcome = components["schemas"]["OutcomeDto"];
export type AuditEvent = components["schemas"]["EventDto"];
export type EventPage = components["schemas"]["Page_EventDto"];
export type CreateSessionRequest = components["schemas"]["CreateSessionRequest"];

/** A bearer token, or a function giving the current one (called per request). */
export type TokenSource = string | (() => string | Promise<string>);

/** The fetch the client calls: `globalThis.fetch` or anything shaped like it. */
export type FetchLike = (input: Request, init?: RequestInit) => Promise<Response>;

export interface VerdictClientOptions {
  /** The server's origin, e.g. `https://verdict.example.com` (no trailing `/v1`). */
  baseUrl: string;
  /** The caller's JWT; omit only for the public routes (`/healthz`, `/openapi.json`). */
  token?: TokenSource;
  /** Replaces `globalThis.fetch` (tests, instrumentation). */
  fetch?: FetchLike;
}

/** Per-call options of the helpers. */
export interface CallOptions {
  /** Send with `fetch(…, { keepalive: true })`: it outlives the page (pagehide). */
  keepalive?: boolean;
  signal?: AbortSignal;
}

/** Session statuses after which nothing changes any more. */
export const TERMINAL_STATUSES: readonly string[] = ["completed", "cancelled", "expired"];

export function isTerminal(session: Pick<Session, "status">): boolean {
  return TERMINAL_STATUSES.includes(session.status);
}

export interface VerdictHelpers {
  /** `GET /v1/sessions/{id}`. */
  getSession(id: string, options?: CallOptions): Promise<Session>;
  /** `POST /v1/sessions/{id}/join`: the caller's party is present. */
  join(id: string, options?: CallOptions): Promise<Session>;
  /** `POST /v1/sessions/{id}/heartbeat`: the caller's party is still present. */
  heartbeat(id: string, options?: CallOptions): Promise<void>;
  /** `POST /v1/sessions/{id}/leave`: the caller's party is gone. */
  leave(id: string, options?: CallOptions): Promise<Session>;
  /**
   * `POST /v1/sessions/{id}/end` with no body: the server decides the
   * outcome from what it saw; a client never sends a status.
   */
  end(id: string, options?: CallOptions): Promise<EndResponse>;
  /** `GET /v1/sessions/{id}/events`: one page of the audit trail, oldest first. */
  events(id: string, page?: { after?: string; limit?: number }, options?: CallOptions): Promise<EventPage>;
  /** `POST /v1/sessions` (service, admin), with an optional `Idempotency-Key`. */
  createSession(body: CreateSessionRequest, options?: CallOptions & { idempotencyKey?: string }): Promise<Session>;
}

/** The typed openapi-fetch client (any route: `client.GET("/v1/…", …)`) and the helpers. */
export type VerdictClient = Client<paths> & VerdictHelpers;

/**
 * Creates a client. Every non-2xx answer rejects with a {@link VerdictProblem};
 * a network failure rejects with fetch's own error (a `TypeError`).
 */
export function createVerdictClient(options: VerdictClientOptions): VerdictClient {
  const userFetch = options.fetch;
  const client = createClient<paths>({
    baseUrl: options.baseUrl.replace(/\/+$/, ""),
    // Resolved per call, so a page or a test may replace globalThis.fetch later.
    fetch: (request: Request) => (userFetch ? userFetch(request) : globalThis.fetch(request)),
  });
  client.use(authMiddleware(options.token), problemMiddleware);
  return Object.assign(client, helpers(client));
}

function authMiddleware(token: TokenSource | undefined): Middleware {
  return {
    async onRequest({ request }) {
      if (token === undefined) return undefined;
      const value = typeof token === "function" ? await token() : token;
      request.headers.set("Authorization", `Bearer ${value}`);
      return request;
    },
  };
}

const problemMiddleware: Middleware = {
  async onResponse({ response }) {
    if (!response.ok) throw await VerdictProblem.fromResponse(response);
    return undefined;
  },
};

/** The success body of an openapi-fetch result (errors were raised by the middleware). */
function ok<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.error !== undefined || result.data === undefined) {
    throw new Error(`verdict answered ${result.response.status} without the expected body`);
  }
  return result.data;
}

function init(options: CallOptions | undefined): { keepalive?: boolean; signal?: AbortSignal } {
  return { keepalive: options?.keepalive, signal: options?.signal };
}

function helpers(client: Client<paths>): VerdictHelpers {
  const path = (id: string) => ({ params: { path: { id } } });
  return {
    async getSession(id, options) {
      return ok(await client.GET("/v1/sessions/{id}", { ...path(id), ...init(options) }));
    },
    async join(id, options) {
      return ok(await client.POST("/v1/sessions/{id}/join", { ...path(id), ...init(options) }));
    },
    async heartbeat(id, options) {
      await client.POST("/v1/sessions/{id}/heartbeat", { ...path(id), ...init(options) });
    },
    async leave(id, options) {
      return ok(await client.POST("/v1/sessions/{id}/leave", { ...path(id), ...init(options) }));
    },
    async end(id, options) {
      return ok(await client.POST("/v1/sessions/{id}/end", { ...path(id), ...init(options) }));
    },
    async events(id, page, options) {
      return ok(
        await client.GET("/v1/sessions/{id}/events", {
          params: { path: { id }, query: { after: page?.after, limit: page?.limit } },
          ...init(options),
        }),
      );
    },
    async createSession(body, options) {
      return ok(
        await client.POST("/v1/sessions", {
          body,
          params: { header: { "Idempotency-Key": options?.idempotencyKey } },
          ...init(options),
        }),
      );
    },
  };
}
