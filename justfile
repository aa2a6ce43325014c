# Developer tasks. CI (.ci/run) runs the same commands without needing `just`.

# Format the code.
fmt:
    cargo fmt --all

# Check formatting and lints as CI does.
lint:
    cargo fmt --all -- --check
    cargo clippy --locked --workspace --all-targets -- -D warnings

# Run every test (the README's test command).
test *ARGS:
    bash scripts/test.sh {{ARGS}}

# Regenerate the committed CRDs from the Rust types.
crds:
    cargo run --locked --quiet --bin purelb -- crds > manifests/crds/purelb.yaml

# Run the benchmarks and print their numbers.
bench:
    cargo bench --locked --workspace

# Show PureLB working in the network-namespace lab.
demo:
    cargo build --locked --release --workspace --bins
    ./target/release/purelb-lab demo

# Everything CI does.
ci:
    bash .ci/run
