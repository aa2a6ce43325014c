//! Netbox groups end to end: the allocator controller against the API emulator and the fake
//! NetBox (`purelb_e2e::netbox`): allocation, release back to `reserved`, both families,
//! restart adoption (and a Warning when NetBox disagrees), every failure mode with its
//! `AllocationFailed` Event and recovery, races for the last address, and where the token
//! comes from (a mounted file, or the one Secret the RBAC allows).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeMap, time::Duration};

use purelb::{
    allocator::{
        controller::{self, Settings, WriteGate},
        netbox::NetboxSettings,
    },
    api::ServiceGroup,
    core::queue::Backoff,
    k8s_openapi::{
        api::core::v1::{Event, Namespace, Secret, Service},
        apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    },
    kube::{
        Api, Client, CustomResourceExt, ResourceExt,
        api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    },
    telemetry::Readiness,
};
use purelb_e2e::{
    apiserver::{Emulator, EmulatorOptions},
    netbox::{FakeNetbox, Record, When},
};
use serde_json::{Value, json};

const NS: &str = "purelb-system";
const TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";

async fn emulator(authorize: bool) -> (Emulator, Client) {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .try_init();
    let emulator = Emulator::start(EmulatorOptions { authorize, ..EmulatorOptions::default() }).unwrap();
    let client = emulator.client(None);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [ServiceGroup::crd(), purelb::api::LBNodeAgent::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let ns: Api<Namespace> = Api::all(client.clone());
    for name in [NS, "web"] {
        ns.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
            .await
            .unwrap();
    }
    (emulator, client)
}

/// A fake NetBox with tenant `k8s` and a write token; the token Secret `netbox-token`.
async fn setup() -> (Emulator, Client, FakeNetbox) {
    let (emulator, client) = emulator(false).await;
    secret(&client, "netbox-token", TOKEN).await;
    (emulator, client, netbox())
}

fn netbox() -> FakeNetbox {
    let nb = FakeNetbox::start().unwrap();
    nb.add_tenant("k8s", "Kubernetes");
    nb.add_tenant("other", "Other");
    nb.add_token(TOKEN, true);
    nb
}

async fn secret(client: &Client, name: &str, token: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    let s: Secret = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "data": {"token": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, token)}}))
    .unwrap();
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&s)).await.unwrap();
}

fn fast() -> NetboxSettings {
    NetboxSettings {
        timeout: Duration::from_secs(2),
        retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
        recheck: Duration::from_secs(1),
        page_size: 50,
        token_cache: Duration::ZERO,
        ..NetboxSettings::default()
    }
}

fn start(client: Client, netbox: NetboxSettings) -> (tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let settings = Settings {
        namespace: NS.to_owned(),
        lb_class: "purelb.io/purelbv2".to_owned(),
        default_announcer: true,
        instance: "test".to_owned(),
        api_timeout: Duration::from_secs(10),
    };
    let task = tokio::spawn(async move {
        controller::run_with_netbox(client, settings, netbox, WriteGate::always(), Readiness::new(), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (task, tx)
}

async fn group(client: &Client, name: &str, nb: &FakeNetbox, tenant: &str, secret: &str) {
    let spec = json!({"netbox": {"url": nb.url(), "tenant": tenant, "aggregation": "/32",
        "tokenSecretRef": {"name": secret, "key": "token"}}});
    let api: Api<ServiceGroup> = Api::namespaced(client.clone(), NS);
    let sg: ServiceGroup = serde_json::from_value(
        json!({"apiVersion": "purelb.io/v2", "kind": "ServiceGroup", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap();
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&sg)).await.unwrap();
}

async fn create_svc(client: &Client, name: &str, group: &str, extra_spec: Value) {
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    let mut spec = json!({"type": "LoadBalancer", "ports": [{"port": 80}], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"});
    json_patch::merge(&mut spec, &extra_spec);
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": name, "annotations": {"purelb.io/service-group": group}}, "spec": spec}),
    )
    .unwrap();
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

async fn addresses_of(client: &Client, name: &str, n: usize) -> Vec<String> {
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    wait_for(&format!("web/{name} to get {n} addresses"), async || {
        let ips = ingress(&api.get(name).await.ok()?);
        (ips.len() == n).then_some(ips)
    })
    .await
}

async fn events_for(client: &Client, name: &str) -> Vec<(String, String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), "web");
    api.list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

async fn event(client: &Client, name: &str, reason: &str, want: &str) -> String {
    wait_for(&format!("{reason} on {name} saying {want:?}"), async || {
        events_for(client, name).await.into_iter().find(|(_, r, m)| r == reason && m.contains(want)).map(|(_, _, m)| m)
    })
    .await
}

async fn netbox_shows(nb: &FakeNetbox, ip: &str, status: &str, description: &str) -> Record {
    wait_for(&format!("NetBox to show {ip} {status} {description:?}"), async || {
        nb.record(ip).filter(|r| r.status == status && r.description == description)
    })
    .await
}

async fn delete_svc(client: &Client, name: &str) {
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    api.delete(name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netbox_allocation_release_back_to_reserved_and_reuse() {
    let (_emu, client, nb) = setup().await;
    nb.add_address("203.0.113.9/24", "active", Some("k8s"), "router");
    nb.add_address("203.0.113.10/24", "reserved", Some("k8s"), "");
    nb.add_address("203.0.113.11/24", "reserved", Some("k8s"), "");
    nb.add_address("203.0.113.5/24", "reserved", Some("other"), "");
    nb.add_address("198.51.100.1/24", "reserved", None, "");
    group(&client, "nb", &nb, "k8s", "netbox-token").await;
    let (_task, _stop) = start(client.clone(), fast());

    create_svc(&client, "a", "nb", json!({})).await;
    assert_eq!(addresses_of(&client, "a", 1).await, ["203.0.113.10"]);
    let record = netbox_shows(&nb, "203.0.113.10", "active", "purelb:web/a").await;
    assert_eq!(record.tenant.as_deref(), Some("k8s"));
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    let a = api.get("a").await.unwrap();
    let ann: BTreeMap<String, String> = a.annotations().clone();
    assert_eq!(ann.get("purelb.io/pool-type").map(String::as_str), Some("remote"), "announced like a remote pool");
    assert_eq!(ann.get("purelb.io/allocated-from").map(String::as_str), Some("nb"));
    event(&client, "a", "AddressAssigned", "203.0.113.10").await;
    let sgs: Api<ServiceGroup> = Api::namespaced(client.clone(), NS);
    let status = wait_for("group status", async || {
        let s = sgs.get("nb").await.ok()?.status?;
        (s.allocated_ipv4 == Some(1) && s.available_ipv4.is_some()).then_some(s)
    })
    .await;
    assert_eq!(status.pool_type.as_deref(), Some("netbox"));
    assert_eq!(status.available_ipv4.as_deref(), Some("1"), "one reserved address left in NetBox");
    assert_eq!(status.conditions[0].status, "True");
    assert!(status.conditions[0].message.contains("NetBox"), "{:?}", status.conditions[0]);

    create_svc(&client, "b", "nb", json!({})).await;
    assert_eq!(addresses_of(&client, "b", 1).await, ["203.0.113.11"]);
    netbox_shows(&nb, "203.0.113.11", "active", "purelb:web/b").await;

    // Release on deletion: back to reserved, owner cleared.
    delete_svc(&client, "a").await;
    netbox_shows(&nb, "203.0.113.10", "reserved", "").await;
    // Release on type change: the Service's status is cleared and NetBox gets it back.
    api.patch("b", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"type": "ClusterIP"}}))).await.unwrap();
    netbox_shows(&nb, "203.0.113.11", "reserved", "").await;
    wait_for("b released", async || ingress(&api.get("b").await.ok()?).is_empty().then_some(())).await;

    // Reuse: the lowest reserved address again.
    create_svc(&client, "c", "nb", json!({})).await;
    assert_eq!(addresses_of(&client, "c", 1).await, ["203.0.113.10"]);
    netbox_shows(&nb, "203.0.113.10", "active", "purelb:web/c").await;

    // Other tenants', unowned and active addresses were never touched; writes were conditional.
    assert_eq!(nb.record("203.0.113.9").unwrap().description, "router");
    assert_eq!(nb.record("203.0.113.5").unwrap().status, "reserved");
    assert_eq!(nb.record("198.51.100.1").unwrap().status, "reserved");
    let patches: Vec<_> = nb.seen().into_iter().filter(|s| s.method == "PATCH").collect();
    assert!(!patches.is_empty() && patches.iter().all(|p| p.if_match.is_some()), "{patches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netbox_both_families_and_dual_stack() {
    let (_emu, client, nb) = setup().await;
    nb.add_address("203.0.113.10/24", "reserved", Some("k8s"), "");
    nb.add_address("2001:db8::10/64", "reserved", Some("k8s"), "");
    nb.add_address("2001:db8::11/64", "reserved", Some("k8s"), "");
    group(&client, "nb", &nb, "k8s", "netbox-token").await;
    let (_task, _stop) = start(client.clone(), fast());

    create_svc(&client, "four", "nb", json!({})).await;
    assert_eq!(addresses_of(&client, "four", 1).await, ["203.0.113.10"]);
    create_svc(&client, "six", "nb", json!({"ipFamilies": ["IPv6"]})).await;
    assert_eq!(addresses_of(&client, "six", 1).await, ["2001:db8::10"]);
    netbox_shows(&nb, "2001:db8::10", "active", "purelb:web/six").await;

    // RequireDualStack without an IPv4 address left: nothing, and nothing kept in NetBox.
    let dual = json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]});
    create_svc(&client, "dual", "nb", dual).await;
    event(&client, "dual", "AllocationFailed", "no reserved IPv4 address left for tenant k8s").await;
    assert_eq!(nb.record("2001:db8::11").unwrap().status, "reserved");

    // PreferDualStack takes what NetBox has...
    let prefer = json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"]});
    create_svc(&client, "prefer", "nb", prefer).await;
    assert_eq!(addresses_of(&client, "prefer", 1).await, ["2001:db8::11"]);
    // ... and tops up when NetBox has more (on its next pass, as with pools).
    nb.add_address("203.0.113.20/24", "reserved", Some("k8s"), "");
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    let touch = json!({"metadata": {"annotations": {"example.com/touch": "1"}}});
    api.patch("prefer", &PatchParams::default(), &Patch::Merge(&touch)).await.unwrap();
    assert_eq!(addresses_of(&client, "prefer", 2).await, ["203.0.113.20", "2001:db8::11"]);

    // IPv4 but no IPv6 for "dual": the IPv4 address is not even taken meanwhile.
    nb.add_address("203.0.113.21/24", "reserved", Some("k8s"), "");
    event(&client, "dual", "AllocationFailed", "no reserved IPv6 address left").await;
    assert_eq!(nb.record("203.0.113.21").unwrap().status, "reserved");
    // An IPv6 address comes free: both families at last.
    delete_svc(&client, "six").await;
    assert_eq!(addresses_of(&client, "dual", 2).await, ["203.0.113.21", "2001:db8::10"]);
    netbox_shows(&nb, "203.0.113.21", "active", "purelb:web/dual").await;
    netbox_shows(&nb, "2001:db8::10", "active", "purelb:web/dual").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netbox_restart_adopts_and_warns_on_owner_mismatch() {
    let (_emu, client, nb) = setup().await;
    for ip in ["203.0.113.10/24", "203.0.113.11/24"] {
        nb.add_address(ip, "reserved", Some("k8s"), "");
    }
    // A Service allocated before (e.g. by an earlier PureLB), recorded in NetBox.
    nb.add_address("203.0.113.12/24", "active", Some("k8s"), "purelb:web/old");
    group(&client, "nb", &nb, "k8s", "netbox-token").await;
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    create_svc(&client, "old", "nb", json!({})).await;
    api.patch(
        "old",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"purelb.io/allocated-by": "PureLB", "purelb.io/allocated-from": "nb"}}})),
    )
    .await
    .unwrap();
    api.patch_status(
        "old",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.12"}]}}})),
    )
    .await
    .unwrap();

    let (task, stop) = start(client.clone(), fast());
    create_svc(&client, "a", "nb", json!({})).await;
    create_svc(&client, "b", "nb", json!({})).await;
    let a = addresses_of(&client, "a", 1).await;
    let b = addresses_of(&client, "b", 1).await;
    assert_eq!(addresses_of(&client, "old", 1).await, ["203.0.113.12"]);
    let _ = stop.send(());
    task.await.unwrap();

    // While PureLB is down, someone edits b's record in NetBox.
    nb.set(&b[0], "active", "purelb:web/someone-else");
    let (_task, _stop) = start(client.clone(), fast());
    let warning = event(&client, "b", "ConfigurationWarning", "not recorded for this Service in NetBox").await;
    assert!(warning.contains("purelb:web/someone-else") && warning.contains("keeps the address"), "{warning}");
    // Never a silent reassignment: every Service keeps its address, NetBox is not changed.
    create_svc(&client, "c", "nb", json!({})).await;
    event(&client, "c", "AllocationFailed", "no reserved IPv4 address left").await;
    assert_eq!(addresses_of(&client, "a", 1).await, a);
    assert_eq!(addresses_of(&client, "b", 1).await, b);
    assert_eq!(addresses_of(&client, "old", 1).await, ["203.0.113.12"]);
    assert_eq!(nb.record(&b[0]).unwrap().description, "purelb:web/someone-else");
    for name in ["a", "old"] {
        assert!(
            !events_for(&client, name).await.iter().any(|(t, _, _)| t == "Warning"),
            "{name}: {:?}",
            events_for(&client, name).await
        );
    }
    // A new reserved address goes to the waiting Service, not a held one.
    nb.add_address("203.0.113.13/24", "reserved", Some("k8s"), "");
    assert_eq!(addresses_of(&client, "c", 1).await, ["203.0.113.13"]);
    // Releasing a Service whose address NetBox does not record for it leaves NetBox alone.
    delete_svc(&client, "b").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(nb.record(&b[0]).unwrap().description, "purelb:web/someone-else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netbox_failure_modes_are_reported_and_retried_with_backoff() {
    let (_emu, client, nb) = setup().await;
    for i in 10..40 {
        nb.add_address(&format!("203.0.113.{i}/24"), "reserved", Some("k8s"), "");
    }
    // Hostile records never break a listing.
    nb.add_address("garbage", "reserved", Some("k8s"), "");
    nb.add_address("203.0.113.300/24", "reserved", Some("k8s"), "");
    nb.add_address("203.0.113.1/24", "reserved", Some("k8s"), &"\u{0}x".repeat(500));
    nb.add_tenant("empty", "Empty");
    group(&client, "nb", &nb, "k8s", "netbox-token").await;
    let (_task, _stop) = start(client.clone(), fast());
    let faults = nb.faults();

    create_svc(&client, "first", "nb", json!({})).await;
    assert_eq!(addresses_of(&client, "first", 1).await, ["203.0.113.1"]);

    // Unreachable.
    faults.unreachable(true);
    create_svc(&client, "down", "nb", json!({})).await;
    let m = event(&client, "down", "AllocationFailed", "cannot reach NetBox").await;
    assert!(m.contains("retries with backoff"), "{m}");
    faults.unreachable(false);
    addresses_of(&client, "down", 1).await;

    // Slow: every call is bounded.
    faults.slow(Duration::from_secs(4));
    create_svc(&client, "slow", "nb", json!({})).await;
    event(&client, "slow", "AllocationFailed", "did not answer a GET within 2s").await;
    faults.slow(Duration::ZERO);
    addresses_of(&client, "slow", 1).await;

    // 5xx, retried with backoff and not in a hot loop.
    faults.fail(500, None);
    create_svc(&client, "broken", "nb", json!({})).await;
    event(&client, "broken", "AllocationFailed", "failed (HTTP 500: an HTML page)").await;
    let before = nb.seen().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = nb.seen().len() - before;
    assert!(during <= 15, "{during} requests in 3 s with a 100 ms..1 s backoff");
    faults.fail(0, None);
    addresses_of(&client, "broken", 1).await;

    // Truncated JSON.
    faults.truncate(true);
    create_svc(&client, "cut", "nb", json!({})).await;
    event(&client, "cut", "AllocationFailed", "malformed answer").await;
    faults.truncate(false);
    addresses_of(&client, "cut", 1).await;

    // A wrong token (403, as NetBox answers), then fixed in the Secret.
    secret(&client, "netbox-token", "wrong").await;
    create_svc(&client, "badtoken", "nb", json!({})).await;
    let m = event(&client, "badtoken", "AllocationFailed", "refused the API token (HTTP 403: Invalid token)").await;
    assert!(m.contains("Secret netbox-token key token") && !m.contains(TOKEN), "{m}");
    // 401 (a proxy in front of NetBox).
    faults.auth_status(401);
    create_svc(&client, "unauth", "nb", json!({})).await;
    event(&client, "unauth", "AllocationFailed", "HTTP 401").await;
    secret(&client, "netbox-token", TOKEN).await;
    addresses_of(&client, "badtoken", 1).await;
    addresses_of(&client, "unauth", 1).await;

    // A read-only token: listing works, the write is refused.
    nb.add_token("readonly", false);
    secret(&client, "ro-token", "readonly").await;
    group(&client, "ro", &nb, "k8s", "ro-token").await;
    create_svc(&client, "ro", "ro", json!({})).await;
    event(&client, "ro", "AllocationFailed", "You do not have permission to perform this action").await;

    // No reserved address left for the tenant; the operator reserves one.
    group(&client, "empty", &nb, "empty", "netbox-token").await;
    create_svc(&client, "waiting", "empty", json!({})).await;
    event(&client, "waiting", "AllocationFailed", "no reserved IPv4 address left for tenant empty").await;
    nb.add_address("192.0.2.77/24", "reserved", Some("empty"), "");
    assert_eq!(addresses_of(&client, "waiting", 1).await, ["192.0.2.77"]);

    // The token Secret is missing; then created.
    group(&client, "nosecret", &nb, "k8s", "missing").await;
    create_svc(&client, "nosecret", "nosecret", json!({})).await;
    event(&client, "nosecret", "AllocationFailed", "Secret purelb-system/missing does not exist").await;
    secret(&client, "missing", TOKEN).await;
    addresses_of(&client, "nosecret", 1).await;

    // An unknown tenant: NetBox says 400, the message points at the field.
    group(&client, "ghost", &nb, "ghost", "netbox-token").await;
    create_svc(&client, "ghost", "ghost", json!({})).await;
    let m = event(&client, "ghost", "AllocationFailed", "HTTP 400").await;
    assert!(m.contains("spec.netbox.tenant"), "{m}");

    // Every address given once.
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    let mut seen = std::collections::HashSet::new();
    for s in api.list(&ListParams::default()).await.unwrap().items {
        for ip in ingress(&s) {
            assert!(seen.insert(ip.clone()), "{ip} given twice");
            let r = nb.record(&ip).unwrap();
            assert_eq!((r.status.as_str(), r.description), ("active", format!("purelb:web/{}", s.name_any())));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netbox_pagination_and_pool_ranges_are_respected() {
    let (_emu, client, nb) = setup().await;
    for i in 10..=14 {
        nb.add_address(&format!("192.0.2.{i}/24"), "reserved", Some("k8s"), "");
    }
    nb.faults().max_page_size(Some(2));
    group(&client, "nb", &nb, "k8s", "netbox-token").await;
    // A local pool covers .10-.13: those are PureLB's own and never taken from NetBox.
    let api: Api<ServiceGroup> = Api::namespaced(client.clone(), NS);
    let local: ServiceGroup = serde_json::from_value(json!({"apiVersion": "purelb.io/v2", "kind": "ServiceGroup",
        "metadata": {"name": "pool"}, "spec": {"local": {"v4pool": {"pool": "192.0.2.10-192.0.2.13", "subnet": "192.0.2.0/24"}}}}))
    .unwrap();
    api.patch("pool", &PatchParams::apply("test").force(), &Patch::Apply(&local)).await.unwrap();
    let (_task, _stop) = start(client.clone(), NetboxSettings { page_size: 2, ..fast() });
    create_svc(&client, "paged", "nb", json!({})).await;
    assert_eq!(addresses_of(&client, "paged", 1).await, ["192.0.2.14"]);
    let pages: Vec<_> = nb.seen().into_iter().filter(|s| s.query.contains("status=reserved")).collect();
    assert!(pages.iter().any(|s| s.query.contains("offset=4")), "followed next to the third page: {pages:?}");
    for i in 10..=13 {
        assert_eq!(nb.record(&format!("192.0.2.{i}")).unwrap().status, "reserved");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netbox_race_two_allocations_contend_for_the_last_address() {
    let (_emu, client, nb) = setup().await;
    nb.add_address("203.0.113.10/24", "reserved", Some("k8s"), "");
    group(&client, "nb", &nb, "k8s", "netbox-token").await;
    let (_task, _stop) = start(client.clone(), fast());
    tokio::join!(create_svc(&client, "x", "nb", json!({})), create_svc(&client, "y", "nb", json!({})));
    let api: Api<Service> = Api::namespaced(client.clone(), "web");
    let (winner, loser) = wait_for("one winner", async || {
        let x = ingress(&api.get("x").await.ok()?);
        let y = ingress(&api.get("y").await.ok()?);
        match (x.as_slice(), y.as_slice()) {
            ([ip], []) if ip == "203.0.113.10" => Some(("x", "y")),
            ([], [ip]) if ip == "203.0.113.10" => Some(("y", "x")),
            ([_], [_]) => panic!("both got an address: {x:?} {y:?}"),
            _ => None,
        }
    })
    .await;
    event(&client, loser, "AllocationFailed", "no reserved IPv4 address left").await;
    netbox_shows(&nb, "203.0.113.10", "active", &format!("purelb:web/{winner}")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ingress(&api.get(loser).await.unwrap()).is_empty(), "never two holders");
    delete_svc(&client, winner).await;
    assert_eq!(addresses_of(&client, loser, 1).await, ["203.0.113.10"]);
    netbox_shows(&nb, "203.0.113.10", "active", &format!("purelb:web/{loser}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netbox_someone_else_taking_an_address_meanwhile_moves_on_to_the_next() {
    let (_emu, client, nb) = setup().await;
    for i in 20..=25 {
        nb.add_address(&format!("203.0.113.{i}/24"), "reserved", Some("k8s"), "");
    }
    group(&client, "nb", &nb, "k8s", "netbox-token").await;
    let (_task, _stop) = start(client.clone(), fast());
    let faults = nb.faults();
    // Taken between PureLB's listing and its read.
    faults.someone_else("203.0.113.20", When::BeforeGet, "active", "someone-else");
    create_svc(&client, "r1", "nb", json!({})).await;
    assert_eq!(addresses_of(&client, "r1", 1).await, ["203.0.113.21"]);
    // Taken between read and write: NetBox 4.6 refuses the stale write (If-Match, 412).
    faults.someone_else("203.0.113.22", When::AfterGet, "active", "someone-else");
    create_svc(&client, "r2", "nb", json!({})).await;
    assert_eq!(addresses_of(&client, "r2", 1).await, ["203.0.113.23"]);
    assert!(nb.seen().iter().any(|s| s.method == "PATCH" && s.status == 412), "the stale write was refused");
    // Before NetBox 4.6 (no ETag): a writer landing right after PureLB; NetBox answers with
    // the state after the write, PureLB sees it lost and moves on without reverting.
    faults.no_etag(true);
    faults.someone_else("203.0.113.24", When::AfterPatch, "active", "someone-else");
    create_svc(&client, "r3", "nb", json!({})).await;
    assert_eq!(addresses_of(&client, "r3", 1).await, ["203.0.113.25"]);
    for ip in ["203.0.113.20", "203.0.113.22", "203.0.113.24"] {
        assert_eq!(nb.record(ip).unwrap().description, "someone-else", "{ip} stays theirs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netbox_token_from_the_mounted_file_or_an_rbac_limited_secret() {
    let (emu, admin) = emulator(true).await;
    for yaml in [include_str!("../../manifests/rbac.yaml"), include_str!("../../manifests/rbac-netbox.yaml")] {
        purelb_e2e::lab::cluster::apply_yaml(&admin, yaml).await.unwrap();
    }
    emu.add_token("alloc", "system:serviceaccount:purelb-system:purelb-allocator");
    let allocator = emu.client(Some("alloc"));
    let nb = netbox();
    nb.add_token("other-token-value", true);
    for i in 10..=11 {
        nb.add_address(&format!("203.0.113.{i}/24"), "reserved", Some("k8s"), "");
    }
    secret(&admin, "netbox-token", TOKEN).await;
    secret(&admin, "other-token", "other-token-value").await;
    group(&admin, "nb", &nb, "k8s", "netbox-token").await;
    group(&admin, "other", &nb, "k8s", "other-token").await;
    let secrets: Api<Secret> = Api::namespaced(allocator.clone(), NS);
    assert!(secrets.get("netbox-token").await.is_ok(), "the Role allows the named Secret");
    assert!(secrets.get("other-token").await.is_err(), "and no other");
    assert!(secrets.list(&ListParams::default()).await.is_err(), "nor listing Secrets");

    let (task, stop) = start(allocator.clone(), fast());
    create_svc(&admin, "viaapi", "nb", json!({})).await;
    assert_eq!(addresses_of(&admin, "viaapi", 1).await, ["203.0.113.10"]);
    create_svc(&admin, "forbidden", "other", json!({})).await;
    event(&admin, "forbidden", "AllocationFailed", "may not read Secret purelb-system/other-token").await;
    let _ = stop.send(());
    task.await.unwrap();

    // The same Secret mounted as a file: read from there, no API access needed.
    let dir = std::env::temp_dir().join(format!("purelb-netbox-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "other-token-value\n").unwrap();
    let settings = NetboxSettings { token_dir: dir.clone(), token_secret: Some("other-token".to_owned()), ..fast() };
    let (task, stop) = start(allocator.clone(), settings);
    assert_eq!(addresses_of(&admin, "forbidden", 1).await, ["203.0.113.11"]);
    assert_eq!(addresses_of(&admin, "viaapi", 1).await, ["203.0.113.10"], "kept across the restart");
    let _ = stop.send(());
    task.await.unwrap();

    // A rotated token the kubelet has not copied yet: NetBox refuses the file's token, so the
    // Secret is read through the API (allowed for this one Secret).
    std::fs::write(dir.join("token"), "stale-token\n").unwrap();
    let settings = NetboxSettings { token_dir: dir.clone(), token_secret: Some("netbox-token".to_owned()), ..fast() };
    let (_task, _stop) = start(allocator, settings);
    nb.add_address("203.0.113.12/24", "reserved", Some("k8s"), "");
    create_svc(&admin, "rotated", "nb", json!({})).await;
    assert_eq!(addresses_of(&admin, "rotated", 1).await, ["203.0.113.12"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One raw HTTP/1.1 exchange with the fake: (status, headers, body).
async fn raw(nb: &FakeNetbox, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = nb.url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: netbox.test\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netbox_fake_answers_as_netbox_does() {
    let nb = netbox();
    nb.add_token("readonly", false);
    for i in 1..=5 {
        nb.add_address(&format!("203.0.113.{i}/24"), "reserved", Some("k8s"), "");
    }
    nb.add_address("2001:db8::1/64", "reserved", Some("k8s"), "");
    nb.add_address("203.0.113.9/24", "active", Some("other"), "theirs");
    let auth = format!("Authorization: Token {TOKEN}");
    let list = "/api/ipam/ip-addresses/";

    // Authentication: none or a wrong token is 403 (401 with the switch), with NetBox's detail.
    let (s, _, b) = raw(&nb, "GET", list, &[], "").await;
    assert_eq!((s, b["detail"].as_str()), (403, Some("Authentication credentials were not provided.")));
    let (s, _, b) = raw(&nb, "GET", list, &["Authorization: Token nope"], "").await;
    assert_eq!((s, b["detail"].as_str()), (403, Some("Invalid token")));
    nb.faults().auth_status(401);
    assert_eq!(raw(&nb, "GET", list, &["Authorization: Token nope"], "").await.0, 401);
    nb.faults().auth_status(403);

    // Listing: filters, NetBox's order, pagination with absolute, sorted links.
    let (s, _, b) = raw(&nb, "GET", &format!("{list}?tenant=k8s&status=reserved&family=4&limit=2"), &[&auth], "").await;
    assert_eq!((s, b["count"].as_u64()), (200, Some(5)));
    assert_eq!(b["results"][0]["address"], "203.0.113.1/24");
    assert_eq!(b["results"][0]["status"], json!({"value": "reserved", "label": "Reserved"}));
    assert_eq!(b["results"][0]["tenant"]["slug"], "k8s");
    assert_eq!(b["results"][0]["family"]["value"], 4);
    assert_eq!(
        b["next"],
        "http://netbox.test/api/ipam/ip-addresses/?family=4&limit=2&offset=2&status=reserved&tenant=k8s"
    );
    assert!(b["previous"].is_null());
    let (_, _, b) =
        raw(&nb, "GET", &format!("{list}?family=4&limit=2&offset=4&status=reserved&tenant=k8s"), &[&auth], "").await;
    assert_eq!((b["results"].as_array().unwrap().len(), b["next"].is_null()), (1, true));
    assert_eq!(
        b["previous"],
        "http://netbox.test/api/ipam/ip-addresses/?family=4&limit=2&offset=2&status=reserved&tenant=k8s"
    );
    let (_, _, b) = raw(&nb, "GET", &format!("{list}?address=2001:db8::1"), &[&auth], "").await;
    assert_eq!(b["results"][0]["family"]["value"], 6);
    let (_, _, b) = raw(&nb, "GET", &format!("{list}?description=theirs"), &[&auth], "").await;
    assert_eq!(b["count"], 1);

    // What NetBox refuses, and how.
    for (path, field) in [("?tenant=nope", "tenant"), ("?status=bogus", "status"), ("?family=5", "family")] {
        let (s, _, b) = raw(&nb, "GET", &format!("{list}{path}"), &[&auth], "").await;
        assert_eq!(s, 400, "{path}");
        assert!(b[field][0].as_str().unwrap().starts_with("Select a valid choice."), "{path}: {b}");
    }
    assert_eq!(raw(&nb, "GET", &format!("{list}?brief=1"), &[&auth], "").await.0, 400, "not emulated");
    let (s, _, b) = raw(&nb, "GET", &format!("{list}999/"), &[&auth], "").await;
    assert_eq!((s, b["detail"].as_str()), (404, Some("No IPAddress matches the given query.")));
    assert_eq!(raw(&nb, "GET", "/api/dcim/devices/", &[&auth], "").await.0, 404);
    let (s, head, _) = raw(&nb, "GET", "/api/ipam/ip-addresses", &[&auth], "").await;
    assert!(s == 301 && head.to_ascii_lowercase().contains("location: /api/ipam/ip-addresses/"), "{s} {head}");
    assert_eq!(raw(&nb, "DELETE", &format!("{list}1/"), &[&auth], "").await.0, 405);

    // A single object carries an ETag; PATCH honours If-Match and answers with the saved state.
    let (s, head, b) = raw(&nb, "GET", &format!("{list}1/"), &[&auth], "").await;
    assert_eq!((s, b["id"].as_u64()), (200, Some(1)));
    let etag = head.lines().find(|l| l.to_ascii_lowercase().starts_with("etag: ")).unwrap()[6..].to_owned();
    let json_type = "Content-Type: application/json";
    let body = r#"{"status": "active", "description": "purelb:web/a"}"#;
    assert_eq!(raw(&nb, "PATCH", &format!("{list}1/"), &[&auth, "Content-Type: text/plain"], body).await.0, 415);
    assert_eq!(
        raw(&nb, "PATCH", &format!("{list}1/"), &["Authorization: Token readonly", json_type], body).await.0,
        403
    );
    let (s, _, b) = raw(&nb, "PATCH", &format!("{list}1/"), &[&auth, json_type, "If-Match: \"stale\""], body).await;
    assert_eq!(s, 412, "{b}");
    let if_match = format!("If-Match: {etag}");
    let (s, _, b) = raw(&nb, "PATCH", &format!("{list}1/"), &[&auth, json_type, &if_match], body).await;
    assert_eq!(
        (s, b["status"]["value"].as_str(), b["description"].as_str()),
        (200, Some("active"), Some("purelb:web/a"))
    );
    assert_eq!(raw(&nb, "PATCH", &format!("{list}1/"), &[&auth, json_type, &if_match], body).await.0, 412, "stale now");
    let (s, _, b) = raw(&nb, "PATCH", &format!("{list}1/"), &[&auth, json_type], r#"{"status": "bogus"}"#).await;
    assert_eq!((s, b["status"][0].as_str()), (400, Some("\"bogus\" is not a valid choice.")));
    assert_eq!(raw(&nb, "PATCH", &format!("{list}1/"), &[&auth, json_type], "{not json").await.0, 400);
    assert_eq!(raw(&nb, "PATCH", &format!("{list}1/"), &[&auth, json_type], r#"{"vrf": 1}"#).await.0, 400);
    let long = format!(r#"{{"description": "{}"}}"#, "x".repeat(201));
    assert_eq!(raw(&nb, "PATCH", &format!("{list}1/"), &[&auth, json_type], &long).await.0, 400);

    // Fault switches.
    let faults = nb.faults();
    faults.max_page_size(Some(1));
    let (_, _, b) = raw(&nb, "GET", &format!("{list}?limit=50"), &[&auth], "").await;
    assert_eq!(b["results"].as_array().unwrap().len(), 1);
    faults.max_page_size(None);
    faults.fail(503, Some(1));
    assert_eq!(raw(&nb, "GET", list, &[&auth], "").await.0, 503);
    assert_eq!(raw(&nb, "GET", list, &[&auth], "").await.0, 200, "only the next request failed");
    faults.truncate(true);
    let (s, _, b) = raw(&nb, "GET", list, &[&auth], "").await;
    assert_eq!((s, b), (200, Value::Null), "cut in half: not JSON");
    faults.truncate(false);
    faults.unreachable(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = nb.url().trim_start_matches("http://").to_owned();
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err(), "connections refused");
    faults.unreachable(false);
    wait_for("the fake to listen again", async || tokio::net::TcpStream::connect(&addr).await.ok()).await;
}
