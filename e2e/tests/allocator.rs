//! The allocator controller against the in-process API emulator: assignment, status and
//! annotations, events, ServiceGroup status, release, restart without address changes,
//! adoption of Go PureLB Services, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeMap, time::Duration};

use purelb::{
    allocator::controller::{self, Settings, WriteGate},
    api::ServiceGroup,
    k8s_openapi::{
        api::core::v1::{Event, Namespace, Service},
        apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    },
    kube::{
        Api, Client, CustomResourceExt, ResourceExt,
        api::{ListParams, Patch, PatchParams, PostParams},
    },
    telemetry::Readiness,
};
use purelb_e2e::apiserver::{Emulator, EmulatorOptions};
use serde_json::{Value, json};

const NS: &str = "purelb-system";

async fn setup() -> (Emulator, Client) {
    setup_version("v1.33.0").await
}

/// An emulator of Kubernetes `version` (e.g. `v1.28.0`) with the CRDs and namespaces.
async fn setup_version(version: &str) -> (Emulator, Client) {
    let emulator =
        Emulator::start(EmulatorOptions { version: version.to_owned(), ..EmulatorOptions::default() }).unwrap();
    let client = emulator.client(None);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [ServiceGroup::crd(), purelb::api::LBNodeAgent::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let ns: Api<Namespace> = Api::all(client.clone());
    for name in [NS, "web", "shop"] {
        ns.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
            .await
            .unwrap();
    }
    (emulator, client)
}

fn start_allocator(client: Client) -> (tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let settings = Settings {
        namespace: NS.to_owned(),
        lb_class: "purelb.io/purelbv2".to_owned(),
        default_announcer: true,
        instance: "test".to_owned(),
        api_timeout: Duration::from_secs(10),
    };
    let task = tokio::spawn(async move {
        controller::run(client, settings, WriteGate::always(), Readiness::new(), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (task, tx)
}

async fn group(client: &Client, name: &str, spec: Value) {
    let api: Api<ServiceGroup> = Api::namespaced(client.clone(), NS);
    let sg: ServiceGroup = serde_json::from_value(
        json!({"apiVersion": "purelb.io/v2", "kind": "ServiceGroup", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap();
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&sg)).await.unwrap();
}

fn local(v4: &str) -> Value {
    json!({"local": {"v4pool": {"pool": v4, "subnet": "192.0.2.0/24"}, "v6pool": {"pool": "2001:db8::f0/124", "subnet": "2001:db8::/64"}}})
}

async fn create_svc(client: &Client, ns: &str, name: &str, annotations: Value, extra_spec: Value) {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let mut spec = json!({"type": "LoadBalancer", "ports": [{"port": 80}]});
    json_patch::merge(&mut spec, &extra_spec);
    let svc: Service =
        serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}, "spec": spec})).unwrap();
    api.create(&PostParams::default(), &svc).await.unwrap();
}

fn ingress(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn addresses_of(client: &Client, ns: &str, name: &str, n: usize) -> Vec<String> {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("{ns}/{name} to get {n} addresses"), async || {
        let svc = api.get(name).await.ok()?;
        let ips = ingress(&svc);
        (ips.len() == n).then_some(ips)
    })
    .await
}

async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigns_writes_status_annotations_events_and_group_status() {
    let (_emu, client) = setup().await;
    group(&client, "default", local("192.0.2.240/29")).await;
    let (_task, _stop) = start_allocator(client.clone());
    create_svc(&client, "web", "a", json!({}), json!({})).await;
    // One at a time: two Services created together are allocated in whichever order the work
    // queue hands them out, and this test names the address each one gets.
    assert_eq!(addresses_of(&client, "web", "a", 1).await, ["192.0.2.240"]);
    create_svc(
        &client,
        "web",
        "dual",
        json!({}),
        json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
    )
    .await;
    assert_eq!(addresses_of(&client, "web", "dual", 2).await, ["192.0.2.241", "2001:db8::f0"]);
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    let a = api.get("a").await.unwrap();
    let ann: BTreeMap<String, String> = a.annotations().clone();
    assert_eq!(ann.get("purelb.io/allocated-by").map(String::as_str), Some("PureLB"));
    assert_eq!(ann.get("purelb.io/allocated-from").map(String::as_str), Some("default"));
    assert_eq!(ann.get("purelb.io/pool-type").map(String::as_str), Some("local"));
    let raw: Value = serde_json::to_value(&a).unwrap();
    assert_eq!(raw["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP", "emulator reports 1.33, so ipMode is set");
    let events = wait_for("AddressAssigned event", async || {
        let e = events_for(&client, "web", "a").await;
        e.iter().any(|(r, _)| r == "AddressAssigned").then_some(e)
    })
    .await;
    assert!(
        events.iter().any(|(r, m)| r == "AddressAssigned" && m.contains("192.0.2.240") && m.contains("default")),
        "{events:?}"
    );
    let sgs: Api<ServiceGroup> = Api::namespaced(client.clone(), NS);
    let status = wait_for("group status", async || {
        let s = sgs.get("default").await.ok()?.status?;
        (s.allocated_ipv4 == Some(2)).then_some(s)
    })
    .await;
    assert_eq!(status.allocated_ipv6, Some(1));
    assert_eq!(status.available_ipv4.as_deref(), Some("6"));
    assert_eq!(status.available_ipv6.as_deref(), Some("15"));
    assert_eq!(status.pool_type.as_deref(), Some("local"));
    assert_eq!(status.conditions[0].status, "True");

    // Release on deletion: the address returns and the next Service gets it.
    api.delete("a", &Default::default()).await.unwrap();
    create_svc(&client, "web", "b", json!({}), json!({})).await;
    assert_eq!(addresses_of(&client, "web", "b", 1).await, ["192.0.2.240"]);

    // Release on type change: status and annotations removed.
    api.patch("b", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"type": "ClusterIP"}}))).await.unwrap();
    wait_for("release on type change", async || {
        let b = api.get("b").await.ok()?;
        (ingress(&b).is_empty() && !b.annotations().contains_key("purelb.io/allocated-by")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_changes_no_address_and_go_purelb_services_are_adopted() {
    let (_emu, client) = setup().await;
    group(&client, "default", json!({"local": {"v4pool": {"pool": "192.0.2.0/24", "subnet": "192.0.2.0/24"}, "v6pool": {"pool": "2001:db8::/112", "subnet": "2001:db8::/64"}}})).await;
    // 250 IPv4 Services share the /24 with the two adopted ones; 250 more are IPv6.
    let family = |i: usize| if i < 250 { json!({}) } else { json!({"ipFamilies": ["IPv6"]}) };
    // Pre-populated as the Go PureLB leaves them.
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    for (name, ip) in [("go-1", "192.0.2.7"), ("go-2", "192.0.2.0")] {
        create_svc(
            &client,
            "web",
            name,
            json!({"purelb.io/allocated-by": "PureLB", "purelb.io/allocated-from": "default"}),
            json!({}),
        )
        .await;
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})),
        )
        .await
        .unwrap();
    }
    let (task, stop) = start_allocator(client.clone());
    for i in 0..500 {
        create_svc(&client, "web", &format!("s{i}"), json!({}), family(i)).await;
    }
    let mut before = BTreeMap::new();
    for i in 0..500 {
        let name = format!("s{i}");
        let ips = addresses_of(&client, "web", &name, 1).await;
        assert!(ips[0] != "192.0.2.7" && ips[0] != "192.0.2.0", "new Services never get adopted addresses");
        before.insert(name, ips);
    }
    assert_eq!(addresses_of(&client, "web", "go-1", 1).await, ["192.0.2.7"]);
    let _ = stop.send(());
    let _ = task.await;
    // Restart with the same cluster state.
    let (_task, _stop) = start_allocator(client.clone());
    create_svc(&client, "web", "after-restart", json!({}), json!({})).await;
    let new = addresses_of(&client, "web", "after-restart", 1).await;
    assert!(!before.values().any(|v| *v == new), "a new Service after restart gets a free address, not a held one");
    for (name, ips) in &before {
        assert_eq!(&addresses_of(&client, "web", name, 1).await, ips, "{name} kept its address");
    }
    assert_eq!(addresses_of(&client, "web", "go-2", 1).await, ["192.0.2.0"]);
    let all = api.list(&ListParams::default()).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for s in &all.items {
        for ip in ingress(s) {
            assert!(seen.insert(ip.clone()), "{ip} given twice");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_events_and_status_and_hurts_nobody_else() {
    let (_emu, client) = setup().await;
    group(&client, "default", local("192.0.2.240/30")).await;
    group(&client, "broken", json!({"local": {"v4pool": {"pool": "192.0.2.20-192.0.2.10", "subnet": "192.0.2.0/24"}}}))
        .await;
    group(&client, "overlap", json!({"local": {"v4pool": {"pool": "192.0.2.241/32", "subnet": "192.0.2.0/24"}}})).await;
    let (_task, _stop) = start_allocator(client.clone());
    let hostile = "\u{0}$(reboot);\n".repeat(20);
    let cases = [
        ("bad-addr", json!({"purelb.io/addresses": "192.0.2.x"}), "purelb.io/addresses"),
        ("two-v4", json!({"purelb.io/addresses": "192.0.2.240,192.0.2.241"}), "more than one IPv4"),
        ("outside", json!({"purelb.io/addresses": "198.51.100.9"}), "not in any ServiceGroup"),
        ("unknown", json!({"purelb.io/service-group": "nope"}), "does not exist"),
        ("broken-group", json!({"purelb.io/service-group": "broken"}), "reversed"),
        ("hostile", json!({"purelb.io/service-group": hostile}), "is not a ServiceGroup name"),
    ];
    for (name, ann, _) in &cases {
        create_svc(&client, "web", name, ann.clone(), json!({})).await;
    }
    create_svc(&client, "web", "fine", json!({}), json!({})).await;
    assert_eq!(addresses_of(&client, "web", "fine", 1).await.len(), 1);
    for (name, _, want) in &cases {
        let events = wait_for(&format!("AllocationFailed on {name}"), async || {
            let e = events_for(&client, "web", name).await;
            e.iter().any(|(r, _)| r == "AllocationFailed").then_some(e)
        })
        .await;
        assert!(events.iter().any(|(r, m)| r == "AllocationFailed" && m.contains(want)), "{name}: {events:?}");
    }
    let sgs: Api<ServiceGroup> = Api::namespaced(client.clone(), NS);
    for (name, want) in [("broken", "reversed"), ("overlap", "overlaps")] {
        let status = wait_for(&format!("{name} status"), async || sgs.get(name).await.ok()?.status).await;
        let ready = &status.conditions[0];
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Invalid"));
        assert!(ready.message.contains(want), "{}", ready.message);
    }
    let default = wait_for("default status", async || sgs.get("default").await.ok()?.status).await;
    assert_eq!(default.conditions[0].status, "True", "other groups keep working");
}

fn start_replica(
    client: Client,
    identity: &str,
) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>, purelb::leader::Leadership) {
    let config = purelb::leader::LeaderConfig::new(Duration::from_secs(2), Duration::from_millis(500));
    let elector = purelb::leader::LeaderElector::new(client.clone(), NS, "purelb-allocator", identity, config).unwrap();
    let leadership = elector.leadership();
    let election = tokio::spawn(async move {
        let _ = elector.run(futures::future::pending::<()>()).await;
    });
    let gate = WriteGate::from(leadership.clone());
    let settings = Settings {
        namespace: NS.to_owned(),
        lb_class: "purelb.io/purelbv2".to_owned(),
        default_announcer: true,
        instance: identity.to_owned(),
        api_timeout: Duration::from_secs(5),
    };
    let controller = tokio::spawn(async move {
        controller::run(client, settings, gate, Readiness::new(), futures::future::pending::<()>()).await.unwrap();
    });
    (election, controller, leadership)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_standby_takes_over_and_no_address_is_given_twice() {
    let (emu, client) = setup().await;
    group(&client, "default", json!({"remote": {"v4pool": {"pool": "198.51.100.0/24", "subnet": "198.51.100.0/24"}}}))
        .await;
    let a = start_replica(emu.client(Some("replica-a")), "a");
    let b = start_replica(emu.client(Some("replica-b")), "b");
    for i in 0..100 {
        create_svc(&client, "web", &format!("s{i}"), json!({}), json!({})).await;
    }
    let mut before = BTreeMap::new();
    for i in 0..100 {
        before.insert(i, addresses_of(&client, "web", &format!("s{i}"), 1).await);
    }
    let (leader, standby) = if a.2.is_leader() { (a, b) } else { (b, a) };
    assert!(!standby.2.is_leader(), "exactly one leader");
    // Crash the leader (no release) while Services keep coming.
    leader.0.abort();
    leader.1.abort();
    let started = tokio::time::Instant::now();
    for i in 100..200 {
        create_svc(&client, "web", &format!("s{i}"), json!({}), json!({})).await;
    }
    wait_for("standby to lead", async || standby.2.is_leader().then_some(())).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took over after {took:?}");
    for i in 100..200 {
        addresses_of(&client, "web", &format!("s{i}"), 1).await;
    }
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    let mut seen = std::collections::HashSet::new();
    for s in api.list(&ListParams::default()).await.unwrap().items {
        for ip in ingress(&s) {
            assert!(seen.insert(ip.clone()), "{ip} given twice");
        }
    }
    assert_eq!(seen.len(), 200);
    for (i, ips) in before {
        assert_eq!(
            addresses_of(&client, "web", &format!("s{i}"), 1).await,
            ips,
            "s{i} kept its address across the leader change"
        );
    }
    standby.0.abort();
    standby.1.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_behaviour_through_the_controller() {
    let (_emu, client) = setup().await;
    group(&client, "default", local("192.0.2.240/31")).await;
    group(&client, "team", json!({"local": {"v4pool": {"pool": "192.0.2.10/31", "subnet": "192.0.2.0/24"}}, "namespaces": ["shop"], "enforceNamespaces": true})).await;
    let (_task, _stop) = start_allocator(client.clone());
    let api: Api<Service> = Api::namespaced(client.clone(), "web");

    // Namespace scoping: shop gets its own group; web may not use the enforcing group.
    create_svc(&client, "shop", "cart", json!({}), json!({})).await;
    assert_eq!(addresses_of(&client, "shop", "cart", 1).await, ["192.0.2.10"]);
    create_svc(&client, "web", "intruder", json!({"purelb.io/service-group": "team"}), json!({})).await;
    wait_for("namespace denied", async || {
        events_for(&client, "web", "intruder")
            .await
            .iter()
            .any(|(r, m)| r == "AllocationFailed" && m.contains("may not use it"))
            .then_some(())
    })
    .await;

    // Sharing: same key, different ports share; a port clash is refused naming the other Service.
    create_svc(&client, "web", "http", json!({"purelb.io/allow-shared-ip": "k"}), json!({"ports": [{"port": 80}]}))
        .await;
    create_svc(&client, "web", "https", json!({"purelb.io/allow-shared-ip": "k"}), json!({"ports": [{"port": 443}]}))
        .await;
    let shared = addresses_of(&client, "web", "http", 1).await;
    assert_eq!(addresses_of(&client, "web", "https", 1).await, shared);
    create_svc(&client, "web", "clash", json!({"purelb.io/allow-shared-ip": "k"}), json!({"ports": [{"port": 80}]}))
        .await;
    wait_for("port conflict", async || {
        events_for(&client, "web", "clash")
            .await
            .iter()
            .any(|(r, m)| r == "AllocationFailed" && m.contains("web/http") && m.contains("80/TCP"))
            .then_some(())
    })
    .await;

    // Exhaustion, then release, then the waiting Service gets the freed address.
    create_svc(&client, "web", "second", json!({}), json!({})).await;
    let second = addresses_of(&client, "web", "second", 1).await;
    create_svc(&client, "web", "waiting", json!({}), json!({})).await;
    wait_for("pool full", async || {
        events_for(&client, "web", "waiting")
            .await
            .iter()
            .any(|(r, m)| r == "AllocationFailed" && m.contains("no free IPv4"))
            .then_some(())
    })
    .await;
    api.delete("second", &Default::default()).await.unwrap();
    assert_eq!(addresses_of(&client, "web", "waiting", 1).await, second);

    // A live annotation change re-allocates (with events); a class change releases.
    create_svc(&client, "shop", "mover", json!({}), json!({})).await;
    assert_eq!(addresses_of(&client, "shop", "mover", 1).await, ["192.0.2.11"]);
    let shop: Api<Service> = Api::namespaced(client.clone(), "shop");
    shop.delete("cart", &Default::default()).await.unwrap();
    shop.patch(
        "mover",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"purelb.io/addresses": "192.0.2.10"}}})),
    )
    .await
    .unwrap();
    wait_for("re-allocation to the pinned address", async || {
        (ingress(&shop.get("mover").await.ok()?) == ["192.0.2.10"]).then_some(())
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = events_for(&client, "shop", "mover").await;
        if e.iter().any(|(r, m)| r == "AddressReleased" && m.contains("192.0.2.11"))
            && e.iter().filter(|(r, _)| r == "AddressAssigned").count() == 2
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "release and assign events missing: {e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A pool edit that leaves a held address outside every range: kept, warned, counted.
    group(&client, "team", json!({"local": {"v4pool": {"pool": "192.0.2.20/31", "subnet": "192.0.2.0/24"}}, "namespaces": ["shop"], "enforceNamespaces": true})).await;
    let sgs: Api<ServiceGroup> = Api::namespaced(client.clone(), NS);
    wait_for("outside count", async || {
        (sgs.get("team").await.ok()?.status?.addresses_outside_pools == Some(1)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ingress(&shop.get("mover").await.unwrap()), ["192.0.2.10"], "pool edit never moves a held address");
}

/// `ipMode` exists from 1.30 (alpha and off by default in 1.29, where a server drops it): on
/// older servers the allocator writes the address without it, and writes the status once, not
/// again on every later reconcile of the Service (it would if it kept asking for a field the
/// server drops).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_servers_before_1_30_the_status_has_no_ip_mode_and_is_written_once() {
    for (version, ip_mode) in [("v1.28.0", None), ("v1.29.0", None), ("v1.30.0", Some("VIP"))] {
        let (emulator, client) = setup_version(version).await;
        group(&client, "default", local("192.0.2.240/29")).await;
        let (task, stop) = start_allocator(client.clone());
        create_svc(&client, "web", "a", json!({}), json!({"ipFamilyPolicy": "SingleStack"})).await;
        addresses_of(&client, "web", "a", 1).await;
        let api: Api<Service> = Api::namespaced(client.clone(), "web");
        let svc = api.get("a").await.unwrap();
        let entry = &svc.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0];
        assert_eq!(entry.ip_mode.as_deref(), ip_mode, "{version}");
        let writes = || emulator.requests("patch", "services/status") + emulator.requests("update", "services/status");
        // The count once no write came for a second: on a loaded machine a reconcile that read
        // the cache before the allocator's own status write arrived may still send one, answered
        // 409 Conflict (counted as a request), after the address is visible. What this test pins
        // is a write on every later reconcile.
        let mut settled = writes();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = writes();
            if now == settled {
                break;
            }
            settled = now;
        }
        // Three unrelated changes, each a reconcile of the Service.
        for i in 0..3 {
            let patch = json!({"metadata": {"labels": {"touch": i.to_string()}}});
            api.patch("a", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(writes(), settled, "{version}: no status write after the first one");
        assert_eq!(ingress(&api.get("a").await.unwrap()).len(), 1);
        let _ = stop.send(());
        task.await.unwrap();
    }
}

/// `spec.loadBalancerIP` still pins the address (deprecated fallback, `api.md` §2), and the
/// Service gets one `DeprecationWarning` Event saying what to use instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_load_balancer_ip_pins_the_address_with_a_deprecation_event() {
    let (_emulator, client) = setup().await;
    group(&client, "default", local("192.0.2.240/29")).await;
    let (task, stop) = start_allocator(client.clone());
    create_svc(
        &client,
        "web",
        "old",
        json!({}),
        json!({"ipFamilyPolicy": "SingleStack", "loadBalancerIP": "192.0.2.243"}),
    )
    .await;
    assert_eq!(addresses_of(&client, "web", "old", 1).await, vec!["192.0.2.243".to_owned()]);
    let events = wait_for("the DeprecationWarning Event", async || {
        let events = events_for(&client, "web", "old").await;
        events.iter().any(|(reason, _)| reason == "DeprecationWarning").then_some(events)
    })
    .await;
    let (_, message) = events.iter().find(|(reason, _)| reason == "DeprecationWarning").unwrap();
    assert!(message.contains("spec.loadBalancerIP") && message.contains("purelb.io/addresses"), "{message}");
    let _ = stop.send(());
    task.await.unwrap();
}

/// Addresses that must never be handed out (issue 16 §6): a local pool reaching its subnet's
/// broadcast address skips it with one `AddressesSkipped` Warning on the group; a range made
/// only of special-purpose addresses makes the group invalid, naming the field; a pin of such
/// an address is refused with `AllocationFailed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_purpose_and_broadcast_addresses_are_never_handed_out() {
    let (emulator, client) = setup().await;
    group(&client, "edge", json!({"local": {"v4pool": {"pool": "192.0.2.248/29", "subnet": "192.0.2.0/24"}}})).await;
    group(&client, "typo", json!({"local": {"v4pool": {"pool": "224.0.0.0/30", "subnet": "224.0.0.0/24"}}})).await;
    let (task, stop) = start_allocator(client.clone());
    let one = json!({"ipFamilyPolicy": "SingleStack"});
    let edge = json!({"purelb.io/service-group": "edge"});
    let mut given = Vec::new();
    for i in 0..8 {
        create_svc(&client, "web", &format!("s{i}"), edge.clone(), one.clone()).await;
        if i < 7 {
            given.extend(addresses_of(&client, "web", &format!("s{i}"), 1).await);
        }
    }
    given.sort();
    let expected: Vec<String> = (248..=254).map(|n| format!("192.0.2.{n}")).collect();
    assert_eq!(given, expected, "192.0.2.255 (the broadcast address) is never given");
    let full = wait_for("the 8th Service to fail", async || {
        let events = events_for(&client, "web", "s7").await;
        events.into_iter().find(|(reason, _)| reason == "AllocationFailed")
    })
    .await;
    assert!(full.1.contains("no free IPv4 address"), "{full:?}");

    let sg_events = || {
        let emulator = emulator.clone();
        move || -> Vec<(String, String)> {
            emulator
                .objects("", "events", Some(NS))
                .iter()
                .filter(|e| e["involvedObject"]["kind"] == "ServiceGroup")
                .map(|e| {
                    (
                        e["reason"].as_str().unwrap_or_default().to_owned(),
                        e["message"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        }
    };
    let events = sg_events();
    let skipped = wait_for("AddressesSkipped on the group", async || {
        events().into_iter().find(|(reason, message)| reason == "AddressesSkipped" && message.contains("192.0.2.255"))
    })
    .await;
    assert!(skipped.1.contains("broadcast address of 192.0.2.0/24"), "{skipped:?}");
    let invalid = wait_for("Invalid on the typo group", async || {
        events().into_iter().find(|(reason, message)| reason == "Invalid" && message.contains("224.0.0.0/30"))
    })
    .await;
    assert!(invalid.1.contains("spec.local.v4pool.pool") && invalid.1.contains("multicast"), "{invalid:?}");
    let groups: Api<ServiceGroup> = Api::namespaced(client.clone(), NS);
    let typo = wait_for("the typo group's status", async || {
        let g = groups.get("typo").await.ok()?;
        g.status?.conditions.into_iter().find(|c| c.type_ == "Ready" && c.status == "False")
    })
    .await;
    assert!(typo.message.contains("spec.local.v4pool.pool"), "{typo:?}");

    for (name, pin) in [("pin-bcast", "192.0.2.255"), ("pin-lo", "127.0.0.1"), ("pin-mc", "ff02::1")] {
        create_svc(&client, "web", name, json!({"purelb.io/addresses": pin}), json!({})).await;
        let failed = wait_for(&format!("{name} refused"), async || {
            events_for(&client, "web", name).await.into_iter().find(|(reason, _)| reason == "AllocationFailed")
        })
        .await;
        assert!(failed.1.contains(pin) && failed.1.contains("never handed out"), "{failed:?}");
        let api: Api<Service> = Api::namespaced(client.clone(), "web");
        assert!(ingress(&api.get(name).await.unwrap()).is_empty());
    }
    // One AddressesSkipped, not one per reconcile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = sg_events()().iter().filter(|(reason, _)| reason == "AddressesSkipped").count();
    assert_eq!(count, 1);
    let _ = stop.send(());
    task.await.unwrap();
}

/// `purelb.io/announcing-IPv4` names only nodes whose Lease is live: a node that died (its
/// Lease expires, which makes no watch event) leaves the annotation within its lease duration
/// and 1 s (issue 16 §4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcing_names_only_nodes_with_a_live_lease() {
    use purelb::{
        core::election::{HeldAddress, format_announcing},
        k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp},
    };
    let (_emulator, client) = setup().await;
    group(&client, "default", local("192.0.2.240/29")).await;
    let (task, stop) = start_allocator(client.clone());
    create_svc(&client, "web", "a", json!({}), json!({"ipFamilyPolicy": "SingleStack"})).await;
    let ip: std::net::IpAddr = addresses_of(&client, "web", "a", 1).await[0].parse().unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let announcing = format_announcing(&[HeldAddress { address: ip, interface: Some("eth0".into()) }]);
    let renew = Timestamp::now().to_string();
    for (node, seconds) in [("n1", 300), ("n2", 2)] {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": format!("purelb-node-{node}"),
                         "labels": {"app.kubernetes.io/name": "purelb", "app.kubernetes.io/component": "agent"},
                         "annotations": {"purelb.io/announcing": announcing, "purelb.io/subnets": "192.0.2.0/24"}},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": seconds, "renewTime": renew}
        }))
        .unwrap();
        leases.create(&PostParams::default(), &lease).await.unwrap();
    }
    let services: Api<Service> = Api::namespaced(client.clone(), "web");
    let value =
        || async { services.get("a").await.ok()?.metadata.annotations?.get("purelb.io/announcing-IPv4").cloned() };
    wait_for("both nodes named", async || value().await.filter(|v| v.contains("n1") && v.contains("n2"))).await;
    // n2's Lease expires 2 s after its renewal; nothing else happens.
    let started = std::time::Instant::now();
    wait_for("n2 gone from the annotation", async || value().await.filter(|v| !v.contains("n2"))).await;
    assert!(started.elapsed() <= Duration::from_secs(3), "took {:?} (bound: lease 2 s + 1 s)", started.elapsed());
    assert!(value().await.unwrap().contains("n1"));
    let _ = stop.send(());
    task.await.unwrap();
}

/// The Service's `purelb.io/*` conditions, as (type, status, reason, message).
async fn purelb_conditions(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String, String)> {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = api.get(name).await.unwrap();
    svc.status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status, c.reason, c.message))
        .collect()
}

async fn node_lease(client: &Client, node: &str, subnets: &str, announcing: &str) {
    use purelb::k8s_openapi::api::coordination::v1::Lease;
    let api: Api<Lease> = Api::namespaced(client.clone(), NS);
    let now = purelb::k8s_openapi::jiff::Timestamp::now();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": format!("purelb-node-{node}"),
            "labels": {"app.kubernetes.io/name": "purelb", "app.kubernetes.io/component": "agent"},
            "annotations": {
            "purelb.io/subnets": subnets, "purelb.io/announcing": announcing}},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 60, "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()}
    }))
    .unwrap();
    api.patch(&lease.name_any(), &PatchParams::apply("test").force(), &Patch::Apply(&lease)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_conditions_follow_allocation_and_announcement_and_keep_other_conditions() {
    let (_emu, client) = setup().await;
    group(&client, "default", local("192.0.2.240/31")).await;
    let (_task, _stop) = start_allocator(client.clone());
    create_svc(&client, "web", "a", json!({}), json!({})).await;
    addresses_of(&client, "web", "a", 1).await;
    let conditions =
        async |name: &str, kind: &str| purelb_conditions(&client, "web", name).await.into_iter().find(|c| c.0 == kind);
    let allocated =
        wait_for("Allocated", async || conditions("a", "purelb.io/Allocated").await.filter(|c| c.1 == "True")).await;
    assert_eq!(allocated.2, "Allocated");
    assert!(allocated.3.contains("192.0.2.240 from ServiceGroup default"), "{allocated:?}");
    let no_agent = wait_for("Announced NoAgent", async || conditions("a", "purelb.io/Announced").await).await;
    assert_eq!((no_agent.1.as_str(), no_agent.2.as_str()), ("False", "NoAgent"), "{no_agent:?}");

    // Another controller's condition survives PureLB's writes.
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    api.patch_status(
        "a",
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [{"type": "example.com/Checked", "status": "True",
            "reason": "Fine", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})),
    )
    .await
    .unwrap();

    // An agent on another subnet: no candidate. On the right subnet, not yet holding: pending.
    node_lease(&client, "n1", "198.51.100.0/24", "").await;
    let c = wait_for("NoCandidateNode", async || {
        conditions("a", "purelb.io/Announced").await.filter(|c| c.2 == "NoCandidateNode")
    })
    .await;
    assert!(c.3.contains("192.0.2.240"), "{c:?}");
    node_lease(&client, "n2", "192.0.2.0/24", "").await;
    wait_for("Pending", async || conditions("a", "purelb.io/Announced").await.filter(|c| c.2 == "Pending")).await;
    node_lease(&client, "n2", "192.0.2.0/24", "192.0.2.240%eth0").await;
    let c =
        wait_for("Announced", async || conditions("a", "purelb.io/Announced").await.filter(|c| c.1 == "True")).await;
    assert_eq!((c.2.as_str(), c.3.as_str()), ("Announced", "192.0.2.240 on n2 (eth0)"));

    // The group is full: the next Service is not allocated, and says why.
    create_svc(&client, "web", "b", json!({}), json!({})).await;
    create_svc(&client, "web", "c", json!({}), json!({})).await;
    let full = wait_for("PoolExhausted", async || {
        for name in ["b", "c"] {
            if let Some(c) = conditions(name, "purelb.io/Allocated").await.filter(|c| c.1 == "False") {
                return Some(c);
            }
        }
        None
    })
    .await;
    assert_eq!(full.2, "PoolExhausted", "{full:?}");

    let all = purelb_conditions(&client, "web", "a").await;
    assert!(all.iter().any(|c| c.0 == "example.com/Checked"), "{all:?}");

    // No longer PureLB's: its conditions go, the other controller's stays.
    // (Its class is immutable, as on a real server: it stops being a LoadBalancer instead.)
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"type": "ClusterIP", "externalTrafficPolicy": null}})),
    )
    .await
    .unwrap();
    let left = wait_for("PureLB's conditions removed", async || {
        let all = purelb_conditions(&client, "web", "a").await;
        (!all.iter().any(|c| c.0.starts_with("purelb.io/"))).then_some(all)
    })
    .await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, "example.com/Checked");
}

/// Every revision of a Service that moves to a group of the other kind (and back) pairs its
/// addresses with the group they came from: the agents read the kind from the annotations and
/// the addresses from the status, two writes, and see each revision in between. Found by the
/// soak: `pool-type: remote` with the old local address put that address on every node's
/// dummy interface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_change_never_shows_old_addresses_under_the_new_group() {
    use futures::{StreamExt, TryStreamExt};
    use purelb::kube::api::{WatchEvent, WatchParams};
    let (_emulator, client) = setup().await;
    group(&client, "lan", local("192.0.2.240/29")).await;
    group(
        &client,
        "routed",
        json!({"remote": {"v4pool": {"pool": "198.51.100.0/29", "subnet": "198.51.100.0/24", "aggregation": "/32"}}}),
    )
    .await;
    let (_task, _stop) = start_allocator(client.clone());
    create_svc(&client, "web", "moving", json!({"purelb.io/service-group": "lan"}), json!({})).await;
    let first = addresses_of(&client, "web", "moving", 1).await;
    assert!(first[0].starts_with("192.0.2."), "{first:?}");
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    let version = api.get("moving").await.unwrap().resource_version().unwrap();
    let mut stream = api.watch(&WatchParams::default().fields("metadata.name=moving"), &version).await.unwrap().boxed();
    let mut revisions: Vec<(Option<String>, Vec<String>)> = Vec::new();
    for (to, prefix) in [("routed", "198.51.100."), ("lan", "192.0.2.")] {
        let patch = json!({"metadata": {"annotations": {"purelb.io/service-group": to}}});
        api.patch("moving", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let event = tokio::time::timeout_at(deadline, stream.try_next())
                .await
                .unwrap_or_else(|_| panic!("no new address from {to} within 30 s: {revisions:?}"))
                .unwrap();
            let Some(WatchEvent::Modified(svc)) = event else { continue };
            let from = svc.annotations().get("purelb.io/allocated-from").cloned();
            let ips = ingress(&svc);
            revisions.push((from.clone(), ips.clone()));
            if from.as_deref() == Some(to) && ips.first().is_some_and(|ip| ip.starts_with(prefix)) {
                break;
            }
        }
    }
    for (from, ips) in &revisions {
        let prefix = match from.as_deref() {
            Some("lan") => "192.0.2.",
            Some("routed") => "198.51.100.",
            other => panic!("unexpected group {other:?}: {revisions:?}"),
        };
        assert!(ips.iter().all(|ip| ip.starts_with(prefix)), "addresses under the wrong group: {revisions:?}");
    }
}

/// A repeated Event (same type, reason, message and object) is counted in its series, one
/// object with `series.count`, as client-go and kube do; another message is another Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_is_counted_in_its_series() {
    use purelb::events::{EventType, Publisher, Reporter};
    use purelb::k8s_openapi::api::events::v1::Event as EventV1;
    use purelb::kube::Resource;
    let (_emu, client) = setup().await;
    create_svc(&client, "web", "repeat", json!({}), json!({"type": "ClusterIP"})).await;
    let svc = Api::<Service>::namespaced(client.clone(), "web").get("repeat").await.unwrap();
    let publisher = Publisher::start(
        client.clone(),
        Reporter { controller: "purelb-allocator".to_owned(), instance: Some("test".to_owned()) },
        Duration::from_secs(10),
    );
    let reference = svc.object_ref(&());
    for note in ["address 192.0.2.1 assigned", "address 192.0.2.1 assigned", "address 192.0.2.2 assigned"] {
        publisher.publish(&reference, vec![(EventType::Normal, "AddressAssigned", note.to_owned())]);
    }
    let api: Api<EventV1> = Api::namespaced(client.clone(), "web");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut events: Vec<(String, i32)> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("repeat"))
            .map(|e| (e.note.unwrap_or_default(), e.series.map_or(1, |s| s.count)))
            .collect();
        events.sort();
        let want = vec![("address 192.0.2.1 assigned".to_owned(), 2), ("address 192.0.2.2 assigned".to_owned(), 1)];
        if events == want {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "Events after 20 s: {events:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
