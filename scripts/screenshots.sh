#!/usr/bin/env bash
# Refreshes the pictures in docs/ on purpose: runs the browser tests
# (headless Chromium; they write their screenshots to the tests' output
# folder, never to the source tree) and copies the ones the docs show.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked -p verdict --test api -- \
  layout::every_page_lays_out_without_overflow_at_1400_and_390_px \
  demo_room::two_parties_meet_in_the_demo_room_and_see_what_verdict_decided
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
shots="$target/tmp/browser"
mkdir -p docs/screenshots
cp "$shots/dashboard-1400.png" docs/demo-dashboard.png
cp "$shots/demo-room.png" docs/demo-room.png
for page in sign-in dashboard review session provider demo-rooms demo-room; do
  for width in 1400 390; do
    cp "$shots/$page-$width.png" "docs/screenshots/$page-$width.png"
  done
done
echo "docs/ pictures refreshed from $shots"
