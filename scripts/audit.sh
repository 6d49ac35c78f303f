#!/usr/bin/env bash
# Supply-chain audit against deny.toml: `cargo deny check bans licenses
# sources` (crates.io only, no wildcard requirement, no banned crate, every
# license on the allow-list), then `advisories` (RustSec) where its database
# can be fetched: from a machine that cannot reach it, that check is
# reported as not run and the script still passes. Installs cargo-deny
# (from crates.io, --locked; about 8 minutes on 2 cores) when missing.
# Run by .ci/run when cargo-deny is already installed.
#
#   scripts/audit.sh                CARGO_DENY_VERSION=0.20.2
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DENY_VERSION=${CARGO_DENY_VERSION:-0.20.2}

if ! cargo deny --version >/dev/null 2>&1; then
  echo "audit: installing cargo-deny $CARGO_DENY_VERSION"
  cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi
echo "audit: $(cargo deny --version)"

cargo deny --locked check bans licenses sources

set +e
advisories=$(cargo deny --locked check advisories 2>&1)
status=$?
set -e
if [ "$status" -eq 0 ]; then
  printf '%s\n' "$advisories" | tail -n 1
elif grep -q "failed to fetch advisory database" <<<"$advisories"; then
  echo "audit: advisories NOT checked: the RustSec advisory database cannot be fetched from here"
else
  printf '%s\n' "$advisories"
  exit "$status"
fi
echo "audit: passed"
