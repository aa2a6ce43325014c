//! Burst: 5,000 Services created at once are all allocated by the real allocator controller
//! over HTTP against the emulator, with no duplicate address; compared with the emulator's raw
//! write throughput (status patches of the same Services by one client, same transport),
//! measured in the same run.
//!
//! Run: `cargo bench -p purelb-e2e --bench allocator_burst` (`BURST=n` to change the count).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_precision_loss)]

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use purelb::{
    allocator::controller::{self, Settings, WriteGate},
    api::ServiceGroup,
    k8s_openapi::{
        api::core::v1::{Namespace, Service},
        apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    },
    kube::{
        Api, Client, CustomResourceExt,
        api::{Patch, PatchParams, PostParams},
    },
    telemetry::Readiness,
};
use purelb_e2e::apiserver::{Emulator, EmulatorOptions};
use serde_json::json;

async fn http_client(emulator: &Emulator) -> (purelb_e2e::apiserver::HttpServer, Client) {
    let server = emulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("purelb-burst-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    purelb_e2e::apiserver::write_kubeconfig(&path, &server.url(), None, "default").unwrap();
    let kc = purelb::kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = purelb::kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (server, Client::try_from(config).unwrap())
}

/// Creates `n` LoadBalancer Services; `class` set keeps them away from PureLB (the raw
/// measurement's Services must not become work for the allocator).
async fn create_services(client: &Client, ns: &str, n: usize, class: Option<&str>) {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                let svc: Service = serde_json::from_value(json!({"metadata": {"name": format!("s{i}")}, "spec": {"type": "LoadBalancer", "loadBalancerClass": class, "ipFamilies": ["IPv6"], "ports": [{"port": 80}]}})).unwrap();
                api.create(&PostParams::default(), &svc).await.unwrap();
            }
        })
        .await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BURST").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let emulator = Emulator::start(EmulatorOptions::default()).unwrap();
    let (_server, client) = http_client(&emulator).await;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &ServiceGroup::crd())
        .await
        .unwrap();
    let nsapi: Api<Namespace> = Api::all(client.clone());
    for ns in ["purelb-system", "raw", "burst"] {
        nsapi
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
            .await
            .unwrap();
    }
    let sg: ServiceGroup = serde_json::from_value(json!({"apiVersion": "purelb.io/v2", "kind": "ServiceGroup", "metadata": {"name": "default"},
        "spec": {"remote": {"v6pool": {"pool": "2001:db8::/112", "subnet": "2001:db8::/64"}, "v4pool": {"pool": "198.51.100.0/24", "subnet": "198.51.100.0/24"}}}})).unwrap();
    Api::<ServiceGroup>::namespaced(client.clone(), "purelb-system").create(&PostParams::default(), &sg).await.unwrap();

    // Raw write throughput: one client patching the status of n Services, one at a time.
    create_services(&client, "raw", n, Some("bench.example/not-purelb")).await;
    let raw_api: Api<Service> = Api::namespaced(client.clone(), "raw");
    let start = Instant::now();
    for i in 0..n {
        let body = json!({"status": {"loadBalancer": {"ingress": [{"ip": format!("2001:db8:1::{i:x}")}]}}});
        raw_api.patch_status(&format!("s{i}"), &PatchParams::default(), &Patch::Merge(&body)).await.unwrap();
    }
    let raw = start.elapsed();
    let raw_rate = n as f64 / raw.as_secs_f64();
    println!(
        "burst: emulator raw write throughput: {n} status patches in {:.2} s = {raw_rate:.0} writes/s",
        raw.as_secs_f64()
    );

    // The burst: n Services exist, the allocator starts and allocates them all.
    create_services(&client, "burst", n, None).await;
    let settings = Settings {
        namespace: "purelb-system".into(),
        lb_class: "purelb.io/purelbv2".into(),
        default_announcer: true,
        instance: "bench".into(),
        api_timeout: Duration::from_secs(30),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let alloc_client = client.clone();
    let readiness = Readiness::new();
    let ready_flag = readiness.clone();
    let start = Instant::now();
    let ready_watch = tokio::spawn(async move {
        while !ready_flag.is_ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    });
    let task = tokio::spawn(async move {
        controller::run(alloc_client, settings, WriteGate::always(), readiness, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    // Completion is read from the emulator's store directly, so observing costs the server
    // nothing (an HTTP watch would add its own fan-out and decoding to the measurement).
    let elapsed = loop {
        let objects = emulator.objects("", "services", Some("burst"));
        let done: Vec<&serde_json::Value> = objects
            .iter()
            .map(AsRef::as_ref)
            .filter(|o| o["status"]["loadBalancer"]["ingress"].as_array().is_some_and(|i| !i.is_empty()))
            .collect();
        if done.len() == n {
            let elapsed = start.elapsed();
            let mut seen = HashSet::new();
            for o in done {
                for i in o["status"]["loadBalancer"]["ingress"].as_array().into_iter().flatten() {
                    assert!(seen.insert(i["ip"].to_string()), "duplicate address {}", i["ip"]);
                }
            }
            break elapsed;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "only {}/{n} allocated after 10 minutes", done.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ready_after = ready_watch.await.unwrap();
    println!(
        "burst: allocator caches synced {:.2} s after start (initial list of {n} Services)",
        ready_after.as_secs_f64()
    );
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "burst: allocator allocated {n} Services (no duplicates) in {:.2} s = {rate:.0} Services/s = {:.0}% of the raw write rate (target >= 50%); \
         each Service costs 3 writes (annotations, status, Event), so the allocator's own write rate is {:.0}% of raw",
        elapsed.as_secs_f64(),
        100.0 * rate / raw_rate,
        300.0 * rate / raw_rate
    );
    let _ = tx.send(());
    let _ = task.await;
}
