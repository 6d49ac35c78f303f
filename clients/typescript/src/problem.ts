// VerdictProblem: every answer of verdict that is not a success, as one
// typed error. verdict answers errors as RFC 9457 `application/problem+json`
// with a stable `type` (`urn:verdict:problem:<slug>`); anything else that is
// not 2xx (a proxy's HTML 502, say) is raised the same way with the
// RFC 9457 default type `about:blank`.

import type { components } from "./schema";

/** The problem body as verdict documents it, plus any extension members. */
export type ProblemBody = components["schemas"]["Problem"] & {
  instance?: string;
  [extension: string]: unknown;
};

/** The `type` URN prefix of verdict's own problems. */
export const PROBLEM_TYPE_PREFIX = "urn:verdict:problem:";

export class VerdictProblem extends Error {
  /** The HTTP status of the answer. */
  readonly status: number;
  /** `urn:verdict:problem:<slug>`, or `about:blank` when the answer had no problem body. */
  readonly type: string;
  readonly title: string;
  readonly detail: string | undefined;
  readonly instance: string | undefined;
  /** The request's `x-request-id`, sent on 5xx answers to find the server's log lines. */
  readonly requestId: string | undefined;
  /** Seconds to wait before retrying, from `Retry-After` (429, 503), when given. */
  readonly retryAfterSeconds: number | undefined;
  /** The problem body as received (or as made up for a non-problem answer). */
  readonly body: ProblemBody;

  constructor(status: number, body: ProblemBody, retryAfterSeconds?: number) {
    super(body.detail ? `${body.title}: ${body.detail}` : body.title);
    this.name = "VerdictProblem";
    this.status = status;
    this.type = body.type;
    this.title = body.title;
    this.detail = body.detail || undefined;
    this.instance = typeof body.instance === "string" ? body.instance : undefined;
    this.requestId = typeof body.request_id === "string" ? body.request_id : undefined;
    this.retryAfterSeconds = retryAfterSeconds;
    this.body = body;
  }

  /** The problem body's `request_id` (as {@link requestId}), under the wire name. */
  get request_id(): string | undefined {
    return this.requestId;
  }

  /** The slug of a verdict problem type (`not-found`, `conflict`, …), else undefined. */
  get slug(): string | undefined {
    return this.type.startsWith(PROBLEM_TYPE_PREFIX)
      ? this.type.slice(PROBLEM_TYPE_PREFIX.length)
      : undefined;
  }

  /**
   * True when the same call may succeed later without anything changing on
   * the caller's side: server errors, unavailability and rate limiting.
   */
  get transient(): boolean {
    return this.status >= 500 || this.status === 408 || this.slug === "rate-limited";
  }

  /** Reads a non-2xx answer into a VerdictProblem (consumes its body). */
  static async fromResponse(response: Response): Promise<VerdictProblem> {
    const retryAfterSeconds = parseRetryAfter(response.headers.get("retry-after"));
    const text = await response.text().catch(() => "");
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    const body = isProblemBody(parsed)
      ? parsed
      : {
          type: "about:blank",
          title: response.statusText || `HTTP ${response.status}`,
          status: response.status,
          detail: text.slice(0, 500),
        };
    return new VerdictProblem(response.status, body, retryAfterSeconds);
  }
}

function isProblemBody(value: unknown): value is ProblemBody {
  if (typeof value !== "object" || value === null) return false;
  const record = value as Record<string, unknown>;
  return typeof record.type === "string" && typeof record.title === "string";
}

/** `Retry-After` as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3). */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | undefined {
  if (value === null) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, Math.ceil((date - now) / 1000));
}
