#!/usr/bin/env python3
"""Checks the alerts of the chart's PrometheusRule with Prometheus' own `promtool check rules`.

Renders charts/purelb with the real Helm engine (helm-python-sdk, as scripts/chart-check.py does)
with `monitoring.enabled: true` (the PrometheusRule is on by default under that switch), writes
the `spec` of every rendered PrometheusRule (a Prometheus rule file: `groups: [...]`) to a
temporary file and runs `promtool check rules --lint=all --lint-fatal` on it. Fails on any
finding, on a missing PrometheusRule, and when an alert of EXPECTED_ALERTS is missing (operators
route and silence by these names).

The check proves itself first: a tampered copy (a PromQL syntax error, a broken annotation
template, a duplicated rule) must make promtool fail.

Usage: scripts/check-prometheus-rules.py [--keep DIR]   (--keep writes the rule files to DIR)
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "purelb"
VALUES = {"monitoring": {"enabled": True, "prometheusRule": {"enabled": True}}}
EXPECTED_ALERTS = {
    "PureLBPoolAlmostFull",
    "PureLBAllocationFailures",
    "PureLBAllocatorNoLeader",
    "PureLBAgentLeaseUnhealthy",
    "PureLBOrphanedAddresses",
    "PureLBAddressNotAnnounced",
    "PureLBEndpointSliceCacheStale",
}


def rendered_rules() -> list[dict]:
    import helm_python as helm

    chart = helm.Chart.load(str(CHART))
    out = chart.render(VALUES, name="purelb", namespace="purelb-system", is_install=True)
    rules = []
    for path in sorted(out):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(out[path]):
            if doc and doc.get("kind") == "PrometheusRule":
                rules.append(doc)
    return rules


def promtool_check(promtool: str, specs: dict[str, dict], keep: Path | None) -> subprocess.CompletedProcess:
    """`promtool check rules --lint=all --lint-fatal` on each spec written as a rule file."""
    with tempfile.TemporaryDirectory(prefix="purelb-rules-") as tmp:
        files = []
        for name, spec in specs.items():
            f = Path(tmp) / f"{name}.rules.yaml"
            f.write_text(yaml.safe_dump(spec, sort_keys=False, width=100))
            files.append(f)
            if keep:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, keep / f.name)
        # --lint-fatal: a lint finding exits 3 like a failed check (without it promtool exits 0).
        return subprocess.run([promtool, "check", "rules", "--lint=all", "--lint-fatal", *map(str, files)],
                              capture_output=True, text=True)


def tampered(spec: dict) -> dict[str, tuple[dict, str]]:
    """Broken copies of the rules, each with the word promtool's complaint must contain."""

    def variant(change) -> dict:
        s = copy.deepcopy(spec)
        change(s["groups"][0]["rules"])
        return s

    return {
        "syntax": (variant(lambda r: r[0].update(expr="sum(purelb_address_pool_size")), "parse error"),
        "template": (variant(lambda r: r[1].setdefault("annotations", {}).update(summary="{{ $labels.pool ")), "unclosed action"),
        "duplicate": (variant(lambda r: r.append(copy.deepcopy(r[2]))), "duplicate"),
    }


def main() -> int:
    args = sys.argv[1:]
    keep = Path(args[args.index("--keep") + 1]) if "--keep" in args else None
    promtool = shutil.which("promtool")
    if not promtool:
        print("promtool is not installed: apt-get install prometheus (Debian ships promtool in it)", file=sys.stderr)
        return 2
    try:
        rules = rendered_rules()
    except ImportError:
        print("helm-python-sdk is not installed: python3 -m pip install helm-python-sdk==0.2.2", file=sys.stderr)
        return 2
    if not rules:
        print("FAIL: the chart rendered no PrometheusRule with monitoring.enabled=true")
        return 1

    failed = False
    alerts = {r.get("alert") for pr in rules for g in pr["spec"]["groups"] for r in g["rules"]}
    missing = EXPECTED_ALERTS - alerts
    if missing:
        print(f"FAIL: alerts missing from the PrometheusRule: {', '.join(sorted(missing))}")
        failed = True

    missed = 0
    for what, (spec, complaint) in tampered(rules[0]["spec"]).items():
        bad = promtool_check(promtool, {f"tampered-{what}": spec}, None)
        if bad.returncode == 0 or complaint not in bad.stdout + bad.stderr:
            print(f"FAIL: self-test: promtool does not catch a tampered rule file ({what}, exit {bad.returncode}):")
            print((bad.stdout + bad.stderr).strip())
            missed += 1
    failed |= missed > 0
    if not missed:
        print("== self-test: promtool fails each tampered copy (PromQL syntax error, broken template, duplicate rule)")

    specs = {pr["metadata"]["name"]: pr["spec"] for pr in rules}
    print("$ promtool check rules --lint=all --lint-fatal " + " ".join(f"<spec of PrometheusRule {n}>" for n in specs))
    res = promtool_check(promtool, specs, keep)
    print((res.stdout + res.stderr).strip())
    if res.returncode != 0 or "FAILED" in res.stdout:
        failed = True

    if failed:
        print("\nprometheus rules: findings")
        return 1
    print(f"\nprometheus rules: {len(alerts)} alerts in {len(rules)} PrometheusRule, promtool found nothing")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
