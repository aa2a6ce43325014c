#!/usr/bin/env python3
"""Runs Helm's own engine (the Go SDK, through helm-python-sdk) against a cluster: the API
emulator in the tests and the lab (`purelb-lab up --helm`), a real cluster alike.

    python3 scripts/helm-emulator.py install   --kubeconfig K [--namespace purelb-system] [--set-json '{"agent": {...}}']
    python3 scripts/helm-emulator.py upgrade   --kubeconfig K [--namespace ...] [--set-json ...]
    python3 scripts/helm-emulator.py status    --kubeconfig K [--namespace ...]
    python3 scripts/helm-emulator.py uninstall --kubeconfig K [--namespace ...]

Prints one JSON object: the release's name, namespace, revision, status and rendered manifest
(`uninstall`: the status `uninstalled` and what Helm kept). No `--wait`: the emulator runs no
controllers, so Deployments and DaemonSets never become ready there.
"""

import argparse
import json
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent.parent / "charts" / "purelb"
RELEASE = "purelb"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["install", "upgrade", "status", "uninstall"])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", default="purelb-system")
    parser.add_argument("--release", default=RELEASE)
    parser.add_argument("--set-json", default="{}", help="chart values as a JSON object")
    parser.add_argument("--timeout", type=int, default=120, help="seconds")
    args = parser.parse_args()
    try:
        import helm_python as helm
    except ImportError:
        print("helm-python-sdk is not installed: python3 -m pip install helm-python-sdk==0.2.2", file=sys.stderr)
        return 2
    values = json.loads(args.set_json)
    config = helm.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace)
    try:
        if args.action == "install":
            release = config.install(
                str(CHART), args.release, values, namespace=args.namespace, create_namespace=True, timeout=args.timeout
            )
        elif args.action == "upgrade":
            release = config.upgrade(str(CHART), args.release, values, namespace=args.namespace, timeout=args.timeout)
        elif args.action == "status":
            release = config.status(args.release)
        else:
            out = config.uninstall(args.release, timeout=args.timeout)
            release = dict(out.get("release") or {}, kept=out.get("info", ""))
    except helm.HelmError as e:
        print(f"helm {args.action} failed: {e}", file=sys.stderr)
        return 1
    keys = ["name", "namespace", "revision", "status", "manifest", "kept"]
    print(json.dumps({k: release.get(k) for k in keys if k in release}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
