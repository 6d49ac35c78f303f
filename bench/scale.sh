#!/usr/bin/env bash
# Scale benchmark (verification, health, import) on SQLite and PostgreSQL:
#   N=1000000 ROUNDS=20 bench/scale.sh      → bench/scale-results.md
# Generates N historical sessions (ends spread over 365 days), imports them,
# runs `verdict verify`, then measures GET /v1/admin/health (24 h and 720 h
# windows) and the dashboard page against `verdict serve`. Release build; a throwaway PostgreSQL
# cluster (durable defaults) in a temp dir. Stops and cleans up by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
ROUNDS=${ROUNDS:-20}
OUT=${OUT:-bench/scale-results.md}
WORK=$(mktemp -d /tmp/verdict-scale.XXXXXX)
chmod 755 "$WORK"
PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)}
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  if [ -f "$WORK/pg/data/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release -q -p verdict
V=$PWD/target/release/verdict
export VERDICT_JWT_SECRET=bench-secret-of-32-bytes-or-more-0123 VERDICT_WORKER=off RUST_LOG=warn

echo "generating $N sessions…" >&2
"$V" generate --sessions "$N" --seed 7 > "$WORK/history.ndjson"

# Runs a command under /usr/bin/time; prints "seconds max_rss_kib".
measure() {
  # verify exits 1 when it finds anomalies (the generated history has some).
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > "$WORK/stdout" || true
  tail -1 "$WORK/time"
}

percentiles() { # stdin: one number per line → "median p95" (ms)
  sort -n | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; p=a[int(NR*0.95+0.999)]; printf "%.1f %.1f\n", m*1000, p*1000}'
}

latency() { # path → "median p95" (ms) over ROUNDS requests
  local token
  token=$("$V" token --role admin --sub bench)
  for _ in $(seq "$ROUNDS"); do
    curl -s -o /dev/null -w '%{time_total}\n' -H "authorization: Bearer $token" \
      "http://127.0.0.1:18181$1"
  done | percentiles
}

run_backend() { # name url
  local name=$1 url=$2
  export VERDICT_DATABASE_URL=$url
  "$V" migrate > /dev/null
  read -r import_s import_rss < <(measure "$V" import "$WORK/history.ndjson")
  # After a bulk load PostgreSQL needs a VACUUM (visibility map: index-only
  # scans) and statistics, as autovacuum gives them shortly after; measured
  # as a database in use is, not in the minute after its load.
  if [ "$name" = postgres ]; then
    "$PGBIN/psql" -q -h 127.0.0.1 -p 18432 -U postgres verdict -c "VACUUM ANALYZE"
  fi
  read -r verify_s verify_rss < <(measure "$V" verify --json)
  "$V" serve --bind 127.0.0.1:18181 > /dev/null 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18181/readyz > /dev/null && break; sleep 0.2; done
  read -r h24_med h24_p95 < <(latency "/v1/admin/health?window_hours=24")
  read -r h720_med h720_p95 < <(latency "/v1/admin/health?window_hours=720")
  read -r page_med page_p95 < <(latency "/admin/sessions/session-health")
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  awk -v n="$N" -v name="$name" -v is="$import_s" -v ir="$import_rss" -v vs="$verify_s" -v vr="$verify_rss" \
      -v a="$h24_med" -v b="$h24_p95" -v c="$h720_med" -v d="$h720_p95" -v e="$page_med" -v f="$page_p95" 'BEGIN {
    printf "| %s | %.0f lines/s (%.1f s), peak RSS %.0f MiB | %.0f sessions/s (%.1f s), peak RSS %.0f MiB | %s / %s ms | %s / %s ms | %s / %s ms |\n",
      name, n/is, is, ir/1024, n/vs, vs, vr/1024, a, b, c, d, e, f }' >> "$WORK/rows"
}

run_backend sqlite "sqlite://$WORK/sqlite/verdict.db"

mkdir -p "$WORK/pg"; chown postgres:postgres "$WORK/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 > /dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" \
  -o "-p 18432 -k $WORK/pg -c listen_addresses=127.0.0.1" -w start > /dev/null
runuser -u postgres -- "$PGBIN/createdb" -h 127.0.0.1 -p 18432 -U postgres verdict
run_backend postgres "postgres://postgres@127.0.0.1:18432/verdict"

{
  echo "## Scale: $N sessions ($(date -u +%Y-%m-%d), $(nproc) cores)"
  echo
  echo "Command: \`N=$N ROUNDS=$ROUNDS bench/scale.sh\` (release build; sessions ending over 365 days;"
  echo "~10 % recorded wrong; health median / p95 over $ROUNDS requests; PostgreSQL with durable defaults)."
  echo
  echo "| backend | import | verify | health 24 h (≈$((N / 365)) sessions) | health 720 h (≈$((N * 30 / 365)) sessions) | dashboard page |"
  echo "|---|---|---|---|---|---|"
  cat "$WORK/rows"
} > "$OUT"
cat "$OUT"
