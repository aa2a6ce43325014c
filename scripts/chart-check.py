#!/usr/bin/env python3
"""Checks the Helm chart in charts/purelb with the real Helm engine (the helm-python-sdk package
embeds Helm's Go SDK; no helm binary needed):

  * `helm lint --strict` and rendering with several value sets;
  * values.schema.json rejects typos, and the chart refuses bad combinations;
  * every rendered object validates against the Kubernetes 1.25 and 1.33 schemas
    (kubernetes-validate); objects of custom kinds are skipped and listed;
  * the allocator pod passes Pod Security Standards "restricted"; the agent pod needs nothing
    beyond hostNetwork, root and NET_ADMIN + NET_RAW; no Secret reaches the agent;
  * the rendered RBAC equals manifests/rbac.yaml exactly (an extra verb fails), plus, with
    netbox.enabled only, manifests/rbac-netbox.yaml naming netbox.tokenSecret.name;
  * charts/purelb/files/crds.yaml equals manifests/crds/purelb.yaml (the `purelb crds` output);
  * manifests/install.yaml and manifests/crds.yaml equal what the chart renders.

Usage: scripts/chart-check.py [--write]   (--write regenerates the generated files)
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "purelb"
NAMESPACE = "purelb-system"
RELEASE = "purelb"
KUBE_VERSIONS = ["1.25.0", "1.33.0"]
# Kinds whose schema is not in Kubernetes' OpenAPI (CRDs: ours and prometheus-operator's).
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "LBNodeAgent", "ServiceGroup"}

VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "netbox": {
        "netbox": {"enabled": True, "tokenSecret": {"name": "netbox-token", "key": "token"}},
        "serviceGroup": {
            "create": True,
            "name": "netbox",
            "spec": {
                "netbox": {
                    "url": "https://netbox.example.com",
                    "tenant": "kubernetes",
                    "aggregation": "default",
                    "tokenSecretRef": {"name": "netbox-token", "key": "token"},
                }
            },
        },
    },
    "netbox-own-secret": {
        "netbox": {"enabled": True, "tokenSecret": {"name": "nb-api", "key": "api-token"}},
    },
    "bgp": {"bgp": {"enabled": True, "passwordSecret": "bgp-passwords"}},
    "bgp-no-passwords": {"bgp": {"enabled": True}},
    "canary": {
        "agent": {
            "canary": {
                "enabled": True,
                "nodeSelector": {"purelb.io/canary": "true", "kubernetes.io/arch": "amd64"},
                "image": {"tag": "0.2.0-rc.1"},
            },
            "reconcileInitContainer": {"enabled": True},
        }
    },
    "monitoring": {
        "monitoring": {"enabled": True},
        "createNamespace": True,
        "serviceGroup": {
            "create": True,
            "spec": {"local": {"v4pool": {"pool": "192.0.2.240/28", "subnet": "192.0.2.0/24", "aggregation": "default"}}},
        },
        "extraObjects": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "extra-{{ .Release.Name }}"}}],
    },
}
# Values that must be refused (schema or template `fail`).
BAD_VALUE_SETS: dict[str, dict] = {
    "typo in a key": {"allocator": {"replica": 3}},
    "wrong type": {"agent": {"handoverTimeoutSeconds": "5s"}},
    "bad duration": {"allocator": {"leaseDuration": "15"}},
    "grace period not above handover timeout": {"agent": {"handoverTimeoutSeconds": 30, "terminationGracePeriodSeconds": 30}},
    "canary without nodes": {"agent": {"canary": {"enabled": True}}},
}

INSTALL_VALUES = {"createNamespace": True}
INSTALL_HEADER = (
    "# Generated from charts/purelb by `scripts/chart-check.py --write` (default values plus\n"
    "# createNamespace=true, release purelb, namespace purelb-system). Do not edit.\n"
    "# Apply manifests/crds.yaml first: kubectl apply --server-side -f manifests/crds.yaml\n"
)
CRDS_HEADER = (
    "# Generated from charts/purelb by `scripts/chart-check.py --write` (the CRDs printed by\n"
    "# `purelb crds`, with helm.sh/resource-policy: keep). Do not edit.\n"
)
# Helm's install order for the kinds this chart renders.
KIND_ORDER = [
    "Namespace", "CustomResourceDefinition", "ServiceAccount", "Secret", "ConfigMap",
    "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "DaemonSet",
    "Deployment", "PodDisruptionBudget",
]

failures: list[str] = []
quiet = False  # during the self-test, failures are expected and not printed


def fail(msg: str) -> None:
    failures.append(msg)
    if not quiet:
        print(f"FAIL: {msg}")


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render(helm, chart, values: dict) -> list[dict]:
    """Render like `helm template`: all templates (hooks included), NOTES.txt excluded."""
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objs = []
    for path in sorted(out):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(out[path]):
            if doc:
                objs.append(doc)
    return objs


def key(o: dict) -> str:
    return f"{o['kind']}/{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"


# ---------- Pod Security ----------

def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec.get("containers", []) + spec.get("ephemeralContainers", [])


def seccomp_ok(pod_sc: dict, c_sc: dict) -> bool:
    t = (c_sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    return t in ("RuntimeDefault", "Localhost")


def common_baseline(name: str, spec: dict, allow_host_network: bool) -> None:
    for f in ("hostPID", "hostIPC"):
        if spec.get(f):
            fail(f"{name}: {f}")
    if spec.get("hostNetwork") and not allow_host_network:
        fail(f"{name}: hostNetwork")
    for v in spec.get("volumes", []):
        allowed = {"name", "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
        if set(v) - allowed:
            fail(f"{name}: volume {v['name']} of a type restricted forbids: {sorted(set(v) - allowed)}")
    pod_sc = spec.get("securityContext", {})
    for c in containers(spec):
        sc = c.get("securityContext", {})
        cn = f"{name}/{c['name']}"
        if sc.get("privileged"):
            fail(f"{cn}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{cn}: allowPrivilegeEscalation is not false")
        if "ALL" not in (sc.get("capabilities", {}).get("drop") or []):
            fail(f"{cn}: capabilities.drop lacks ALL")
        if not seccomp_ok(pod_sc, sc):
            fail(f"{cn}: seccompProfile is not RuntimeDefault/Localhost")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{cn}: readOnlyRootFilesystem is not true")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            fail(f"{cn}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            fail(f"{cn}: procMount")
        for o in (pod_sc, sc):
            if (o.get("appArmorProfile") or {}).get("type") == "Unconfined":
                fail(f"{cn}: AppArmor Unconfined")
            if "seLinuxOptions" in o:
                fail(f"{cn}: seLinuxOptions set")


def check_restricted(name: str, spec: dict) -> None:
    """Pod Security Standards `restricted` (what PSA enforces)."""
    common_baseline(name, spec, allow_host_network=False)
    pod_sc = spec.get("securityContext", {})
    for c in containers(spec):
        sc = c.get("securityContext", {})
        cn = f"{name}/{c['name']}"
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            fail(f"{cn}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            fail(f"{cn}: runAsUser 0")
        if set(sc.get("capabilities", {}).get("add") or []) - {"NET_BIND_SERVICE"}:
            fail(f"{cn}: adds capabilities")


# The BIRD container (bgp.enabled): TCP port 179 and BFD's interface-bound sockets, nothing else.
BIRD_CAPS = {"NET_BIND_SERVICE", "NET_RAW"}


def check_agent(name: str, spec: dict) -> None:
    """Restricted, except exactly: hostNetwork, root, NET_ADMIN + NET_RAW (the BIRD container:
    NET_BIND_SERVICE + NET_RAW). No Secret reaches a purelb container; the BGP password Secret
    is mounted into the BIRD container only."""
    common_baseline(name, spec, allow_host_network=True)
    if not spec.get("hostNetwork"):
        fail(f"{name}: agent without hostNetwork")
    secret_volumes = {v["name"] for v in spec.get("volumes", []) if "secret" in v or "projected" in v}
    for c in containers(spec):
        sc = c.get("securityContext", {})
        added = set(sc.get("capabilities", {}).get("add") or [])
        want = BIRD_CAPS if c["name"] == "bird" else {"NET_ADMIN", "NET_RAW"}
        if added != want:
            fail(f"{name}/{c['name']}: capabilities added {sorted(added)}, want exactly {', '.join(sorted(want))}")
        for e in c.get("env", []) + c.get("envFrom", []):
            if "secretKeyRef" in (e.get("valueFrom") or {}) or "secretRef" in e:
                fail(f"{name}/{c['name']}: Secret in the environment")
        mounted = {m["name"] for m in c.get("volumeMounts", [])} & secret_volumes
        if mounted and c["name"] != "bird":
            fail(f"{name}/{c['name']}: Secret volume {sorted(mounted)} mounted into a purelb container")
    for v in spec.get("volumes", []):
        if ("secret" in v or "projected" in v) and v.get("secret", {}).get("secretName") is None:
            fail(f"{name}: projected volume {v['name']} in the agent")


def check_set(label: str, objs: list[dict], values: dict) -> None:
    by_kind: dict[str, list[dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    deps = [o for o in by_kind.get("Deployment", []) if o["metadata"]["name"] == "purelb-allocator"]
    dss = {o["metadata"]["name"]: o for o in by_kind.get("DaemonSet", [])}
    if len(deps) != 1 or "purelb-agent" not in dss:
        fail(f"{label}: allocator Deployment or agent DaemonSet missing")
        return
    alloc = deps[0]["spec"]["template"]["spec"]
    check_restricted(f"{label}: allocator", alloc)
    netbox = values.get("netbox", {}).get("enabled", False)
    secret_vols = [v for v in alloc.get("volumes", []) if "secret" in v]
    if netbox != bool(secret_vols):
        fail(f"{label}: allocator Secret volumes {secret_vols} with netbox.enabled={netbox}")
    if netbox:
        # The token file is <dir>/<key>, and the allocator knows which Secret is mounted.
        want = values["netbox"]["tokenSecret"]
        items = [i for v in secret_vols for i in v["secret"].get("items", [])]
        if [v["secret"]["secretName"] for v in secret_vols] != [want["name"]] or items != [{"key": want["key"], "path": want["key"]}]:
            fail(f"{label}: allocator Secret volume {secret_vols} does not mount key {want['key']} of {want['name']} as a file of that name")
        env = {e["name"]: e.get("value") for e in alloc["containers"][0].get("env", [])}
        if env.get("PURELB_NETBOX_TOKEN_SECRET") != want["name"] or env.get("PURELB_NETBOX_TOKEN_DIR") != "/etc/purelb/netbox":
            fail(f"{label}: allocator not told which Secret is mounted where: {env}")
    for name, ds in dss.items():
        check_agent(f"{label}: {name}", ds["spec"]["template"]["spec"])
        c = ds["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in c["env"]}
        for var, field in (("NODE_NAME", "spec.nodeName"), ("POD_UID", "metadata.uid"), ("HOST_IP", "status.hostIP")):
            if env.get(var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != field:
                fail(f"{label}: {name}: {var} not from the downward API ({field})")
        if env.get("PURELB_METRICS_ADDR", {}).get("value") != "$(HOST_IP):7472":
            fail(f"{label}: {name}: metrics not bound to the host IP")
    bgp = values.get("bgp", {})
    for name, ds in dss.items():
        pod = ds["spec"]["template"]["spec"]
        names = [c["name"] for c in pod["containers"]]
        if bool(bgp.get("enabled")) != ("bird" in names):
            fail(f"{label}: {name}: BIRD container {'missing' if bgp.get('enabled') else 'rendered while bgp is off'}")
        if bgp.get("enabled"):
            env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
            if env.get("PURELB_BIRD_SOCKET") != "/run/purelb-bird/bird.ctl":
                fail(f"{label}: {name}: the agent is not told where BIRD's socket is: {env}")
            secrets = [v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v]
            want = [bgp["passwordSecret"]] if bgp.get("passwordSecret") else []
            if secrets != want:
                fail(f"{label}: {name}: Secret volumes {secrets}, want {want}")
            bird = next(c for c in pod["containers"] if c["name"] == "bird")
            if "drained" not in " ".join(bird.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])):
                fail(f"{label}: {name}: the BIRD container does not wait for the agent's drain")
    canary = values.get("agent", {}).get("canary", {})
    if canary.get("enabled"):
        main, can = dss["purelb-agent"]["spec"]["template"]["spec"], dss.get("purelb-agent-canary", {}).get("spec", {}).get("template", {}).get("spec")
        if not can:
            fail(f"{label}: canary DaemonSet missing")
            return
        if main["containers"][0]["image"] == can["containers"][0]["image"]:
            fail(f"{label}: canary runs the same image")
        if any(can.get("nodeSelector", {}).get(k) != v for k, v in canary["nodeSelector"].items()):
            fail(f"{label}: canary nodeSelector lacks the canary labels")
        terms = main.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
        want = sorted((k, str(v)) for k, v in canary["nodeSelector"].items())
        got = sorted((t["matchExpressions"][0]["key"], t["matchExpressions"][0]["values"][0]) for t in terms if t["matchExpressions"][0]["operator"] == "NotIn")
        if got != want:
            fail(f"{label}: main DaemonSet is not kept off the canary nodes: {terms}")
    elif "purelb-agent-canary" in dss:
        fail(f"{label}: canary DaemonSet rendered while disabled")


# ---------- RBAC ----------

RBAC_KINDS = {"ServiceAccount", "ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"}


def rbac_view(objs: list[dict]) -> dict[str, object]:
    out = {}
    for o in objs:
        if o["kind"] not in RBAC_KINDS:
            continue
        if o["kind"] in ("ClusterRole", "Role"):
            body = [
                {k: sorted(r.get(k) or []) for k in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")}
                for r in o.get("rules") or []
            ]
            body = sorted(body, key=repr)
            if "aggregationRule" in o:
                body.append({"aggregationRule": o["aggregationRule"]})
        elif o["kind"].endswith("Binding"):
            body = {"roleRef": o["roleRef"], "subjects": sorted(o.get("subjects") or [], key=repr)}
        else:
            body = {k: o.get(k) for k in ("automountServiceAccountToken", "secrets", "imagePullSecrets")}
        out[key(o)] = body
    return out


def documented_for(values: dict, documented: dict, netbox_docs: list[dict]) -> dict:
    """manifests/rbac.yaml, plus manifests/rbac-netbox.yaml (naming the values' Secret) when
    netbox.enabled."""
    nb = values.get("netbox", {})
    if not nb.get("enabled"):
        return documented
    extra = copy.deepcopy(netbox_docs)
    name = nb.get("tokenSecret", {}).get("name", "netbox-token")
    for d in extra:
        for r in d.get("rules") or []:
            if "resourceNames" in r:
                r["resourceNames"] = [name]
    return {**documented, **rbac_view(extra)}


def check_rbac(label: str, objs: list[dict], documented: dict) -> None:
    got = rbac_view(objs)
    for k in sorted(set(got) | set(documented)):
        if got.get(k) != documented.get(k):
            fail(f"{label}: RBAC {k} differs from manifests/rbac.yaml:\n  chart: {got.get(k)}\n  documented: {documented.get(k)}")


# ---------- Kubernetes schemas ----------

def validate(label: str, objs: list[dict], skipped: set[str]) -> None:
    import kubernetes_validate as kv

    for o in objs:
        if o["kind"] in CUSTOM_KINDS:
            skipped.add(o["kind"])
            continue
        for v in KUBE_VERSIONS:
            try:
                kv.validate(o, v, strict=True)
            except kv.ValidationError as e:
                fail(f"{label}: {key(o)} invalid for Kubernetes {v}: {e.message} at {list(e.path)}")
            except Exception as e:  # schema missing etc.
                fail(f"{label}: {key(o)} not validated for Kubernetes {v}: {e}")


# ---------- generated files ----------

def dump(objs: list[dict]) -> str:
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False, width=100) for o in objs)


def generated(objs: list[dict]) -> dict[Path, str]:
    def order(o):
        k = o["kind"]
        return (KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER), k, o["metadata"].get("namespace", ""), o["metadata"]["name"])

    crds, rest = [], []
    for o in sorted(objs, key=order):
        o = copy.deepcopy(o)
        ann = o["metadata"].get("annotations", {})
        for a in [a for a in ann if a.startswith("helm.sh/hook")]:
            del ann[a]  # hooks only mean something to Helm; kubectl applies them as they are
        if not ann:
            o["metadata"].pop("annotations", None)
        (crds if o["kind"] == "CustomResourceDefinition" else rest).append(o)
    return {
        ROOT / "manifests" / "install.yaml": INSTALL_HEADER + dump(rest),
        ROOT / "manifests" / "crds.yaml": CRDS_HEADER + dump(crds),
    }


def main() -> int:
    write = "--write" in sys.argv[1:]
    try:
        import helm_python as helm
    except ImportError:
        print("helm-python-sdk is not installed: python3 -m pip install helm-python-sdk", file=sys.stderr)
        return 2
    print(f"Helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__})")

    # The chart's copy of the CRDs must be the `purelb crds` output committed in manifests/crds/.
    src, copy_ = ROOT / "manifests" / "crds" / "purelb.yaml", CHART / "files" / "crds.yaml"
    if write:
        copy_.write_text(src.read_text())
    elif copy_.read_text() != src.read_text():
        fail("charts/purelb/files/crds.yaml differs from manifests/crds/purelb.yaml: run scripts/chart-check.py --write")

    chart = helm.Chart.load(str(CHART))
    documented = rbac_view([d for d in yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text()) if d])
    netbox_docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "rbac-netbox.yaml").read_text()) if d]
    skipped: set[str] = set()
    defaults = {}
    for label, values in VALUE_SETS.items():
        report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
        problems = [m for m in report.get("messages", []) if m["severity"] >= 2] + [{"error": e} for e in report.get("errors") or []]
        for m in problems:
            fail(f"{label}: helm lint --strict: {m.get('path', '')} {m['error']}")
        try:
            objs = render(helm, chart, values)
        except helm.HelmError as e:
            fail(f"{label}: render failed: {e}")
            continue
        kinds = sorted({o["kind"] for o in objs})
        print(f"== {label}: lint ok={not problems}, {len(objs)} objects: {', '.join(kinds)}")
        check_set(label, objs, values)
        check_rbac(label, objs, documented_for(values, documented, netbox_docs))
        validate(label, objs, skipped)
        if label == "defaults":
            defaults = values
    print(f"   not validated (custom kinds, no schema in Kubernetes' OpenAPI): {', '.join(sorted(skipped))}")

    for label, values in BAD_VALUE_SETS.items():
        try:
            chart.validate_schema(values)
            render(helm, chart, values)
        except helm.HelmError as e:
            print(f"== refused as it should be ({label}): {' '.join(str(e).split())[:150]}")
        else:
            fail(f"values accepted but should be refused: {label}: {values}")

    # The checks themselves must catch what they exist for (tampered copies of the defaults).
    base = render(helm, chart, defaults)
    global failures, quiet
    kept, failures, quiet = failures, [], True
    for o in base:
        if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "purelb-agent":
            o["rules"][0]["verbs"].append("update")  # an extra verb
        if o["kind"] == "Deployment":
            o["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]
            o["spec"]["template"]["spec"]["containers"][0]["securityContext"]["bogusField"] = True
        if o["kind"] == "DaemonSet":
            o["spec"]["template"]["spec"]["hostPID"] = True
    check_rbac("tampered", base, documented)
    check_set("tampered", base, defaults)
    validate("tampered", [o for o in base if o["kind"] == "Deployment"], set())
    # BGP: the password Secret mounted into the agent container too, BIRD with NET_ADMIN.
    bgp_values = VALUE_SETS["bgp"]
    for o in render(helm, chart, bgp_values):
        if o["kind"] == "DaemonSet":
            pod = o["spec"]["template"]["spec"]
            pod["containers"][0]["volumeMounts"].append({"name": "bird-passwords", "mountPath": "/x"})
            pod["containers"][1]["securityContext"]["capabilities"]["add"].append("NET_ADMIN")
            check_agent("tampered-bgp", pod)
    caught, failures, quiet = failures, kept, False
    for what in (
        "RBAC ClusterRole//purelb-agent",
        "adds capabilities",
        "hostPID",
        "bogusField",
        "mounted into a purelb container",
        "tampered-bgp/bird: capabilities added",
    ):
        if not any(what in f for f in caught):
            fail(f"self-test: the checks do not catch a tampered chart ({what})")
    print(f"== self-test: {len(caught)} expected failures caught on a tampered copy (extra verb, added capability, hostPID, unknown field, BGP Secret in the agent, BIRD capability)")

    files = generated(render(helm, chart, deep_merge(defaults, INSTALL_VALUES)))
    for path, text in files.items():
        rel = path.relative_to(ROOT)
        if write:
            path.write_text(text)
            print(f"wrote {rel}")
        elif not path.exists() or path.read_text() != text:
            fail(f"{rel} is stale or missing: run scripts/chart-check.py --write (or `just chart-write`)")
        else:
            print(f"== {rel} is current")

    if failures:
        print(f"\nchart check: {len(failures)} failure(s)")
        return 1
    print("\nchart check: all passed")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
