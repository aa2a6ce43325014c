//! `purelb reconcile` in the network-namespace lab, as root: the real binary runs inside a node's
//! namespace against the API emulator with `--authorize rbac`, as the agent's ServiceAccount
//! (`manifests/rbac.yaml`) and as an identity holding only the read verbs of the agent's rules.
//!
//! One lab (3 nodes, allocator and agents with 2 s leases) covers: dry-run reports and removes
//! nothing; the real run removes the orphans (a deleted Service's address, a marked copy of an
//! address another node is elected for) while the addresses the node should hold and an
//! administrator's unmarked address in the pool range stay; `--exit-code` 3 and 0; JSON parsed
//! and checked; the node's own Lease missing (an init container before the agent) does not make
//! it drop what it will win; a forbidden identity gets a clear error; `--all --dry-run` works
//! without any kubeconfig. `--all` removal is tested in `tests/reconcile.rs` (private namespaces).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use purelb::{
    api::contract,
    core::{
        election,
        netlink::{AddressManager, AddressSpec},
    },
    k8s_openapi::api::{coordination::v1::Lease, core::v1::Service},
    kube::{Api, api::DeleteParams},
};
use purelb_e2e::{
    apiserver::write_kubeconfig,
    lab::{self, Lab, LabOptions, cluster, topology, wait_for},
};
use serde_json::{Value, json};

const LAB_BIN: &str = env!("CARGO_BIN_EXE_purelb-lab");
const NAMESPACE: &str = "purelb-system";

const GROUPS: &str = "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: local, namespace: purelb-system}
spec:
  local:
    v4pool: {subnet: 192.0.2.0/24, pool: 192.0.2.240/29}
---
apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: remote, namespace: purelb-system}
spec:
  remote:
    v4pool: {subnet: 198.51.100.0/24, pool: 198.51.100.16/28, aggregation: /28}
";

fn service_yaml(name: &str, group: &str, address: Option<IpAddr>) -> String {
    let addresses = address.map(|a| format!(", purelb.io/addresses: \"{a}\"")).unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  annotations: {{purelb.io/service-group: {group}{addresses}}}
spec:
  type: LoadBalancer
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: 80, targetPort: 80}}
"
    )
}

async fn address_of(lab: &Lab, name: &str) -> IpAddr {
    let services: Api<Service> = Api::namespaced(lab.client(), "default");
    wait_for(Duration::from_secs(20), || async {
        let svc = services.get(name).await.ok()?;
        svc.status?.load_balancer?.ingress?.iter().find_map(|i| i.ip.as_deref()?.parse().ok())
    })
    .await
    .unwrap_or_else(|| panic!("the allocator gave {name} no address"))
}

async fn wait_holders(lab: &Lab, addr: IpAddr, want: &[&str]) {
    let got = wait_for(Duration::from_secs(20), || async { (lab.holders(addr).ok()? == want).then_some(()) }).await;
    assert!(got.is_some(), "{addr}: holders {:?}, want {want:?}", lab.holders(addr).unwrap());
}

/// Whether `node` has `addr` on `dev`.
fn has(lab: &Lab, node: &str, dev: &str, addr: IpAddr) -> bool {
    let netns = lab.host(node).unwrap().netns.clone();
    lab::netns::addresses(&netns).unwrap().iter().any(|(link, a)| link == dev && *a == addr)
}

/// Runs `purelb reconcile <args>` inside `node`; (exit status, stdout, stderr).
fn reconcile(lab: &Lab, node: &str, kubeconfig: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let bin = purelb_bin();
    let mut argv: Vec<String> = Vec::new();
    // `env -u` so that no KUBECONFIG of the caller leaks in; without --kubeconfig none is found.
    argv.extend(["-u", "KUBECONFIG", "-u", "NODE_NAME", "-u", "RUST_LOG"].map(str::to_owned));
    argv.push(bin.display().to_string());
    argv.push("reconcile".to_owned());
    if let Some(path) = kubeconfig {
        argv.extend(["--kubeconfig".to_owned(), path.display().to_string()]);
    }
    argv.extend(["--namespace".to_owned(), NAMESPACE.to_owned()]);
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = lab.exec(node, "env", &argv).unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// (interface, address with prefix, reason) of every orphan in a JSON report.
fn orphans(report: &Value) -> BTreeSet<(String, String, String)> {
    report["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let s = |k: &str| o[k].as_str().unwrap_or_default().to_owned();
            (s("interface"), s("address"), s("reason"))
        })
        .collect()
}

/// (interface, address with prefix) of every kept address in a JSON report.
fn kept(report: &Value) -> BTreeSet<(String, String)> {
    report["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["interface"].as_str().unwrap().to_owned(), o["address"].as_str().unwrap().to_owned()))
        .collect()
}

/// Adds `addr/24` with PureLB's mark on `eth0` of `node`, as an agent would have.
fn add_marked(lab: &Lab, node: &str, addr: IpAddr) {
    let netns = lab.host(node).unwrap().netns.clone();
    lab::netns::in_netns(&netns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let mgr = AddressManager::new().map_err(std::io::Error::other)?;
            let spec = AddressSpec::new("eth0", addr, 24).noprefixroute().lifetimes(300, 300);
            mgr.add_or_replace(&spec).await.map(|_| ()).map_err(std::io::Error::other)
        })
    })
    .unwrap();
}

/// A token for `system:serviceaccount:purelb-system:<account>` (RBAC bindings decide the rest).
async fn add_token(lab: &Lab, account: &str) -> String {
    let token = format!("reconcile-test-{account}-{}", std::process::id());
    let body = json!({"token": token, "user": format!("system:serviceaccount:{NAMESPACE}:{account}")});
    let request = http::Request::post("/_emulator/tokens")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body.to_string().into_bytes())
        .unwrap();
    lab.client().request_text(request).await.unwrap();
    token
}

/// The agent's rules from `manifests/rbac.yaml` with only their read verbs (get, list, watch),
/// bound to `account`: what reconcile may use.
async fn bind_read_only_agent_rules(lab: &Lab, account: &str) {
    let read = ["get", "list", "watch"];
    for document in serde_yaml_ng::Deserializer::from_str(cluster::RBAC_YAML) {
        let object: Value = serde::Deserialize::deserialize(document).unwrap();
        let kind = object["kind"].as_str().unwrap_or_default();
        if !(matches!(kind, "ClusterRole" | "Role") && object["metadata"]["name"] == "purelb-agent") {
            continue;
        }
        let rules: Vec<Value> = object["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|rule| {
                let verbs: Vec<&str> =
                    rule["verbs"].as_array()?.iter().filter_map(Value::as_str).filter(|v| read.contains(v)).collect();
                (!verbs.is_empty()).then(|| {
                    let mut rule = rule.clone();
                    rule["verbs"] = json!(verbs);
                    rule
                })
            })
            .collect();
        let name = format!("{account}-read-only");
        let mut role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name}, "rules": rules});
        let (binding_kind, mut binding) = if kind == "Role" {
            role["metadata"]["namespace"] = json!(NAMESPACE);
            ("RoleBinding", json!({"metadata": {"name": name, "namespace": NAMESPACE}}))
        } else {
            ("ClusterRoleBinding", json!({"metadata": {"name": name}}))
        };
        binding["apiVersion"] = json!("rbac.authorization.k8s.io/v1");
        binding["kind"] = json!(binding_kind);
        binding["roleRef"] = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name});
        binding["subjects"] = json!([{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]);
        cluster::apply_value(&lab.client(), role).await.unwrap();
        cluster::apply_value(&lab.client(), binding).await.unwrap();
    }
}

async fn kubeconfig_for(lab: &Lab, account: &str) -> PathBuf {
    let token = add_token(lab, account).await;
    let path = lab.dir().join(format!("{account}.kubeconfig"));
    let url = format!("http://{}", topology::api_addr_in_lab());
    write_kubeconfig(&path, &url, Some(&token), NAMESPACE).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_removes_orphans_keeps_held_and_admin_addresses_under_rbac() {
    let mut options = LabOptions::new(&prefix("rcn"), 3)
        .lab_bin(LAB_BIN)
        .purelb_bin(purelb_bin())
        .ready_timeout(Duration::from_secs(30));
    options.agent_args = ["--lease-duration=2s", "--renew-interval=500ms", "--orphan-sweep-interval=2s"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let lab = Lab::start(options).await.unwrap();
    for (name, status) in lab.process_status() {
        assert!(status.is_running(), "{name}: {status:?}\n{}", lab.log_tail(&name, 30).unwrap_or_default());
    }
    let names = lab.node_names();
    let nodes: Vec<&str> = names.iter().map(String::as_str).collect();
    // Addresses chosen by the hash (fixed for n1..n3): X wins `gone` and `mine`, another node
    // wins `other`; `admin` is an unused pool address.
    let pool: Vec<IpAddr> = (240..=247_u8).map(|last| IpAddr::from([192, 0, 2, last])).collect();
    let gone = pool[0];
    let x = election::elect(nodes.iter().copied(), gone).unwrap().to_owned();
    let mine = *pool[1..].iter().find(|a| election::elect(nodes.iter().copied(), **a) == Some(x.as_str())).unwrap();
    let other = *pool[1..].iter().find(|a| election::elect(nodes.iter().copied(), **a) != Some(x.as_str())).unwrap();
    let w = election::elect(nodes.iter().copied(), other).unwrap().to_owned();
    let admin = *pool.iter().rev().find(|a| ![gone, mine, other].contains(a)).unwrap();

    lab.apply_yaml(GROUPS).await.unwrap();
    for (name, group, address) in [
        ("gone", "local", Some(gone)),
        ("mine", "local", Some(mine)),
        ("other", "local", Some(other)),
        ("routed", "remote", None),
    ] {
        lab.apply_yaml(&service_yaml(name, group, address)).await.unwrap();
    }
    for (name, want) in [("gone", gone), ("mine", mine), ("other", other)] {
        assert_eq!(address_of(&lab, name).await, want, "{name}");
    }
    let routed = address_of(&lab, "routed").await;
    wait_holders(&lab, gone, &[x.as_str()]).await;
    wait_holders(&lab, mine, &[x.as_str()]).await;
    wait_holders(&lab, other, &[w.as_str()]).await;
    wait_holders(&lab, routed, &nodes).await;

    // X's agent dies; meanwhile an administrator adds an address in the pool range, a marked
    // copy of `other` is left on X, `gone` is deleted, and X's Lease goes away (as before the
    // agent's first start: reconcile as an init container must still keep what X will win).
    lab.exec_ok(&x, "ip", &["addr", "add", &format!("{admin}/24"), "dev", "eth0"]).unwrap();
    lab.kill_agent(&x).unwrap();
    add_marked(&lab, &x, other);
    let services: Api<Service> = Api::namespaced(lab.client(), "default");
    services.delete("gone", &DeleteParams::default()).await.unwrap();
    let deleted =
        wait_for(Duration::from_secs(10), || async { services.get_opt("gone").await.ok()?.is_none().then_some(()) });
    assert!(deleted.await.is_some(), "Service gone was not deleted");
    let leases: Api<Lease> = Api::namespaced(lab.client(), NAMESPACE);
    leases.delete(&contract::node_lease_name(&x), &DeleteParams::default()).await.unwrap();
    for addr in [gone, mine, other, routed, admin] {
        assert!(lab.holders(addr).unwrap().contains(&x), "{addr} should still be on {x} before reconcile");
    }

    let agent_kubeconfig = lab.dir().join(format!("{}.kubeconfig", lab::agent_name(&x)));
    let as_agent = Some(agent_kubeconfig.as_path());
    let want_orphans: BTreeSet<(String, String, String)> = [
        ("eth0".to_owned(), format!("{gone}/24"), "service deleted".to_owned()),
        ("eth0".to_owned(), format!("{other}/24"), "not elected".to_owned()),
    ]
    .into_iter()
    .collect();
    let want_kept: BTreeSet<(String, String)> =
        [("eth0".to_owned(), format!("{mine}/24")), ("kube-lb0".to_owned(), format!("{routed}/28"))]
            .into_iter()
            .collect();

    // Dry run, JSON, --exit-code: 3, everything reported, nothing removed.
    let (code, out, err) =
        reconcile(&lab, &x, as_agent, &["--node-name", &x, "--dry-run", "--output", "json", "--exit-code"]);
    assert_eq!(code, 3, "stdout:\n{out}\nstderr:\n{err}");
    let report = json_of(&out);
    assert_eq!(
        (report["mode"].as_str(), report["node"].as_str(), report["dryRun"].as_bool()),
        (Some("node"), Some(x.as_str()), Some(true))
    );
    assert_eq!(orphans(&report), want_orphans, "{report:#}");
    assert!(report["orphans"].as_array().unwrap().iter().all(|o| o["removed"] == false));
    let not_elected = report["orphans"].as_array().unwrap().iter().find(|o| o["reason"] == "not elected").unwrap();
    assert!(not_elected["detail"].as_str().unwrap().contains(&format!("node {w} is elected")), "{not_elected}");
    assert_eq!(kept(&report), want_kept, "{report:#}");
    for addr in [gone, other] {
        assert!(has(&lab, &x, "eth0", addr), "a dry run removed {addr}");
    }

    // Dry run as text, without --exit-code: status 0.
    let (code, out, err) = reconcile(&lab, &x, as_agent, &["--node-name", &x, "--dry-run"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(&format!("would remove {gone}/24 from eth0: service deleted")), "{out}");
    assert!(out.contains(&format!("would remove {other}/24 from eth0: not elected")), "{out}");
    assert!(out.lines().last().unwrap().contains("2 orphaned addresses found, none removed (dry run)"), "{out}");

    // The real run: the orphans go, the rest stays.
    let (code, out, err) = reconcile(&lab, &x, as_agent, &["--node-name", &x, "--exit-code"]);
    assert_eq!(code, 3, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(&format!("removed {gone}/24 from eth0: service deleted")), "{out}");
    assert!(out.lines().last().unwrap().contains("2 orphaned addresses found, 2 removed; 2 PureLB addresses"), "{out}");
    assert!(!has(&lab, &x, "eth0", gone), "the deleted Service's address is still on {x}");
    assert!(!has(&lab, &x, "eth0", other), "the address {w} is elected for is still on {x}");
    assert!(has(&lab, &x, "eth0", mine), "{x} will win {mine} once its agent runs: it must stay");
    assert!(has(&lab, &x, "kube-lb0", routed), "the remote address must stay");
    assert!(has(&lab, &x, "eth0", admin), "the administrator's unmarked address must stay");
    assert!(lab.holders(other).unwrap().contains(&w), "other nodes are not touched");

    // Nothing left: status 0, an empty orphan list.
    let (code, out, err) = reconcile(&lab, &x, as_agent, &["--node-name", &x, "--output", "json", "--exit-code"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let report = json_of(&out);
    assert!(orphans(&report).is_empty(), "{report:#}");
    assert_eq!(kept(&report), want_kept);

    // Only the read verbs of the agent's rules are needed.
    bind_read_only_agent_rules(&lab, "reconcile-reader").await;
    let reader = kubeconfig_for(&lab, "reconcile-reader").await;
    let (code, out, err) = reconcile(&lab, &x, Some(&reader), &["--node-name", &x, "--dry-run", "--exit-code"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    // An identity without those rules gets one clear error and nothing happens.
    let nobody = kubeconfig_for(&lab, "reconcile-nobody").await;
    let (code, out, err) = reconcile(&lab, &x, Some(&nobody), &["--node-name", &x, "--exit-code"]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.is_empty(), "{out}");
    for needle in ["forbidden", "docs/rbac.md", "nothing was removed"] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    // A wrong --node-name is refused rather than trusted.
    let (code, _, err) = reconcile(&lab, &x, as_agent, &["--node-name", "no-such-node", "--exit-code"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("there is no Node named \"no-such-node\""), "{err}");
    assert!(has(&lab, &x, "eth0", mine));

    // --all needs no kubeconfig at all (dry run here; removal is in tests/reconcile.rs).
    let (code, out, err) = reconcile(&lab, &x, None, &["--all", "--dry-run", "--output", "json", "--exit-code"]);
    assert_eq!(code, 3, "stdout:\n{out}\nstderr:\n{err}");
    let report = json_of(&out);
    let all: BTreeSet<(String, String, String)> = [
        ("eth0".to_owned(), format!("{mine}/24"), "--all".to_owned()),
        ("kube-lb0".to_owned(), format!("{routed}/28"), "--all".to_owned()),
    ]
    .into_iter()
    .collect();
    assert_eq!(orphans(&report), all, "{report:#}");
    assert!(report["links"].as_array().unwrap().is_empty(), "the lab's kube-lb0 bridge is not PureLB's: {report:#}");
    assert!(has(&lab, &x, "eth0", mine) && has(&lab, &x, "kube-lb0", routed));
}

fn purelb_bin() -> PathBuf {
    lab::built_binary("purelb", &["debug", "release"])
        .expect("build the purelb binary first: cargo build -p purelb --bin purelb")
}

/// Namespace prefix unique to this process and test; also removes labs of dead test runs.
fn prefix(tag: &str) -> String {
    lab::test_prefix("pla", tag)
}
