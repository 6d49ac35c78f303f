#!/usr/bin/env bash
# Verification throughput on PostgreSQL, two builds side by side:
#   N=1000000 ROUNDS=3 bench/verify-compare.sh OLD_BINARY NEW_BINARY
# Generates N historical sessions (seed 7), imports them with OLD_BINARY
# into a throwaway PostgreSQL cluster (durable defaults, VACUUM ANALYZE
# after), then runs `verify --json` ROUNDS times per binary, interleaved,
# and prints per run: wall seconds, the client's CPU seconds and the whole
# machine's busy CPU seconds (the rest is the server's). Stops and cleans
# up by itself. SHARED_BUFFERS=2GB sets the server's buffer cache (default:
# PostgreSQL's own, 128 MB, smaller than the 1M-session database). Both
# builds must share a schema: a build refuses a database migrated past it.
set -euo pipefail
OLD=$(realpath "$1"); NEW=$(realpath "$2")
N=${N:-1000000}
ROUNDS=${ROUNDS:-3}
WORK=$(mktemp -d /tmp/verdict-verify.XXXXXX)
chmod 755 "$WORK"
PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)}
cleanup() {
  if [ -f "$WORK/pg/data/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/pg"; chown postgres:postgres "$WORK/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 > /dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" \
  -o "-p 18432 -k $WORK/pg -c listen_addresses=127.0.0.1 ${SHARED_BUFFERS:+-c shared_buffers=$SHARED_BUFFERS}" \
  -w start > /dev/null
runuser -u postgres -- "$PGBIN/createdb" -h 127.0.0.1 -p 18432 -U postgres verdict
export VERDICT_JWT_SECRET=bench-secret-of-32-bytes-or-more-0123 VERDICT_WORKER=off RUST_LOG=warn
export VERDICT_DATABASE_URL=postgres://postgres@127.0.0.1:18432/verdict
"$OLD" generate --sessions "$N" --seed 7 > "$WORK/history.ndjson"
"$OLD" migrate > /dev/null
/usr/bin/time -f "import: %e s, peak RSS %M KiB" "$OLD" import "$WORK/history.ndjson" > /dev/null
"$NEW" migrate > /dev/null
"$PGBIN/psql" -q -h 127.0.0.1 -p 18432 -U postgres verdict -c "VACUUM ANALYZE"
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
for _ in $(seq "$ROUNDS"); do
  for binary in "$OLD" "$NEW"; do
    before=$(busy)
    # verify exits 1 when it finds anomalies (the generated history has some).
    /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" "$binary" verify --json > /dev/null || true
    after=$(busy)
    read -r wall user sys rss < <(tail -1 "$WORK/time")
    awk -v b="$binary" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v t="$(( after - before ))" -v n="$N" 'BEGIN {
      printf "%s: %.2f s (%.0f sessions/s), client CPU %.2f s, machine CPU %.2f s, peak RSS %.0f MiB\n",
        b, w, n / w, u + s, t / 100, r / 1024 }'
  done
done
