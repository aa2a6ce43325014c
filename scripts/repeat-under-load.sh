#!/usr/bin/env bash
# Runs the lab tests matching a nextest filter N times in a row while two CPU hogs keep both
# cores busy (a "loaded 2-core machine"); stops at the first failure.
# Usage: scripts/repeat-under-load.sh N 'test(/an_agent_rolled_in_place|on_a_cordoned_node/)'
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:?how many runs}
filter=${2:?a nextest filter expression}
cargo build --locked --quiet --bin purelb
cargo nextest run --locked -p purelb-e2e --no-run >/dev/null 2>&1
hogs=()
for _ in 1 2; do (while :; do :; done) & hogs+=($!); done
trap 'kill "${hogs[@]}" 2>/dev/null || true' EXIT
for i in $(seq 1 "$runs"); do
  if ! cargo nextest run --locked -p purelb-e2e --no-fail-fast -E "$filter" >"/tmp/repeat-under-load.$i.log" 2>&1; then
    echo "run $i of $runs FAILED (log: /tmp/repeat-under-load.$i.log)"
    grep -E "FAIL|panicked|MEASURE" "/tmp/repeat-under-load.$i.log" | head -20
    exit 1
  fi
  echo "run $i of $runs passed: $(grep -h MEASURE "/tmp/repeat-under-load.$i.log" | tr '\n' ' ')"
done
echo "all $runs runs passed under load"
