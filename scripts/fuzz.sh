#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for SECONDS (default 30).
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]     (SECONDS=0: build only;
#   FUZZ_NO_BUILD=1: run the targets built before)
# Installs cargo-fuzz (pinned) when it is missing. Runs on the stable toolchain with
# `--sanitizer none` (coverage-guided libFuzzer, no ASan: the code under test is safe Rust).
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(address_range annotations lease_annotations arp_na)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
if [ -z "${FUZZ_NO_BUILD:-}" ]; then cargo fuzz build -O -s none; fi # FUZZ_NO_BUILD=1: run what was built
if [ "$seconds" = 0 ]; then echo "fuzz: targets built"; exit 0; fi # SECONDS=0: build only
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  # -print_final_stats gives the number of runs for BENCHMARKS.md.
  # The binary cargo fuzz built, run directly: `cargo fuzz run` would rebuild first whenever a
  # source file changed meanwhile.
  mkdir -p "fuzz/artifacts/$target"
  "fuzz/target/x86_64-unknown-linux-gnu/release/$target" "fuzz/corpus/$target" \
    -artifact_prefix="fuzz/artifacts/$target/" \
    -max_total_time="$seconds" -print_final_stats=1 -close_fd_mask=3 2>&1 |
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|panicked|SUMMARY|ERROR' || true
  if [ -n "$(ls -A "fuzz/artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz: $target crashed; inputs in fuzz/artifacts/$target" >&2
    exit 1
  fi
done
echo "fuzz: all targets ran ${seconds}s without a crash"
