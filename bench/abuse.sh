#!/usr/bin/env bash
# Honest traffic beside hostile callers (issue "Hardening"): for SECS seconds
# 8 hostile customers flood joins and leaves of their own sessions, requests
# and made-up HTTP methods, as fast as answered (closed loop, no pause),
# while 16 honest clients run ordinary sessions (`verdict simulate --abuse`).
# Each round runs, on a fresh database, the honest clients alone (the
# baseline), then the same with the hostile ones, on SQLite then on
# PostgreSQL; the server keeps its default limits (rate_limit_per_second,
# max_presence_events_per_session, max_open_requests_per_customer): the
# honest customers are spread over enough subjects that none nears them.
#
#   bench/abuse.sh     → bench/results-abuse/*.json and bench/results-abuse/abuse.md
#
# Knobs (env): ROUNDS=3 SECS=60 HONEST=16 HOSTILE=8 PORT_PG=18434
# Release build; a throwaway cluster under /tmp; stops and cleans up by itself
# (about ROUNDS x 2 x 2 x SECS seconds, plus verification).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-60}
HONEST=${HONEST:-16}
HOSTILE=${HOSTILE:-8}
PORT_PG=${PORT_PG:-18434}
PORT_HTTP=18384
PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)}
RESULTS=$ROOT/bench/results-abuse
WORK=$(mktemp -d /tmp/verdict-abuse.XXXXXX)
chmod 755 "$WORK"
SERVER_PID=""
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); else AS_PG=(); fi

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  if [ -f "$WORK/pg/data/postmaster.pid" ]; then
    "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

for port in "$PORT_PG" "$PORT_HTTP"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "something already listens on 127.0.0.1:$port (PORT_PG chooses another)" >&2; exit 2
  fi
done
started=$(date +%s)
cargo build --release -q -p verdict
V=${CARGO_TARGET_DIR:-$ROOT/target}/release/verdict
export VERDICT_JWT_SECRET=bench-abuse-secret-of-more-than-32-bytes VERDICT_WORKER=off RUST_LOG=warn
rm -rf "$RESULTS"; mkdir -p "$RESULTS"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc) online"
  echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "verdict: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')"
  echo "knobs: ROUNDS=$ROUNDS SECS=$SECS HONEST=$HONEST HOSTILE=$HOSTILE"
} > "$RESULTS/machine.txt"

mkdir -p "$WORK/pg"; [ "$(id -u)" = 0 ] && chown postgres: "$WORK/pg"
"${AS_PG[@]}" "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 > /dev/null
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" \
  -o "-p $PORT_PG -k $WORK/pg -c listen_addresses=127.0.0.1" -w start > /dev/null
PSQL=(psql -X -q -h 127.0.0.1 -p "$PORT_PG" -U postgres -v ON_ERROR_STOP=1)

# One run: serve on $1 (a database URL), simulate --abuse with $2 hostile
# customers, `verdict verify` after; the report (with verify's exit) in $3.
abuse_run() {
  local url=$1 hostile=$2 out=$3 clean
  export VERDICT_DATABASE_URL=$url
  "$V" migrate > /dev/null
  "$V" serve --bind "127.0.0.1:$PORT_HTTP" > "$WORK/serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT_HTTP/readyz" > /dev/null && break; sleep 0.2; done
  "$V" simulate --url "http://127.0.0.1:$PORT_HTTP" --abuse --duration-seconds "$SECS" \
    --concurrency "$HONEST" --hostile "$hostile" --rss-pid "$SERVER_PID" > "$out.sim"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  if "$V" verify --json > /dev/null; then clean=true; else clean=false; fi
  python3 - "$out.sim" "$clean" > "$out" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
report["verify_cli_clean"] = sys.argv[2] == "true"
print(json.dumps(report, indent=1))
PY
  rm -f "$out.sim"
}

fresh() {
  case $1 in
    sqlite) rm -rf "$WORK/sqlite"; echo "sqlite://$WORK/sqlite/verdict.db" ;;
    postgres)
      "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS verdict" -c "CREATE DATABASE verdict"
      echo "postgres://postgres@127.0.0.1:$PORT_PG/verdict" ;;
  esac
}

for r in $(seq "$ROUNDS"); do
  for db in sqlite postgres; do
    log "round $r/$ROUNDS: $db, $HONEST honest clients alone (${SECS}s)"
    abuse_run "$(fresh $db)" 0 "$RESULTS/$db-alone-r$r.json"
    log "round $r/$ROUNDS: $db, $HONEST honest and $HOSTILE hostile clients (${SECS}s)"
    abuse_run "$(fresh $db)" "$HOSTILE" "$RESULTS/$db-abused-r$r.json"
  done
done
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RESULTS/machine.txt"

python3 - "$RESULTS" > "$RESULTS/abuse.md" <<'PY'
import glob, json, statistics, sys
d = sys.argv[1]
def runs(db, kind):
    return [json.load(open(p)) for p in sorted(glob.glob(f"{d}/{db}-{kind}-r*.json"))]
print("| database | honest p99 alone (ms) | honest p99 abused (ms) | ratio | honest sessions/s alone → abused | hostile answers (abused, all rounds) | max own presence rows per hostile session | requests stored by hostiles | RSS KiB after warm-up → last (max) | verify clean |")
print("|---|---|---|---|---|---|---|---|---|---|")
for db in ("sqlite", "postgres"):
    alone, abused = runs(db, "alone"), runs(db, "abused")
    if not alone or not abused:
        continue
    p99a = statistics.median(r["honest"]["all"]["p99_ms"] for r in alone)
    p99b = statistics.median(r["honest"]["all"]["p99_ms"] for r in abused)
    rate = lambda rs: statistics.median(r["honest_sessions"] / r["duration_seconds"] for r in rs)
    answers = {}
    for r in abused:
        for action, codes in r["hostile_answers"].items():
            for code, n in codes.items():
                answers[f"{action} {code}"] = answers.get(f"{action} {code}", 0) + n
    rows = max(max(r["stored_by_hostiles"]["customer_presence_events_per_session"] or [0]) for r in abused)
    requests = max(r["stored_by_hostiles"]["requests_created"] for r in abused)
    rss = [r["rss_kib"] for r in abused if r["rss_kib"]]
    rss_text = "; ".join(f'{x["after_warmup"]} → {x["last"]} ({x["max"]})' for x in rss)
    clean = all(r["verify_cli_clean"] and r["verification"]["clean"] for r in alone + abused)
    print(f"| {db} | {p99a:.1f} | {p99b:.1f} | {p99b / p99a:.2f}× | {rate(alone):.0f} → {rate(abused):.0f} | "
          + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))
          + f" | {rows} | {requests} | {rss_text} | {clean} |")
PY
cat "$RESULTS/abuse.md"
log "done in $(( $(date +%s) - started )) s: bench/results-abuse/abuse.md"
