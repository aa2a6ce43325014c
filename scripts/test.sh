#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). Installs what the tests need when it
# is missing, validates the generated manifests with a real Kubernetes schema validator, then
# runs every Rust test of the workspace. Network-namespace tests need root.
set -euo pipefail
cd "$(dirname "$0")/.."

need_python_tool() { # tool, pip requirement
  command -v "$1" >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check "$2"
}
need_python_tool kubernetes-validate "kubernetes-validate==1.37.0"
# Tools the kernel and lab tests run: ip, nsenter, sysctl, curl, kubectl; BIRD 2 (the nodes'
# BGP daemon) and FRR (the lab's router) for the BGP tests.
missing=()
for pair in ip:iproute2 nsenter:util-linux sysctl:procps curl:curl kubectl:kubernetes-client bird:bird2 vtysh:frr; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== CRDs are current and valid for Kubernetes 1.25 and 1.33"
cargo run --locked --quiet --bin purelb -- crds | diff -u manifests/crds/purelb.yaml - \
  || { echo "manifests/crds/purelb.yaml is stale: run 'just crds'"; exit 1; }
for version in 1.25.0 1.33.0; do
  kubernetes-validate --quiet --strict -k "$version" manifests/crds/purelb.yaml
  kubernetes-validate --quiet --strict -k "$version" manifests/rbac-viewer.yaml
done

echo "== The emulator's protobuf field table is current (k8s-pb, k8s-openapi)"
python3 scripts/gen-protobuf-schema.py --check

echo "== Helm chart: lint, render, schemas, Pod Security, RBAC, generated manifests"
python3 -c 'import sys, helm_python; sys.exit(helm_python.__version__ != "0.2.2")' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check "helm-python-sdk==0.2.2"
python3 scripts/chart-check.py

echo "== The benchmark report's parsers (BENCHMARKS.md is written from what they read)"
python3 scripts/bench-report.py --self-test

echo "== Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast "$@"
else
  cargo test --locked --workspace --no-fail-fast "$@"
fi
