#!/usr/bin/env bash
# Mutation testing of the decision modules (issue 15): one cargo-mutants run over the files
# below (one baseline build), with the settings of .cargo/mutants.toml (the library's unit
# tests, nextest).
#   bash scripts/mutants.sh                      every file
#   bash scripts/mutants.sh src/core/election.rs one file
#   bash scripts/mutants.sh all 3/8              shard 3 of 8 (0-based; the weekly workflow)
# Output in target/mutants/mutants.out; at the end a table per file of caught / missed /
# timeout / unviable and the score = (caught + timeout) / (caught + timeout + missed); exits 1
# when a file is below 90 %.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=(
  src/core/election.rs
  src/core/endpoints.rs
  src/core/ipam.rs
  src/core/ipam/usage.rs
  src/core/ipam/special.rs
  src/core/queue.rs
  src/agent/decide.rs
  src/agent/plan.rs
  src/allocator/table.rs
  src/reconcile/plan.rs
)
which=${1:-all}
shard=${2:-}
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants@27.1.0
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
if [ "$which" != all ]; then FILES=("$which"); fi
out=target/mutants
mkdir -p "$out"
args=(--no-shuffle -o "$out")
for file in "${FILES[@]}"; do args+=(-f "$file"); done
[ -n "$shard" ] && args+=(--shard "$shard")
# cargo-mutants exits 2 when mutants were missed, 3 on timeouts: the table says which.
cargo mutants "${args[@]}" || true
count() { # outcome file
  local f="$out/mutants.out/$2.txt"
  if [ -s "$f" ]; then grep -c "^$1:" "$f" || true; else echo 0; fi
}
status=0
echo
echo "| file | caught | missed | timeout | unviable | score |"
echo "|---|---|---|---|---|---|"
for file in "${FILES[@]}"; do
  caught=$(count "$file" caught) missed=$(count "$file" missed)
  timeout=$(count "$file" timeout) unviable=$(count "$file" unviable)
  viable=$((caught + missed + timeout))
  if [ "$viable" -eq 0 ]; then
    echo "| \`$file\` | 0 | 0 | 0 | $unviable | - |"
    continue
  fi
  score=$(python3 -c "print(f'{100*($caught+$timeout)/$viable:.1f}')")
  echo "| \`$file\` | $caught | $missed | $timeout | $unviable | $score % |"
  python3 -c "import sys; sys.exit(0 if ($caught+$timeout)/$viable >= 0.9 else 1)" || status=1
done
echo "survivors: $out/mutants.out/missed.txt"
exit $status
