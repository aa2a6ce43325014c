#!/usr/bin/env bash
# Does the soak catch a wrong product? (issue 15, part 2; needs root, ip, network namespaces.)
#
# For every deliberately wrong rule the product can be built with (`--cfg purelb_bug="..."`,
# declared in Cargo.toml's [workspace.lints.rust]), build the `purelb` binary with it and run a
# short chaos soak with a fixed seed: the soak must FAIL with invariant violations (the oracle in
# e2e/src/lab/oracle.rs does not share the product's decision code, so it disagrees). Then the
# same soak with the real build must PASS, so that the failures are the injected rules' doing.
# Prints the invariants each rule violated. Exits 0 only if every rule was caught and the real
# build passed. Not in .ci/run (it builds the agent once per rule): `just injected-bugs`, and the
# weekly workflow (.github/workflows/weekly.yml).
#
#   scripts/injected-bugs.sh [RULE...]     default: every rule
#
# Environment: INJECTED_BUGS_SECONDS (soak duration, default 20), INJECTED_BUGS_SEED (default 1),
# INJECTED_BUGS_BUILD=debug|release (default debug, as the CI soak), INJECTED_BUGS_NODES (default
# 4), INJECTED_BUGS_OUT (JSON reports and logs, default target/injected-bugs).
#
# Each rule builds into its own target directory, target/bug-<rule>: the cfg reaches rustc through
# RUSTFLAGS, which is part of every crate's fingerprint, so sharing target/ would rebuild the whole
# dependency tree of the normal build (and back again). A directory of its own builds the
# dependencies once per rule (about 3 minutes in debug on 2 cores) and then only the changed
# crates. The real build (and purelb-lab) come from target/<build>, as in scripts/soak.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

all_rules=(highest_hash ignore_terminating)
rules=("$@")
if [ ${#rules[@]} -eq 0 ]; then rules=("${all_rules[@]}"); fi

seconds="${INJECTED_BUGS_SECONDS:-20}"
seed="${INJECTED_BUGS_SEED:-1}"
build="${INJECTED_BUGS_BUILD:-debug}"
nodes="${INJECTED_BUGS_NODES:-4}"
out="${INJECTED_BUGS_OUT:-target/injected-bugs}"
mkdir -p "$out"

profile=()
if [ "$build" = release ]; then profile=(--release); fi

for rule in "${rules[@]}"; do
  case " ${all_rules[*]} " in
    *" $rule "*) ;;
    *) echo "unknown rule '$rule' (known: ${all_rules[*]})" >&2; exit 2 ;;
  esac
done

echo "== build: purelb-lab and the real purelb ($build)"
cargo build --locked "${profile[@]}" -p purelb --bin purelb -p purelb-e2e --bin purelb-lab
lab="./target/$build/purelb-lab"

# Prints "invariant N (name): count" for every violated invariant of a soak's JSON report, and
# the requests failed outside the allowed windows; exits 1 when no invariant was violated.
summarise() {
  python3 - "$1" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
violated = [i for i in report["invariants"] if i["violations"] > 0]
for i in violated:
    print(f"   invariant {i['number']} ({i['invariant']}): {i['violations']} violation(s)")
for v in report["violations"][:3]:
    print(f"     e.g. t={v['at_s']}s {v['subject']}: {v['detail']}")
requests = report["requests"]
print(f"   requests: {requests['sent']} sent, {requests['outside']} failed outside the allowed windows; "
      f"errors: {len(report['errors'])}; passed: {report['passed']}")
sys.exit(0 if violated else 1)
PY
}

soak() { # label purelb-binary
  local label="$1" bin="$2" prefix="plbug-${1//_/-}"
  "$lab" soak --duration "$seconds" --seed "$seed" --nodes "$nodes" --prefix "${prefix:0:24}" \
    --purelb-bin "$bin" --json-file "$out/$label.json" > "$out/$label.log" 2>&1
}

status=0
for rule in "${rules[@]}"; do
  echo "== rule $rule: build purelb with --cfg purelb_bug=\"$rule\" (target/bug-$rule)"
  CARGO_TARGET_DIR="target/bug-$rule" RUSTFLAGS="${RUSTFLAGS:-} --cfg purelb_bug=\"$rule\"" \
    cargo build --locked "${profile[@]}" -p purelb --bin purelb
  echo "== rule $rule: soak ${seconds} s, seed $seed, $nodes nodes"
  if soak "$rule" "target/bug-$rule/$build/purelb"; then
    echo "NOT CAUGHT: the soak passed with the wrong rule $rule ($out/$rule.log)"
    status=1
  elif summarise "$out/$rule.json"; then
    echo "caught: $rule"
  else
    echo "NOT CAUGHT: the soak failed with $rule, but without an invariant violation ($out/$rule.log)"
    status=1
  fi
done

echo "== control: the same soak with the real build"
if soak real "./target/$build/purelb"; then
  summarise "$out/real.json" || true
  echo "passed: the real build"
else
  summarise "$out/real.json" || true
  echo "FAILED: the real build fails the same soak, so the failures above prove nothing ($out/real.log)"
  status=1
fi
exit "$status"
