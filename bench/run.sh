#!/usr/bin/env bash
# Durable ends, side by side: verdict (SQLite and PostgreSQL, over HTTP) and
# the reference design it replaces (the PL/pgSQL end function of
# ../shared/bench/seed-baseline/, driven by pgbench on PostgreSQL 15), in one
# run on this machine, rounds interleaved so that both see the same noise.
#
#   bench/run.sh                 → bench/results/ends.md, spliced into bench/RESULTS.md
#   BASE=path/to/verdict bench/run.sh   the same, an older build in the same rounds
#
# Knobs (env): ROUNDS=3 SESSIONS=10000 CONCURRENCY=64 REPEAT=2 BASE_SECS=15
#              BASELINE=../shared/bench/seed-baseline PORT_BASE=55433 PORT_PG=18433
#              BASE=<a verdict binary to compare with> (none)
# Each round: the reference function (16 pgbench clients: live → completed for
# BASE_SECS s, then re-ending ended sessions), then verdict on a fresh SQLite
# file, then verdict on a fresh PostgreSQL database (`verdict simulate
# --ends-apart`: every session created and joined first, then all ended with
# CONCURRENCY connections, then all ended REPEAT more times: the idempotent
# path). Every commit is durable: SQLite WAL with synchronous=FULL, PostgreSQL
# defaults (fsync on, synchronous_commit on). Release build; throwaway
# clusters under /tmp; stops and cleans up by itself (about 10 minutes).
#
# CPU per end: user + system time over each end phase alone, of the server
# side only, never of the load generator: the verdict process (all threads),
# and on PostgreSQL the cluster too (postmaster, its live children, and its
# reaped ones through its cutime/cstime); for the reference, its cluster
# over each timed pgbench run (bench/pgbench-cpu.py wraps pgbench for it).
# `verdict simulate --cpu-pids` samples at its own phase boundaries.
#
# With BASE, each round runs the reference, verdict on SQLite (this tree, then
# BASE), then on PostgreSQL (this tree, then BASE); BASE serves, migrates and
# verifies its own databases, the load generator is this tree's simulate.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
SESSIONS=${SESSIONS:-10000}
CONCURRENCY=${CONCURRENCY:-64}
REPEAT=${REPEAT:-2}
BASE_SECS=${BASE_SECS:-15}
BASELINE=${BASELINE:-$ROOT/../shared/bench/seed-baseline}
PORT_BASE=${PORT_BASE:-55433}
PORT_PG=${PORT_PG:-18433}
PORT_HTTP=18383
PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)}
RESULTS=$ROOT/bench/results
BASE_BIN=${BASE:-}
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/verdict-bench.XXXXXX)
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

[ -x "$BASELINE/run.sh" ] || { echo "no reference design at $BASELINE" >&2; exit 2; }
if [ -n "$BASE_BIN" ]; then
  BASE_BIN=$(realpath "$BASE_BIN")
  [ -x "$BASE_BIN" ] || { echo "BASE=$BASE is not an executable verdict" >&2; exit 2; }
fi
for port in "$PORT_PG" "$PORT_HTTP" "$PORT_BASE"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "something already listens on 127.0.0.1:$port (PORT_PG / PORT_BASE choose others)" >&2; exit 2
  fi
done
started=$(date +%s)
cargo build --release -q -p verdict
V=${CARGO_TARGET_DIR:-$ROOT/target}/release/verdict
export VERDICT_JWT_SECRET=bench-secret-of-32-bytes-or-more-0123 VERDICT_WORKER=off RUST_LOG=warn
# Every simulated session is joined by both parties seconds before its end:
# a 1-second minimum makes each end a completion with its payout and ledger
# posting (the heaviest path, as the reference's live → completed ends are).
export VERDICT_MIN_BILLABLE_SECONDS=1
rm -rf "$RESULTS"; mkdir -p "$RESULTS"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc) online"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "postgres: $("$PGBIN/postgres" --version)"
  echo "verdict: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')"
  [ -z "$BASE_BIN" ] || echo "base: $BASE_BIN ($(stat -c %y "$BASE_BIN" | cut -d. -f1))"
  echo "clock ticks per second: $CLK_TCK"
  echo "knobs: ROUNDS=$ROUNDS SESSIONS=$SESSIONS CONCURRENCY=$CONCURRENCY REPEAT=$REPEAT BASE_SECS=$BASE_SECS"
} > "$RESULTS/machine.txt"

# PostgreSQL for verdict: one cluster, durable defaults, a fresh database per round.
mkdir -p "$WORK/pg"; [ "$(id -u)" = 0 ] && chown postgres: "$WORK/pg"
"${AS_PG[@]}" "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 > /dev/null
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" \
  -o "-p $PORT_PG -k $WORK/pg -c listen_addresses=127.0.0.1" -w start > /dev/null
PSQL=(psql -X -q -h 127.0.0.1 -p "$PORT_PG" -U postgres -v ON_ERROR_STOP=1)
POSTMASTER=$(head -1 "$WORK/pg/data/postmaster.pid")

# The reference calls pgbench by name: this wrapper samples its cluster's CPU
# around each timed run (into $CPU_OUT/<run>.json) and is pgbench otherwise.
mkdir -p "$WORK/bin"
ln -s "$ROOT/bench/pgbench-cpu.py" "$WORK/bin/pgbench"
# The real binary, not Debian's pg_wrapper script in /usr/bin.
CPU_REAL_PGBENCH=$PGBIN/pgbench
export CPU_REAL_PGBENCH CPU_PGDATA=/tmp/verdict-bench-reference/data

# One verdict round: the build $1 serves on $2 (a database URL), this tree's
# simulate drives it, $1 verifies; the simulate report, with the server's peak
# RSS and verify's verdict, in $3. CPU counted: the server's, and that of the
# processes in $4 (and their children).
verdict_round() {
  local bin=$1 url=$2 out=$3 others=${4:-} rss clean
  export VERDICT_DATABASE_URL=$url
  "$bin" migrate > /dev/null
  "$bin" serve --bind "127.0.0.1:$PORT_HTTP" > "$WORK/serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT_HTTP/readyz" > /dev/null && break; sleep 0.2; done
  "$V" simulate --url "http://127.0.0.1:$PORT_HTTP" --sessions "$SESSIONS" \
    --concurrency "$CONCURRENCY" --mix together=100 --ends-apart --repeat-ends "$REPEAT" \
    --cpu-pids "$SERVER_PID${others:+,$others}" --json > "$out.sim"
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  if "$bin" verify --json > "$out.verify"; then clean=true; else clean=false; fi
  python3 - "$out.sim" "$out.verify" "$rss" "$clean" "$CLK_TCK" "$bin" > "$out" <<'PY'
import json, sys
sim = json.load(open(sys.argv[1]))
verify = json.load(open(sys.argv[2]))
sim["server_peak_rss_kib"] = int(sys.argv[3])
sim["verify_clean"] = sys.argv[4] == "true"
sim["verify_sessions"] = verify["sessions"]
sim["clock_ticks_per_second"] = int(sys.argv[5])
sim["server"] = sys.argv[6]
print(json.dumps(sim))
PY
  rm -f "$out.sim" "$out.verify"
}

# The reference's run JSON with its cluster's CPU over that run: $1 the run's
# name (r1_live_c16), $2 the copy to write.
reference_run() {
  python3 - "$WORK/reference-r$r/runs/$1.json" "$WORK/reference-cpu-r$r/$1.json" > "$2" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
run.update(json.load(open(sys.argv[2])))
print(json.dumps(run, indent=2))
PY
}

for r in $(seq "$ROUNDS"); do
  log "round $r/$ROUNDS: the reference function (pgbench, 16 clients, ${BASE_SECS}s)"
  # One round of the reference's own script, at the point it is compared at
  # (16 clients), with a seed sized for this run; its cluster lives under /tmp.
  PATH="$WORK/bin:$PATH" CPU_OUT="$WORK/reference-cpu-r$r" \
  ROUNDS=1 MAIN_SECS=$BASE_SECS AUX_SECS=10 CLIENTS=16 DIAG=0 N_LIVE=60000 N_NOSHOW=20000 \
    MAX_TPS=3000 CONC_TRIALS=5 PORT=$PORT_BASE BASE=/tmp/verdict-bench-reference \
    OUT="$WORK/reference-r$r" "$BASELINE/run.sh" > "$WORK/reference-r$r.log" 2>&1 \
    || { tail -20 "$WORK/reference-r$r.log" >&2; exit 1; }
  reference_run r1_live_c16 "$RESULTS/reference-live-r$r.json"
  reference_run r1_idempotent_c16 "$RESULTS/reference-idempotent-r$r.json"
  grep 'check' "$WORK/reference-r$r/checks.txt" > "$RESULTS/reference-checks-r$r.txt" || true

  log "round $r/$ROUNDS: verdict on SQLite ($SESSIONS sessions, $CONCURRENCY connections)"
  rm -rf "$WORK/sqlite"
  verdict_round "$V" "sqlite://$WORK/sqlite/verdict.db" "$RESULTS/verdict-sqlite-r$r.json"
  if [ -n "$BASE_BIN" ]; then
    log "round $r/$ROUNDS: BASE on SQLite"
    rm -rf "$WORK/sqlite"
    verdict_round "$BASE_BIN" "sqlite://$WORK/sqlite/verdict.db" "$RESULTS/verdict-sqlite-base-r$r.json"
  fi

  log "round $r/$ROUNDS: verdict on PostgreSQL"
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS verdict" -c "CREATE DATABASE verdict"
  verdict_round "$V" "postgres://postgres@127.0.0.1:$PORT_PG/verdict" \
    "$RESULTS/verdict-postgres-r$r.json" "$POSTMASTER"
  if [ -n "$BASE_BIN" ]; then
    log "round $r/$ROUNDS: BASE on PostgreSQL"
    "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS verdict" -c "CREATE DATABASE verdict"
    verdict_round "$BASE_BIN" "postgres://postgres@127.0.0.1:$PORT_PG/verdict" \
      "$RESULTS/verdict-postgres-base-r$r.json" "$POSTMASTER"
  fi
done
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RESULTS/machine.txt"
echo "wall: $(( $(date +%s) - started )) s" >> "$RESULTS/machine.txt"

python3 "$ROOT/bench/summarize.py" "$RESULTS" "$ROOT/bench/RESULTS.md"
log "done in $(( $(date +%s) - started )) s: bench/results/ends.md, bench/RESULTS.md"
