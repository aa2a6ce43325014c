//! `purelb migrate` end to end (issue 19): the source's CRDs and objects in the lab's API
//! emulator, 50 Services with addresses in their status and the source's annotations (as the
//! source left them), then `purelb migrate ... --apply`, then PureLB's allocator starts (the
//! agents run): every Service keeps its address, every address is announced (the Service's
//! `purelb.io/Announced` condition and one node's kernel), no Service is reallocated, and a
//! second `--apply` changes nothing. For MetalLB, the Go PureLB v1 and the Go PureLB v0.17 (v2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use purelb::{
    k8s_openapi::api::core::v1::{Event, Service},
    kube::{
        Api, Client,
        api::{DeleteParams, Patch, PatchParams},
    },
};
use purelb_e2e::lab::{self, Lab, LabOptions, cluster::apply_value, wait_for};
use serde_json::{Value, json};

const LAB_BIN: &str = env!("CARGO_BIN_EXE_purelb-lab");
const SERVICES: usize = 50;

fn purelb_bin() -> PathBuf {
    lab::built_binary("purelb", &["debug", "release"])
        .expect("build the purelb binary first: cargo build -p purelb --bin purelb")
}

/// A lab whose allocator is stopped (the source still "owns" the Services); agents run.
async fn start(tag: &str) -> Lab {
    let mut options = LabOptions::new(&lab::test_prefix("plm", tag), 3)
        .lab_bin(LAB_BIN)
        .purelb_bin(purelb_bin())
        .ready_timeout(Duration::from_secs(30));
    options.agent_args = ["--lease-duration=2s", "--renew-interval=500ms"].iter().map(|s| (*s).to_owned()).collect();
    options.allocator_args = ["--lease-duration=4s", "--renew-interval=1s"].iter().map(|s| (*s).to_owned()).collect();
    let lab = Lab::start(options).await.unwrap();
    for name in lab.allocator_names() {
        lab.kill(&name).unwrap();
    }
    lab
}

/// A CRD that keeps whatever it is given (the source's own schema does not matter here).
fn crd(group: &str, plural: &str, kind: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"name": v, "served": true, "storage": i == 0,
                   "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}})
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind, "listKind": format!("{kind}List")},
                 "versions": versions}
    })
}

async fn apply_all(client: &Client, objects: &[Value]) {
    for o in objects {
        apply_value(client, o.clone()).await.unwrap_or_else(|e| panic!("{o}: {e}"));
    }
}

/// `SERVICES` Services in `default` with `annotations(i)` and the address `192.0.2.(200 + i)` in
/// their status (as the source wrote it); returns the addresses by name.
async fn services(
    client: &Client,
    class: Option<&str>,
    annotations: impl Fn(usize) -> Value,
) -> BTreeMap<String, IpAddr> {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut want = BTreeMap::new();
    for i in 0..SERVICES {
        let name = format!("svc-{i:02}");
        let ip: IpAddr = format!("192.0.2.{}", 200 + i).parse().unwrap();
        let mut spec =
            json!({"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"name": "http", "port": 80}]});
        if let Some(c) = class {
            spec["loadBalancerClass"] = json!(c);
        }
        apply_value(
            client,
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": name, "namespace": "default", "annotations": annotations(i)}, "spec": spec}),
        )
        .await
        .unwrap();
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string()}]}}})),
        )
        .await
        .unwrap();
        want.insert(name, ip);
    }
    want
}

fn migrate(lab: &Lab, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(purelb_bin())
        .arg("migrate")
        .args(args)
        .arg("--kubeconfig")
        .arg(lab.kubeconfig())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// After the migration: the allocator starts; every Service keeps its address, is announced
/// (condition and kernel), nothing is reallocated; a second apply changes nothing.
async fn check_takeover(lab: &Lab, want: &BTreeMap<String, IpAddr>, second: &[&str]) {
    let started = Instant::now();
    for name in lab.allocator_names() {
        lab.restart(&name).unwrap();
    }
    let api: Api<Service> = Api::namespaced(lab.client(), "default");
    let all_announced = wait_for(Duration::from_secs(60), || async {
        let list = api.list(&Default::default()).await.ok()?;
        let announced = list
            .items
            .iter()
            .filter(|s| {
                s.status
                    .as_ref()
                    .and_then(|st| st.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "purelb.io/Announced" && c.status == "True"))
            })
            .count();
        (announced == want.len()).then_some(())
    })
    .await;
    assert!(all_announced.is_some(), "not every Service is announced within 60 s");
    eprintln!("MEASURE allocator start -> {} Services announced: {:?}", want.len(), started.elapsed());
    for (name, ip) in want {
        let svc = api.get(name).await.unwrap();
        let ingress: Vec<String> = svc
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip)
            .collect();
        assert_eq!(ingress, [ip.to_string()], "{name} changed its address");
        let annotations = svc.metadata.annotations.unwrap_or_default();
        assert_eq!(annotations.get("purelb.io/allocated-by").map(String::as_str), Some("PureLB"), "{name}");
        let held = lab.holders(*ip).unwrap();
        assert_eq!(held.len(), 1, "{name} {ip}: held by {held:?}");
    }
    let events: Api<Event> = Api::namespaced(lab.client(), "default");
    let reallocated: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| matches!(e.reason.as_deref(), Some("AddressAssigned" | "AddressReleased" | "AllocationFailed")))
        .map(|e| format!("{:?}: {:?}", e.involved_object.name, e.message))
        .collect();
    assert!(reallocated.is_empty(), "Services were reallocated: {reallocated:?}");
    let (code, out, err) = migrate(lab, second);
    assert_eq!(code, 0, "second apply: {err}\n{out}");
    assert!(
        out.contains("\n0 changed,") || out.starts_with("0 changed,"),
        "the second apply changed something:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metallb_services_keep_their_addresses_through_migrate_apply() {
    let lab = start("mlb").await;
    let client = lab.client();
    let crds: Vec<Value> = [
        ("ipaddresspools", "IPAddressPool", vec!["v1beta1"]),
        ("l2advertisements", "L2Advertisement", vec!["v1beta1"]),
        ("bgpadvertisements", "BGPAdvertisement", vec!["v1beta1"]),
        ("bgppeers", "BGPPeer", vec!["v1beta2", "v1beta1"]),
        ("bfdprofiles", "BFDProfile", vec!["v1beta1"]),
        ("communities", "Community", vec!["v1beta1"]),
    ]
    .iter()
    .map(|(plural, kind, versions)| crd("metallb.io", plural, kind, versions))
    .collect();
    apply_all(&client, &crds).await;
    apply_all(
        &client,
        &[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "metallb-system"}}),
            json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                   "metadata": {"name": "lan", "namespace": "metallb-system"},
                   "spec": {"addresses": ["192.0.2.200-192.0.2.254"]}}),
            json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
                   "metadata": {"name": "lan", "namespace": "metallb-system"}, "spec": {"ipAddressPools": ["lan"]}}),
        ],
    )
    .await;
    // As MetalLB leaves them: the pool it allocated from; every fifth pinned; pairs sharing.
    let want = services(&client, None, |i| {
        let mut a = json!({"metallb.universe.tf/ip-allocated-from-pool": "lan"});
        if i % 5 == 0 {
            a["metallb.io/loadBalancerIPs"] = json!(format!("192.0.2.{}", 200 + i));
        }
        if i % 7 == 1 {
            a["metallb.universe.tf/allow-shared-ip"] = json!(format!("key-{i}"));
        }
        a
    })
    .await;
    // The dry run first: every Service kept, nothing at risk.
    let (code, out, report) = migrate(&lab, &["--from", "metallb"]);
    assert_eq!(code, 0, "{report}\n{out}");
    assert!(
        report.contains(&format!(
            "{SERVICES} Services: {SERVICES} kept, 0 kept outside ranges, 0 without an address, 0 at risk"
        )),
        "{report}"
    );
    assert!(out.contains("kind: ServiceGroup") && out.contains("name: default"), "{out}");
    let (code, out, err) = migrate(&lab, &["--from", "metallb", "--apply"]);
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(out.contains(&format!("{} changed", SERVICES + 1)), "{out}");
    check_takeover(&lab, &want, &["--from", "metallb", "--apply"]).await;
}

/// The Go PureLB's CRDs for `version`, its objects in namespace `purelb`, and its Services;
/// then the CRD swap (the Go CRDs go, PureLB's come back), as the procedure does.
async fn go_purelb(
    lab: &Lab,
    version: &str,
    group_spec: Value,
    agent_spec: Value,
    class: Option<&str>,
) -> BTreeMap<String, IpAddr> {
    let client = lab.client();
    let crds: Api<
        purelb::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(client.clone());
    let mut ours = Vec::new();
    for n in ["servicegroups.purelb.io", "lbnodeagents.purelb.io"] {
        let mut v = serde_json::to_value(crds.get(n).await.unwrap()).unwrap();
        v["metadata"] = json!({"name": n});
        v.as_object_mut().unwrap().remove("status");
        ours.push(v);
    }
    for n in ["servicegroups.purelb.io", "lbnodeagents.purelb.io"] {
        crds.delete(n, &DeleteParams::default()).await.unwrap();
    }
    apply_all(
        &client,
        &[
            crd("purelb.io", "servicegroups", "ServiceGroup", &[version]),
            crd("purelb.io", "lbnodeagents", "LBNodeAgent", &[version]),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "purelb"}}),
        ],
    )
    .await;
    let api_version = format!("purelb.io/{version}");
    apply_all(
        &client,
        &[
            json!({"apiVersion": api_version, "kind": "ServiceGroup", "metadata": {"name": "default", "namespace": "purelb"}, "spec": group_spec}),
            json!({"apiVersion": api_version, "kind": "LBNodeAgent", "metadata": {"name": "default", "namespace": "purelb"}, "spec": agent_spec}),
        ],
    )
    .await;
    let want = services(&client, class, |i| {
        let mut a = json!({"purelb.io/allocated-by": "PureLB", "purelb.io/allocated-from": "default"});
        if i % 5 == 0 {
            a["purelb.io/addresses"] = json!(format!("192.0.2.{}", 200 + i));
        }
        a
    })
    .await;
    // Before the swap: the conversion (and a backup of the source objects for after it).
    let (code, converted, report) = migrate(lab, &["--from", "purelb"]);
    assert_eq!(code, 0, "{report}\n{converted}");
    assert!(report.contains(&format!("{SERVICES} kept")), "{report}");
    let backup = lab.scratch_dir().unwrap().join(format!("go-purelb-{version}.yaml"));
    let objects = [
        json!({"apiVersion": api_version, "kind": "ServiceGroup", "metadata": {"name": "default", "namespace": "purelb"}, "spec": group_spec_of(&client, &api_version).await}),
        json!({"apiVersion": api_version, "kind": "LBNodeAgent", "metadata": {"name": "default", "namespace": "purelb"}, "spec": agent_spec}),
    ];
    let text: String = objects.iter().map(|o| format!("---\n{}", serde_yaml_ng::to_string(o).unwrap())).collect();
    std::fs::write(&backup, text).unwrap();
    // The swap: the Go CRDs (and their objects) go, PureLB's come.
    for n in ["servicegroups.purelb.io", "lbnodeagents.purelb.io"] {
        crds.delete(n, &DeleteParams::default()).await.unwrap();
    }
    apply_all(&client, &ours).await;
    let (code, out, err) = migrate(lab, &["--from", "purelb", "-f", backup.to_str().unwrap(), "--apply"]);
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(out.contains("applied   ServiceGroup purelb-system/default"), "{out}");
    want
}

/// The stored spec of the Go PureLB's group `default` (read back, as a backup would be).
async fn group_spec_of(client: &Client, api_version: &str) -> Value {
    let (group, version) = api_version.split_once('/').unwrap();
    let ar = purelb::kube::api::ApiResource::from_gvk_with_plural(
        &purelb::kube::api::GroupVersionKind::gvk(group, version, "ServiceGroup"),
        "servicegroups",
    );
    let api: Api<purelb::kube::api::DynamicObject> = Api::namespaced_with(client.clone(), "purelb", &ar);
    api.get("default").await.unwrap().data["spec"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_purelb_v1_services_keep_their_addresses_through_migrate_apply() {
    let lab = start("gv1").await;
    let want = go_purelb(
        &lab,
        "v1",
        json!({"local": {"subnet": "192.0.2.0/24", "pool": "192.0.2.200-192.0.2.254", "aggregation": "default"}}),
        json!({"local": {"localint": "default", "extlbint": "kube-lb0", "sendgarp": true}}),
        None,
    )
    .await;
    let backup = lab.scratch_dir().unwrap().join("go-purelb-v1.yaml");
    check_takeover(&lab, &want, &["--from", "purelb", "-f", backup.to_str().unwrap(), "--apply"]).await;
    // The backup goes with the lab: a passing run leaves no directory behind.
    let dir = lab.dir().to_owned();
    lab.shutdown().unwrap();
    assert!(!dir.exists(), "{} is left", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_purelb_v017_services_keep_their_addresses_through_migrate_apply() {
    let lab = start("gv2").await;
    let want = go_purelb(
        &lab,
        "v2",
        json!({"local": {"v4pools": [{"subnet": "192.0.2.0/24", "pool": "192.0.2.200-192.0.2.254"}], "multiPool": false}}),
        json!({"local": {"localInterface": "default", "garpConfig": {"enabled": true, "count": 2}}}),
        Some("purelb.io/purelbv2"),
    )
    .await;
    let backup = lab.scratch_dir().unwrap().join("go-purelb-v2.yaml");
    check_takeover(&lab, &want, &["--from", "purelb", "-f", backup.to_str().unwrap(), "--apply"]).await;
}

/// Bad input: each problem is a report line, nothing is applied (exit 3) unless forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_and_nothing_is_applied() {
    use purelb::kube::CustomResourceExt;
    use purelb_e2e::apiserver::{Emulator, EmulatorOptions, write_kubeconfig};

    let emulator = Emulator::start(EmulatorOptions::default()).unwrap();
    let server = emulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let admin = emulator.client(None);
    for crd in [purelb::api::ServiceGroup::crd(), purelb::api::LBNodeAgent::crd(), purelb::api::BGPPeer::crd()] {
        apply_value(&admin, serde_json::to_value(crd).unwrap()).await.unwrap();
    }
    let dir = std::env::temp_dir().join(format!("purelb-migrate-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &server.url(), None, "default").unwrap();
    let input = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/migrate/metallb/17-bad-input/input.yaml");
    let run = |extra: &[&str]| {
        let out = Command::new(purelb_bin())
            .args(["migrate", "--from", "metallb", "-f", input, "--apply", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&[]);
    assert_eq!(code, Some(3), "{err}\n{out}");
    for line in [
        "ERROR IPAddressPool broken: spec.addresses[0]",
        "overlaps",
        "ERROR Service default/lost: address-pool: names pool \"nonexistent\"",
        "nothing applied: 1 Service(s) at risk, 4 error(s)",
    ] {
        assert!(err.contains(line), "{line:?} missing:\n{err}");
    }
    let groups = emulator.objects("purelb.io", "servicegroups", None);
    assert!(groups.is_empty(), "something was applied: {groups:?}");
    // Forced: written as converted (the allocator then marks the broken groups Invalid, with
    // the same messages as the report).
    let (code, out, err) = run(&["--allow-changes"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("applied   ServiceGroup purelb-system/b"), "{out}");
    assert_eq!(emulator.objects("purelb.io", "servicegroups", None).len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}
