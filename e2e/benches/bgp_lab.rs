//! BGP measurements (issue 17) in the lab: FRR on the router, BIRD 2 on 3 nodes managed by the
//! real `purelb agent` (debug build, as the lab tests), the real allocator. Run as root:
//! `cargo build -p purelb --bin purelb && cargo bench --profile dev -p purelb-e2e --bench bgp_lab`
//! (`BGP_LAB_SAMPLES=n` changes the 30 samples).
//!
//! - status write → route on the router: a Service is created, the time from the moment its
//!   status (address) is seen at the API (polled every 5 ms) until the router's kernel FIB has
//!   the route with all 3 next hops (polled every 5 ms); then the Service is deleted and the
//!   route's withdrawal is awaited. p50/p99 over the samples.
//! - node frozen (its BIRD, agent and HTTP server SIGSTOPped) → the router's FIB drops it,
//!   with BFD 3 × 300 ms, and without BFD (hold time 9 s); 3 runs each.
//! - the spread of 300 new connections over the 3 next hops.
//! - BFD 3 × 100 ms (the router's profile and the BGPPeer changed at run time), 3 runs.
//! - drain: a cordoned node's agent stopped; when its route leaves the router's FIB, when its
//!   address leaves the node, and the failed new connections meanwhile.
//!
//! Prints `MEASURE` lines for `scripts/bench-report.py`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_precision_loss)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use purelb::{
    k8s_openapi::api::core::v1::Service,
    kube::{
        Api,
        api::{DeleteParams, Patch, PatchParams},
    },
};
use purelb_e2e::lab::{self, Backend, Lab, LabOptions, ServiceBackends, bgp, wait_for};

fn service(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": {"purelb.io/service-group": "routed"}},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 80}]}
    })
}

async fn routed_to(lab: &Lab, ip: IpAddr, want: &[&str], timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if lab.routed_via(ip).unwrap() == want {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

async fn bfd_up(lab: &Lab) {
    let up = wait_for(Duration::from_secs(60), || async { (lab.bfd_sessions_up().ok()? == 3).then_some(()) }).await;
    assert!(up.is_some(), "BFD not up:\n{}", lab.vtysh("show bfd peers brief").unwrap_or_default());
}

async fn freeze_n1(lab: &Lab, ip: IpAddr) -> Duration {
    let names = [bgp::bird_name("n1"), lab::agent_name("n1"), lab::serve_name("n1")];
    let frozen = Instant::now();
    for name in &names {
        lab.pause(name).unwrap();
    }
    let took = routed_to(lab, ip, &["n2", "n3"], Duration::from_secs(30)).await.expect("the route stayed");
    let took = took.max(frozen.elapsed().min(took));
    for name in &names {
        lab.resume(name).unwrap();
    }
    routed_to(lab, ip, &["n1", "n2", "n3"], Duration::from_secs(60)).await.expect("n1 never came back");
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let samples: usize = std::env::var("BGP_LAB_SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let purelb = lab::built_binary("purelb", &["debug"]).expect("cargo build -p purelb --bin purelb first");
    let lab_bin =
        lab::built_binary("purelb-lab", &["debug", "release"]).expect("cargo build -p purelb-e2e --bins first");
    let mut options = LabOptions::new(&lab::test_prefix("bgpb", "x"), 3)
        .lab_bin(lab_bin)
        .purelb_bin(purelb)
        .bgp(true)
        .ready_timeout(Duration::from_secs(30));
    options.agent_args =
        ["--lease-duration=2s", "--renew-interval=500ms", "--drain-time=1s"].iter().map(|s| (*s).to_owned()).collect();
    let lab = Lab::start(options).await.unwrap();
    let mut backends = ServiceBackends::new("default", "web").port_name("http");
    for node in ["n1", "n2", "n3"] {
        lab.serve(node, 80).await.unwrap();
        backends = backends.backend(Backend::ready(node));
    }
    bfd_up(&lab).await;

    // status write → route, over `samples` Services one at a time.
    let services: Api<Service> = Api::namespaced(lab.client(), "default");
    let params = PatchParams::apply("bgp-bench").force();
    let mut to_route = Vec::new();
    let mut withdraw = Vec::new();
    for i in 0..samples {
        let name = format!("web{i}");
        lab.set_endpoints(&ServiceBackends { service: name.clone(), ..backends.clone() }).await.unwrap();
        services.patch(&name, &params, &Patch::Apply(&service(&name))).await.unwrap();
        let mut seen = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.is_none() && Instant::now() < deadline {
            let svc = services.get(&name).await.unwrap();
            seen = svc
                .status
                .and_then(|s| s.load_balancer?.ingress?.iter().find_map(|i| i.ip.as_deref()?.parse::<IpAddr>().ok()))
                .map(|ip| (ip, Instant::now()));
            if seen.is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let (ip, at) = seen.expect("no address");
        routed_to(&lab, ip, &["n1", "n2", "n3"], Duration::from_secs(10)).await.expect("never routed");
        to_route.push(at.elapsed());
        let deleted = Instant::now();
        services.delete(&name, &DeleteParams::default()).await.unwrap();
        routed_to(&lab, ip, &[], Duration::from_secs(10)).await.expect("never withdrawn");
        withdraw.push(deleted.elapsed());
        lab.delete_endpoints("default", &name).await.unwrap();
    }
    to_route.sort();
    withdraw.sort();
    println!(
        "MEASURE bgp status seen -> route with 3 next hops: n={} p50 {:?} p99 {:?} max {:?}",
        to_route.len(),
        percentile(&to_route, 50.0),
        percentile(&to_route, 99.0),
        to_route.last().unwrap()
    );
    println!(
        "MEASURE bgp Service deleted -> route gone: n={} p50 {:?} p99 {:?} max {:?}",
        withdraw.len(),
        percentile(&withdraw, 50.0),
        percentile(&withdraw, 99.0),
        withdraw.last().unwrap()
    );

    // One Service for the rest.
    lab.set_endpoints(&backends).await.unwrap();
    services.patch("web", &params, &Patch::Apply(&service("web"))).await.unwrap();
    let ip = wait_for(Duration::from_secs(20), || async {
        let svc = services.get("web").await.ok()?;
        svc.status?.load_balancer?.ingress?.iter().find_map(|i| i.ip.as_deref()?.parse::<IpAddr>().ok())
    })
    .await
    .unwrap();
    routed_to(&lab, ip, &["n1", "n2", "n3"], Duration::from_secs(10)).await.unwrap();
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..300 {
        let reply = lab.http_get("client", SocketAddr::new(ip, 80), "/").await.unwrap();
        *served.entry(reply.node.unwrap_or_default()).or_default() += 1;
    }
    println!("MEASURE bgp 300 connections over 3 next hops: {served:?}");

    // Node frozen, BFD on (3 × 300 ms) and off (hold time 9 s).
    let mut with_bfd = Vec::new();
    for _ in 0..3 {
        bfd_up(&lab).await;
        with_bfd.push(freeze_n1(&lab, ip).await);
    }
    println!("MEASURE bgp node frozen -> route withdrawn, BFD 3 x 300 ms: {with_bfd:?}");
    lab.apply_yaml(&bgp::peer_yaml("300ms", 3).replace("enabled: true", "enabled: false")).await.unwrap();
    // The session restarts with the new options (BIRD restarts a session whose options change).
    tokio::time::sleep(Duration::from_secs(2)).await;
    routed_to(&lab, ip, &["n1", "n2", "n3"], Duration::from_secs(60)).await.unwrap();
    let mut without = Vec::new();
    for _ in 0..3 {
        without.push(freeze_n1(&lab, ip).await);
    }
    println!("MEASURE bgp node frozen -> route withdrawn, no BFD (hold time 9 s): {without:?}");

    // BFD 3 × 100 ms: the router's profile and the BGPPeer.
    lab.vtysh_config(&["bfd", "profile purelb", "receive-interval 100", "transmit-interval 100"]).unwrap();
    lab.apply_yaml(&bgp::peer_yaml("100ms", 3)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    routed_to(&lab, ip, &["n1", "n2", "n3"], Duration::from_secs(60)).await.unwrap();
    let mut fast = Vec::new();
    for _ in 0..3 {
        bfd_up(&lab).await;
        fast.push(freeze_n1(&lab, ip).await);
    }
    println!("MEASURE bgp node frozen -> route withdrawn, BFD 3 x 100 ms: {fast:?}");

    // Drain: n1 cordoned, then its agent stopped (SIGTERM) while the client opens a new
    // connection every 20 ms; when the route leaves the FIB, when the address leaves n1.
    lab::workload::install(&lab.client(), &lab.node_names()).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client_ns = lab.host("client").unwrap().netns.clone();
    let flag = stop.clone();
    let traffic = std::thread::spawn(move || {
        let (mut sent, mut failed) = (0_usize, 0_usize);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            sent += 1;
            if lab::http::get_blocking(&client_ns, SocketAddr::new(ip, 80), "/", Duration::from_secs(3)).is_err() {
                failed += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (sent, failed)
    });
    lab::workload::cordon(&lab.client(), "n1", true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    let (route_gone, address_gone) = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let term = scope.spawn(|| lab.terminate_agent("n1", Duration::from_secs(20)).unwrap());
            let (mut route_gone, mut address_gone) = (None, None);
            while stopping.elapsed() < Duration::from_secs(15) && (route_gone.is_none() || address_gone.is_none()) {
                if route_gone.is_none() && !lab.routed_via(ip).unwrap().contains(&"n1".to_owned()) {
                    route_gone = Some(stopping.elapsed());
                }
                if address_gone.is_none() && !lab.holders(ip).unwrap().contains(&"n1".to_owned()) {
                    address_gone = Some(stopping.elapsed());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            term.join().unwrap();
            (route_gone, address_gone)
        })
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = traffic.join().unwrap();
    println!(
        "MEASURE bgp drain (--drain-time=1s): route left the FIB after {:?}, address left the node after {:?}, {sent} requests, {failed} failed",
        route_gone.expect("the route never left"),
        address_gone.expect("the address never left")
    );
    drop(lab);
}
