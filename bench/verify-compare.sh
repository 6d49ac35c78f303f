#!/usr/bin/env bash
# Verification throughput on PostgreSQL, builds side by side:
#   N=1000000 ROUNDS=3 bench/verify-compare.sh OLD_BINARY NEW_BINARY [MORE_BINARIES…]
# Generates N historical sessions (seed 7), imports them with OLD_BINARY (the first)
# into a throwaway PostgreSQL cluster (durable defaults, VACUUM ANALYZE
# after), then runs `verify --json` ROUNDS times per binary, interleaved,
# and prints per run: wall seconds, the client's CPU seconds and the whole
# machine's busy CPU seconds (the rest is the server's). Stops and cleans
# up by itself. SHARED_BUFFERS=2GB sets the server's buffer cache (default:
# PostgreSQL's own, 128 MB, smaller than the 1M-session database). Each
# build verifies a database of its own, copied from the one OLD imported
# (`CREATE DATABASE … TEMPLATE`) and migrated by that build: a build
# refuses a database migrated past it, so builds of different schemas
# compare on the same data. RECEIPTS=1 first turns the imported history
# into sessions verdict ended itself (an `ended` event, a notification per
# party and a `session.ended` outbox row each, `import_run` cleared), so
# that every session is one `metadata_consistency` judges.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: [N=…] [ROUNDS=…] [RECEIPTS=1] $0 OLD_BINARY NEW_BINARY [MORE_BINARIES…]" >&2
  exit 2
fi
BINARIES=()
for binary in "$@"; do BINARIES+=("$(realpath "$binary")"); done
OLD=${BINARIES[0]}
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
PSQL=("$PGBIN/psql" -q -h 127.0.0.1 -p 18432 -U postgres)
if [ "${RECEIPTS:-0}" = 1 ]; then
  "${PSQL[@]}" verdict > /dev/null <<'SQL'
INSERT INTO session_events (session_id, type, actor_role, actor_id, at)
  SELECT id, 'ended', 'service', 'bench', ended_at FROM sessions WHERE ended_at IS NOT NULL;
INSERT INTO notifications (recipient_role, recipient_id, session_id, kind, reason, created_at)
  SELECT 'customer', customer_id, id, 'session_' || status, reason, ended_at FROM sessions
  WHERE ended_at IS NOT NULL
  UNION ALL
  SELECT 'provider', provider_id, id, 'session_' || status, reason, ended_at FROM sessions
  WHERE ended_at IS NOT NULL;
INSERT INTO outbox (session_id, topic, channel, dedupe_key, payload, state, due_at, created_at,
                    delivered_at)
  SELECT id, 'webhook:session.ended', 'webhook', 'bench:' || id, '{}', 'delivered', ended_at,
         ended_at, ended_at FROM sessions WHERE ended_at IS NOT NULL;
UPDATE sessions SET import_run = NULL WHERE ended_at IS NOT NULL;
SQL
fi
# Build n (from 0) verifies database verdict_n, a copy of the vacuumed
# import migrated by itself (then analyzed: its migrations may add indexes).
"${PSQL[@]}" verdict -c "VACUUM ANALYZE"
for n in "${!BINARIES[@]}"; do
  [ "$n" = 0 ] && continue
  "${PSQL[@]}" postgres -c "CREATE DATABASE verdict_$n TEMPLATE verdict"
  VERDICT_DATABASE_URL=postgres://postgres@127.0.0.1:18432/verdict_$n "${BINARIES[$n]}" migrate > /dev/null
  "${PSQL[@]}" "verdict_$n" -c "ANALYZE"
done
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
for _ in $(seq "$ROUNDS"); do
  for n in "${!BINARIES[@]}"; do
    binary=${BINARIES[$n]}
    database=verdict; [ "$n" = 0 ] || database=verdict_$n
    before=$(busy)
    # verify exits 1 when it finds anomalies (the generated history has
    # some); anything else stops the comparison.
    VERDICT_DATABASE_URL=postgres://postgres@127.0.0.1:18432/$database \
      /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" "$binary" verify --json \
      > "$WORK/report-$n.json" || [ $? -eq 1 ]
    after=$(busy)
    read -r wall user sys rss < <(tail -1 "$WORK/time")
    awk -v b="$binary" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v t="$(( after - before ))" -v n="$N" 'BEGIN {
      printf "%s: %.2f s (%.0f sessions/s), client CPU %.2f s, machine CPU %.2f s, peak RSS %.0f MiB\n",
        b, w, n / w, u + s, t / 100, r / 1024 }'
  done
done
# The sections each build found (the same history: the same anomalies).
for n in "${!BINARIES[@]}"; do
  found=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["sessions"], "sessions;", ", ".join("%s %d" % (s["name"], s["count"]) for s in r["sections"] if not s["ok"]))' "$WORK/report-$n.json")
  echo "${BINARIES[$n]}: $found"
done
