#!/usr/bin/env bash
# Ends over HTTP, SQLite, release build: access logs at info (the default
# filter: one line per request) against RUST_LOG=warn (none), interleaved, 3
# rounds of 4,000 sessions, 16 at once, ends apart. Prints one line a run.
# Usage: cargo build --release --locked -p verdict && bench/access-logs.sh
set -euo pipefail
# The binary: $VERDICT_BIN, else this tree's release build (CARGO_TARGET_DIR honoured).
V=${VERDICT_BIN:-${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}/release/verdict}
export VERDICT_JWT_SECRET=bench-secret-of-32-bytes-or-more-0123 VERDICT_WORKER=off
for rep in 1 2 3; do
  for level in info warn; do
    dir=$(mktemp -d); port=$((18080 + RANDOM % 1000))
    if [ "$level" = warn ]; then export RUST_LOG=warn; else unset RUST_LOG; fi
    (cd "$dir" && exec "$V" serve --bind 127.0.0.1:$port > serve.log 2>&1) &
    pid=$!
    for i in $(seq 50); do curl -sf http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.1; done
    unset RUST_LOG
    "$V" simulate --url http://127.0.0.1:$port --sessions 4000 --concurrency 16 --ends-apart --json > "$dir/sim.json" 2>/dev/null
    lines=$(wc -l < "$dir/serve.log")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$dir/sim.json" "$level" "$rep" "$lines" <<'PY'
import json,sys
d=json.load(open(sys.argv[1]))
ops=d["operations"]
e=[k for k in ops if k.startswith("end")]
print(sys.argv[3], sys.argv[2], "log_lines=%s"%sys.argv[4], " ".join("%s:%s/s p50=%s p99=%s"%(k,ops[k]["per_second"],ops[k]["p50_ms"],ops[k]["p99_ms"]) for k in e+["join"] if k in ops))
PY
    tail -2 "$dir/serve.log" | grep -i error || true; rm -rf "$dir"
  done
done
