#!/usr/bin/env bash
# Mutation testing of the decision modules (issue 15): cargo-mutants on each file below, one
# after another, with the settings of .cargo/mutants.toml (the library's unit tests, nextest).
#   bash scripts/mutants.sh                      every file
#   bash scripts/mutants.sh src/core/election.rs one file
#   bash scripts/mutants.sh all 3/8              shard 3 of 8 of every file (weekly workflow)
# Per file: target/mutants/<file>/mutants.out; at the end a table of caught / missed / timeout /
# unviable and the score = (caught + timeout) / (caught + timeout + missed), target >= 90 %.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=(
  src/core/election.rs
  src/core/endpoints.rs
  src/core/ipam.rs
  src/core/ipam/usage.rs
  src/core/queue.rs
  src/agent/decide.rs
  src/allocator/table.rs
  src/reconcile/plan.rs
)
which=${1:-all}
shard=${2:-}
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants@27.1.0
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
if [ "$which" != all ]; then FILES=("$which"); fi
status=0
rows=()
for file in "${FILES[@]}"; do
  out="target/mutants/${file//\//_}"
  mkdir -p "$out"
  args=(--no-shuffle -f "$file" -o "$out")
  [ -n "$shard" ] && args+=(--shard "$shard")
  # cargo-mutants exits 2 when mutants were missed, 3 on timeouts: the table says which.
  cargo mutants "${args[@]}" || true
  count() { if [ -s "$out/mutants.out/$1.txt" ]; then grep -c . "$out/mutants.out/$1.txt"; else echo 0; fi; }
  caught=$(count caught) missed=$(count missed) timeout=$(count timeout) unviable=$(count unviable)
  viable=$((caught + missed + timeout))
  score=$(python3 -c "print(f'{100*($caught+$timeout)/$viable:.1f}' if $viable else '-')")
  rows+=("| \`$file\` | $caught | $missed | $timeout | $unviable | $score % |")
  if [ "$viable" -gt 0 ] && python3 -c "import sys; sys.exit(0 if ($caught+$timeout)/$viable >= 0.9 else 1)"; then :; else status=1; fi
done
echo
echo "| file | caught | missed | timeout | unviable | score |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo "survivors: target/mutants/*/mutants.out/missed.txt"
exit $status
