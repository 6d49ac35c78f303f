// The demo room's page script (`verdict demo`, /demo/rooms/{id}?as=...):
// the client library in a page. Bundled by `npm run build:demo` into
// crates/verdict-http/assets/demo-room.js, which the binary serves under
// the dashboard's CSP (no inline script: everything arrives as data-*).
import { VerdictSession, VerdictProblem, type AuditEvent } from "../src/index";

type Party = "customer" | "provider";
interface Interval { from: number; to: number | null }

const root = document.getElementById("room");
if (root) {
  void run(root);
}

async function run(root: HTMLElement): Promise<void> {
  const sessionId = root.dataset.session ?? "";
  const token = root.dataset.token ?? "";
  const baseUrl = window.location.origin;
  const session = new VerdictSession({ baseUrl, token, sessionId });

  const state = byId("state");
  const leave = byId("leave") as HTMLButtonElement;
  const end = byId("end") as HTMLButtonElement;
  const setState = (name: string, text: string) => {
    state.dataset.state = name;
    state.textContent = text;
  };

  const presence: Record<Party, Interval[]> = { customer: [], provider: [] };
  let firstAt: number | null = null;
  let endedAt: number | null = null;
  let lastSeq = 0;
  let polling: Promise<void> | null = null;
  const poll = () => (polling ??= pollEvents().finally(() => { polling = null; }));
  let decided = false;

  // The audit trail, polled: each party's joins and leaves on a lane.
  // A failed read waits for the next tick.
  const pollEvents = async () => {
    try {
      for (let page = 0; page < 10; page += 1) {
        const after = lastSeq > 0 ? String(lastSeq) : undefined;
        const data = await session.client.events(sessionId, { after, limit: 500 });
        for (const event of data.items) record(event);
        if (!data.next_cursor) break;
      }
    } catch {
      return;
    }
    draw();
  };

  const record = (event: AuditEvent) => {
    if (event.seq <= lastSeq) return;
    lastSeq = event.seq;
    const at = Date.parse(event.at);
    if (firstAt === null) firstAt = at;
    const item = document.createElement("li");
    const time = document.createElement("time");
    time.dateTime = event.at;
    time.textContent = new Date(at).toLocaleTimeString();
    item.append(time, describe(event));
    item.dataset.type = event.type;
    if (event.party) item.dataset.party = event.party;
    byId("timeline").append(item);
    const party = event.party as Party | undefined;
    if (event.type === "joined" && party) {
      const open = presence[party].at(-1);
      if (!open || open.to !== null) presence[party].push({ from: at, to: null });
    } else if (event.type === "left" && party) {
      const open = presence[party].at(-1);
      if (open && open.to === null) open.to = at;
    } else if (event.type === "ended") {
      endedAt = at;
      for (const lane of Object.values(presence)) {
        const open = lane.at(-1);
        if (open && open.to === null) open.to = at;
      }
    }
  };

  const draw = () => {
    const start = firstAt ?? Date.now();
    const stop = endedAt ?? Date.now();
    const span = Math.max(stop - start, 1000);
    for (const party of ["customer", "provider"] as Party[]) {
      const lane = byId(`lane-${party}`);
      lane.replaceChildren(
        ...presence[party].map((interval) => {
          const seg = document.createElement("span");
          seg.className = "seg";
          const to = interval.to ?? stop;
          seg.style.left = `${(100 * (interval.from - start)) / span}%`;
          seg.style.width = `${Math.max((100 * (to - interval.from)) / span, 0.5)}%`;
          return seg;
        }),
      );
      const open = presence[party].at(-1);
      byId(`now-${party}`).textContent = open && open.to === null ? "present" : presence[party].length ? "gone" : "not yet";
    }
  };

  session.on("joined", () => setState("joined", "In the room: heartbeats keep your presence."));
  session.on("heartbeat", () => setState("joined", `In the room (heartbeat ${new Date().toLocaleTimeString()}).`));
  session.on("offline", () => setState("offline", "Network lost: retrying, and rejoining when it is back."));
  session.on("rejoined", () => setState("joined", "Back in the room (rejoined)."));
  session.on("left", () => setState("left", "You left the room."));
  session.on("error", (error: unknown) => {
    if (error instanceof VerdictProblem) setState("error", `${error.title}: ${error.detail ?? ""}`);
  });
  session.on("decided", (decision) => {
    decided = true;
    leave.disabled = true;
    end.disabled = true;
    const status = byId("decision-status");
    status.textContent = decision.status;
    status.className = decision.status;
    byId("decision-reason").textContent = decision.reason ?? "";
    byId("decision-billable").textContent = String(decision.billable_seconds ?? 0);
    byId("decision-ended-by").textContent = decision.ended_by ?? "";
    byId("decision").hidden = false;
    setState("decided", `Decided: ${decision.status} (${decision.reason ?? ""}).`);
    void poll();
  });

  leave.addEventListener("click", () => {
    leave.disabled = true;
    void session.leave();
  });
  end.addEventListener("click", () => {
    end.disabled = true;
    session.end().catch((error: unknown) => {
      end.disabled = false;
      if (error instanceof VerdictProblem) setState("error", `${error.title}: ${error.detail ?? ""}`);
    });
  });

  try {
    await session.start();
  } catch (error) {
    setState("error", error instanceof Error ? error.message : String(error));
    return;
  }
  if (!decided) {
    leave.disabled = false;
    end.disabled = false;
  }
  await poll();
  const timer = window.setInterval(() => {
    if (decided) {
      window.clearInterval(timer);
      return;
    }
    void poll();
  }, 1000);
}

function describe(event: AuditEvent): string {
  switch (event.type) {
    case "created": return "session created";
    case "joined": return `${event.party} joined`;
    case "left": return `${event.party} left`;
    case "ended": return "ended: verdict decided";
    default: return event.type;
  }
}

function byId(id: string): HTMLElement {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page has no #${id}`);
  return element;
}
