# Developer tasks. CI (.ci/run) runs the same commands without needing `just`.

# Format the code.
fmt:
    cargo fmt --all

# Check formatting and lints as CI does.
lint:
    cargo fmt --all -- --check
    cargo clippy --locked --workspace --all-targets -- -D warnings

# Lint the project's automation: actionlint (workflows), hadolint (Containerfile), promtool
# (the chart's PrometheusRule); installs the pinned tools if missing. Also in CI (.ci/run).
lint-automation:
    bash scripts/lint-automation.sh

# Run every test (the README's test command).
test *ARGS:
    bash scripts/test.sh {{ARGS}}

# Regenerate the committed CRDs from the Rust types.
crds:
    cargo run --locked --quiet --bin purelb -- crds > manifests/crds/purelb.yaml

# Check the Helm chart as CI does (lint, render, schemas, Pod Security, RBAC, generated manifests).
chart:
    python3 scripts/chart-check.py

# Regenerate manifests/install.yaml, manifests/crds.yaml and the chart's copy of the CRDs.
chart-write:
    python3 scripts/chart-check.py --write

# Package the chart into dist/ (release).
chart-package:
    mkdir -p dist
    python3 -c 'import helm_python as h; print(h.package("charts/purelb", destination="dist"))'

# Run every benchmark and lab measurement and rewrite BENCHMARKS.md (root for the lab parts).
# `just bench --only queue,endpoints --output /tmp/b.md`, `--keep-going`, `--fuzz-log FILE`,
# `--soak-json FILE...`; `just bench --list` shows the sections, `--help` the rest.
bench *ARGS:
    python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check matplotlib
    python3 scripts/bench-report.py {{ARGS}}

# Show PureLB working in the network-namespace lab.
demo:
    cargo build --locked --release --workspace --bins
    ./target/release/purelb-lab demo

# Fails on any invariant violation or failed request outside the allowed windows (e2e/README.md).
# Chaos soak in the lab (root): `just soak [SECONDS] [SEED]`, default 30 min with a random seed.
soak DURATION="1800" *SEED:
    bash scripts/soak.sh {{DURATION}} {{SEED}}

# Does the soak catch a wrong product? Builds the agent with each deliberately wrong rule
# (`--cfg purelb_bug=...`) and expects the soak to fail on each, and to pass on the real build
# (root; `just injected-bugs [RULE...]`; weekly workflow, not CI). See TESTING.md.
injected-bugs *RULES:
    bash scripts/injected-bugs.sh {{RULES}}

# Everything CI does.
ci:
    bash .ci/run

# Mutation testing of the decision modules (cargo-mutants; not in CI: about 700 mutants, hours on
# 2 cores). `just mutants` every file, `just mutants src/core/election.rs` one file,
# `just mutants all 2/8` one shard of each. Scores and survivors: TESTING.md.
mutants FILE="all" SHARD="":
    bash scripts/mutants.sh {{FILE}} {{SHARD}}
