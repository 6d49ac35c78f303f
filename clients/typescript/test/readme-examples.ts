// The README's examples, compiled by `npm run typecheck` so that they stay
// true to the package's types (never run: no test file name).

import { createVerdictClient, VerdictProblem, VerdictSession } from "../src/index";

declare function currentJwt(): string;
declare function show(text: string): void;
declare function banner(text: string | null): void;
declare function render(outcome: unknown): void;
declare const partyToken: string;
declare const serviceToken: string;
declare const bookingId: string;
declare const endButton: { onclick: (() => unknown) | null };
declare const leaveButton: { onclick: (() => unknown) | null };

export async function typedClient(): Promise<void> {
  const verdict = createVerdictClient({
    baseUrl: "https://verdict.example.com",
    token: () => currentJwt(),
  });
  const session = await verdict.getSession("s-42");
  await verdict.join(session.id);
  await verdict.heartbeat("s-42");
  const { outcome } = await verdict.end("s-42");
  const page = await verdict.events("s-42", { limit: 100 });
  const { data } = await verdict.GET("/v1/notifications", {});
  show(`${outcome.status} ${page.items.length} ${data?.items.length}`);
  try {
    await verdict.getSession("nope");
  } catch (error) {
    if (error instanceof VerdictProblem) show(`${error.status} ${error.slug} ${error.retryAfterSeconds}`);
  }
}

export async function room(): Promise<void> {
  const room = new VerdictSession({
    baseUrl: "https://verdict.example.com",
    token: partyToken,
    sessionId: "s-42",
  });
  room.on("decided", ({ status, reason, billable_seconds, ended_by }) => {
    show(`${status} (${reason}), ${billable_seconds} s billed, ended by ${ended_by}`);
  });
  room.on("offline", () => banner("Reconnecting…"));
  room.on("rejoined", () => banner(null));
  await room.start();
  endButton.onclick = () => room.end();
  leaveButton.onclick = () => room.leave();
}

export async function integrating(baseUrl: string, token: string): Promise<void> {
  const backend = createVerdictClient({ baseUrl, token: serviceToken });
  const session = await backend.createSession(
    {
      kind: "chat",
      customer_id: "cust-1",
      provider_id: "prov-7",
      price: { mode: "per_minute", amount_cents: 150, currency: "usd" },
    },
    { idempotencyKey: bookingId },
  );
  const room = new VerdictSession({ baseUrl, token, sessionId: session.id });
  room.on("decided", (outcome) => render(outcome));
  await room.start();
}
