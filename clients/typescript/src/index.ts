// verdict-client: the typed API client and VerdictSession.

export {
  createVerdictClient,
  isTerminal,
  TERMINAL_STATUSES,
  type AuditEvent,
  type CallOptions,
  type CreateSessionRequest,
  type EndResponse,
  type EventPage,
  type FetchLike,
  type Outcome,
  type Session,
  type TokenSource,
  type VerdictClient,
  type VerdictClientOptions,
  type VerdictHelpers,
} from "./client";
export { parseRetryAfter, PROBLEM_TYPE_PREFIX, VerdictProblem, type ProblemBody } from "./problem";
export {
  DEFAULT_POLL_INTERVAL_MS,
  heartbeatIntervalMs,
  RETRY_MAX_MS,
  RETRY_MIN_MS,
  VerdictSession,
  type DecidedEvent,
  type EventTargetLike,
  type HeartbeatEvent,
  type OfflineEvent,
  type SessionState,
  type VerdictSessionEvents,
  type VerdictSessionOptions,
} from "./session";
export { DEFAULT_TICK_MS, startTicker, type TickerScope } from "./worker";
export type { components, operations, paths } from "./schema";
