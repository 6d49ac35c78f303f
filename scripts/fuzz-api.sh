#!/usr/bin/env bash
# API fuzzing: schemathesis (from PyPI, in a venv this script makes) against
# verdict's own /openapi.json, once per role (admin, service, customer,
# provider), with auth configured. Fails on any 5xx, and on any answer whose
# status, content type or body the document does not list for its route. SQLite, loopback only, bounded
# (EXAMPLES per operation and phase; about a minute in all). Run by .ci/run.
#
#   scripts/fuzz-api.sh            EXAMPLES=25 VENV=target/fuzz-venv
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=${EXAMPLES:-25}
VENV=${VENV:-target/fuzz-venv}
SCHEMATHESIS=${SCHEMATHESIS:-schemathesis==4.32.5}

if ! "$VENV/bin/st" --version >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "$SCHEMATHESIS"
fi
cargo build -q --locked -p verdict
V=${CARGO_TARGET_DIR:-$PWD/target}/debug/verdict
WORK=$(mktemp -d /tmp/verdict-fuzz.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

export VERDICT_JWT_SECRET=fuzz-secret-long-enough-for-hs256-signing VERDICT_WORKER=off
export VERDICT_DATABASE_URL="sqlite://$WORK/verdict.db" RUST_LOG=error
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$V" serve --bind "127.0.0.1:$PORT" --clock manual > "$WORK/serve.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null && break; sleep 0.2; done

# NDJSON import bodies are not something the generator can build from the
# schema: the import is covered by its own tests instead.
status=0
for role in admin service customer provider; do
  token=$("$V" token --role "$role" --sub "fuzz-$role")
  echo "== schemathesis as $role"
  "$VENV/bin/st" run "http://127.0.0.1:$PORT/openapi.json" \
    -H "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$EXAMPLES" --generation-deterministic \
    --exclude-path /v1/admin/import \
    > "$WORK/st-$role.log" 2>&1 || status=1
  grep -E "generated|passed|failure|error" "$WORK/st-$role.log" | tail -4
  [ "$status" = 0 ] || { cat "$WORK/st-$role.log"; break; }
done
if grep -q "panicked" "$WORK/serve.log"; then cat "$WORK/serve.log"; status=1; fi
exit "$status"
