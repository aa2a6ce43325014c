#!/usr/bin/env bash
# Chaos soaks in the network-namespace lab (issue 9; needs root, ip, and a kernel with network
# namespaces). See e2e/README.md, "Soak".
#
#   scripts/soak.sh                    CI: two 3-minute soaks side by side, with two fixed seeds
#                                      (random seeds run weekly, 30 minutes: a random seed in the
#                                      gate made CI fail on an open bug it had not introduced;
#                                      TESTING.md, "CI and the soak's timing bounds")
#   scripts/soak.sh DURATION [SEED]    one soak (DURATION in seconds or e.g. 30m; SEED random
#                                      when omitted); `just soak` runs this
#
# Environment: SOAK_FIXED_SEED (default 1), SOAK_SECOND_SEED (default 376867715), SOAK_BUILD=release|debug (default release),
# SOAK_NODES=3|4 (default 4), SOAK_OUT (JSON reports, default target/soak),
# SOAK_AVOID_OPEN_BUGS=0|1 (default 0: every fault; 1 passes --avoid-open-bugs, which leaves out
# agent cut-offs by hanging connections, see e2e/README.md, "Soak").
# Exits non-zero when a soak finds a violation or a failed request outside the allowed windows.
set -euo pipefail
cd "$(dirname "$0")/.."

build="${SOAK_BUILD:-release}"
nodes="${SOAK_NODES:-4}"
out="${SOAK_OUT:-target/soak}"
avoid=()
if [ "${SOAK_AVOID_OPEN_BUGS:-0}" = 1 ]; then avoid=(--avoid-open-bugs); fi
mkdir -p "$out"
if [ "$build" = release ]; then
  cargo build --locked --release -p purelb --bin purelb -p purelb-e2e --bin purelb-lab
else
  cargo build --locked -p purelb --bin purelb -p purelb-e2e --bin purelb-lab
fi
lab="./target/$build/purelb-lab"

random_seed() { echo $(( (RANDOM << 15 | RANDOM) % 1000000000 )); }

one() { # duration seed label
  local duration="$1" seed="$2" label="$3"
  echo "== soak ($label): ${duration} s, seed ${seed}, ${nodes} nodes, ${build} build"
  "$lab" soak --duration "$duration" --seed "$seed" --nodes "$nodes" --prefix "plsoak${label:0:1}" \
    --purelb-bin "./target/$build/purelb" --json-file "$out/soak-$label-$seed.json" "${avoid[@]}"
}

if [ $# -ge 1 ]; then
  seed="${2:-$(random_seed)}"
  echo "soak seed: $seed"
  one "$1" "$seed" "run"
  exit
fi

# The two CI soaks run side by side (separate labs), each into its own log, printed after.
seed="${SOAK_SECOND_SEED:-376867715}"
echo "soak seeds: ${SOAK_FIXED_SEED:-1} and $seed (rerun one: SOAK_AVOID_OPEN_BUGS=${SOAK_AVOID_OPEN_BUGS:-0} scripts/soak.sh 180 SEED)"
one 180 "${SOAK_FIXED_SEED:-1}" "fixed" > "$out/fixed.log" 2>&1 &
fixed=$!
one 180 "$seed" "random" > "$out/random.log" 2>&1 &
random=$!
status=0
wait "$fixed" || status=1
wait "$random" || status=1
cat "$out/fixed.log" "$out/random.log"
exit "$status"
