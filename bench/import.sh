#!/usr/bin/env bash
# Import benchmark: N generated lines (`verdict generate --seed 7`) into a
# fresh database, with `verdict import --bulk` and with the default batches,
# on SQLite and on PostgreSQL, ROUNDS rounds interleaved so that every
# variant sees the same noise. Each run's summary and stored rows are
# checked (a run that stored less fails the benchmark).
#
#   N=1000000 ROUNDS=3 bench/import.sh        → bench/import-results.md
#   BASE=/path/to/older/verdict bench/import.sh   (adds that build's runs)
#
# Knobs (env): N, ROUNDS, BACKENDS="sqlite postgres", MODES="bulk default",
# BASE, PG_BIN, PORT_PG=18434. Release build; a throwaway PostgreSQL cluster
# (durable defaults) under /tmp; stops and cleans up by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
ROUNDS=${ROUNDS:-3}
BACKENDS=${BACKENDS:-sqlite postgres}
MODES=${MODES:-bulk default}
PORT_PG=${PORT_PG:-18434}
OUT=${OUT:-bench/import-results.md}
PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)}
WORK=$(mktemp -d /tmp/verdict-import.XXXXXX)
chmod 755 "$WORK"
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); else AS_PG=(); fi
cleanup() {
  if [ -f "$WORK/pg/data/postmaster.pid" ]; then
    "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop > /dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cargo build --release -q -p verdict
V=$PWD/target/release/verdict
BUILDS="new:$V"
[ -n "${BASE:-}" ] && BUILDS="$BUILDS base:$BASE"
export VERDICT_JWT_SECRET=bench-secret-of-32-bytes-or-more-0123 VERDICT_WORKER=off RUST_LOG=warn

log "generating $N lines"
"$V" generate --sessions "$N" --seed 7 > "$WORK/history.ndjson"

if [[ " $BACKENDS " == *" postgres "* ]]; then
  mkdir -p "$WORK/pg"; [ "$(id -u)" = 0 ] && chown postgres: "$WORK/pg"
  "${AS_PG[@]}" "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 > /dev/null
  "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" \
    -o "-p $PORT_PG -k $WORK/pg -c listen_addresses=127.0.0.1" -w start > /dev/null
fi
PSQL=("$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$PORT_PG" -U postgres)

# One import: fresh database, `verdict import`, checks; appends
# "build backend mode seconds peak_rss_kib" to $WORK/runs.
one() {
  local build=$1 bin=$2 backend=$3 mode=$4 url sessions flags=()
  [ "$mode" = bulk ] && flags=(--bulk)
  if [ "$backend" = sqlite ]; then
    rm -rf "$WORK/sqlite"; url="sqlite://$WORK/sqlite/verdict.db"
  else
    "${PSQL[@]}" -c "DROP DATABASE IF EXISTS verdict" -c "CREATE DATABASE verdict"
    url="postgres://postgres@127.0.0.1:$PORT_PG/verdict"
  fi
  VERDICT_DATABASE_URL=$url "$bin" migrate > /dev/null
  VERDICT_DATABASE_URL=$url /usr/bin/time -f "%e %M" -o "$WORK/time" \
    "$bin" import "${flags[@]}" "$WORK/history.ndjson" > "$WORK/summary.json"
  python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); n = int(sys.argv[2]);
assert (d["imported"], d["skipped"], d["rejected_total"]) == (n, 0, 0), d' "$WORK/summary.json" "$N"
  if [ "$backend" = sqlite ]; then
    sessions=$(python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT COUNT(*) FROM sessions").fetchone()[0])' "$WORK/sqlite/verdict.db")
  else
    sessions=$("${PSQL[@]}" -d verdict -c "SELECT COUNT(*) FROM sessions")
  fi
  [ "$sessions" = "$N" ] || { log "$build $backend $mode stored $sessions sessions, not $N"; exit 1; }
  echo "$build $backend $mode $(tail -1 "$WORK/time")" >> "$WORK/runs"
  log "$build $backend $mode: $(tail -1 "$WORK/time") (s, KiB)"
}

for round in $(seq "$ROUNDS"); do
  log "round $round/$ROUNDS"
  for backend in $BACKENDS; do
    for mode in $MODES; do
      for build in $BUILDS; do one "${build%%:*}" "${build#*:}" "$backend" "$mode"; done
    done
  done
done

{
  echo "## Import of $N lines ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
  echo
  echo "Command: \`N=$N ROUNDS=$ROUNDS${BASE:+ BASE=…} bench/import.sh\` (verdict $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes'); release build; rounds interleaved; every run's rows checked)."
  echo
  echo "| build | backend | mode | seconds, each round | median | lines/s at the median | peak RSS, largest |"
  echo "|---|---|---|---|---|---|---|"
  python3 - "$WORK/runs" "$N" <<'PY'
import collections, statistics, sys
runs = collections.OrderedDict()
for line in open(sys.argv[1]):
    build, backend, mode, seconds, rss = line.split()
    runs.setdefault((build, backend, mode), []).append((float(seconds), int(rss)))
n = int(sys.argv[2])
for (build, backend, mode), values in runs.items():
    seconds = [s for s, _ in values]
    median = statistics.median(seconds)
    print(f"| {build} | {backend} | {mode} | {' / '.join(f'{s:.2f}' for s in seconds)} | {median:.2f} s "
          f"| {n / median:,.0f} | {max(r for _, r in values) / 1024:.0f} MiB |")
PY
} > "$OUT"
cat "$OUT"
