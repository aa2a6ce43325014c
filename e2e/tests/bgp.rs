//! Routed announcements over BGP (issue 17) in the lab, as root, with real daemons: FRR on the
//! router (ECMP, BFD 3 × 300 ms, one session per node), BIRD 2 on every node managed by the real
//! `purelb agent` over its control socket, and the router's real kernel FIB. The client reaches
//! routed addresses only through the router.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use purelb::{
    api::contract,
    k8s_openapi::api::{
        coordination::v1::Lease,
        core::v1::{Event, Service},
    },
    kube::{Api, ResourceExt},
};
use purelb_e2e::lab::{self, Backend, Lab, LabOptions, ServiceBackends, bgp, wait_for};

const LAB_BIN: &str = env!("CARGO_BIN_EXE_purelb-lab");

fn purelb_bin() -> PathBuf {
    lab::built_binary("purelb", &["debug", "release"]).expect("cargo build -p purelb --bin purelb first")
}

async fn start(tag: &str, extra: &[&str]) -> Lab {
    let mut options = LabOptions::new(&lab::test_prefix("bgp", tag), 3)
        .lab_bin(LAB_BIN)
        .purelb_bin(purelb_bin())
        .bgp(true)
        .ready_timeout(Duration::from_secs(30));
    options.agent_args = ["--lease-duration=2s", "--renew-interval=500ms", "--handover-timeout=5s", "--drain-time=1s"]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect();
    let lab = Lab::start(options).await.unwrap();
    for (name, status) in lab.process_status() {
        assert!(
            status.is_running(),
            "{name} is not running: {status:?}\n{}",
            lab.log_tail(&name, 30).unwrap_or_default()
        );
    }
    lab.apply_yaml(&bgp::routed_group_yaml("routed", "203.0.113.10-203.0.113.19")).await.unwrap();
    sessions_established(&lab, Duration::from_secs(20)).await;
    lab
}

/// Waits until every node's Lease says `router=Established` (`purelb.io/bgp`).
async fn sessions_established(lab: &Lab, timeout: Duration) -> Duration {
    let started = Instant::now();
    let leases: Api<Lease> = Api::namespaced(lab.client(), "purelb-system");
    let nodes = lab.node_names();
    let up = wait_for(timeout, || async {
        for node in &nodes {
            let lease = leases.get(&contract::node_lease_name(node)).await.ok()?;
            let bgp = lease.annotations().get(contract::LEASE_ANNOTATION_BGP)?;
            if !bgp.split(',').any(|s| s == "router=Established") {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(
        up.is_some(),
        "BGP sessions not Established within {timeout:?}:\n{}\n{}",
        lab.vtysh("show bgp summary").unwrap_or_default(),
        lab.log_tail(&lab::agent_name("n1"), 30).unwrap_or_default()
    );
    started.elapsed()
}

fn service_yaml(name: &str, policy: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  annotations: {{purelb.io/service-group: routed}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: {policy}
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: 80, targetPort: 80}}
"
    )
}

async fn endpoints(lab: &Lab, name: &str, backends: &[Backend]) {
    let mut b = ServiceBackends::new("default", name).port_name("http");
    for backend in backends {
        b = b.backend(backend.clone());
    }
    lab.set_endpoints(&b).await.unwrap();
}

async fn serve_on(lab: &Lab, nodes: &[&str]) {
    for node in nodes {
        lab.serve(node, 80).await.unwrap();
    }
}

async fn address_of(lab: &Lab, name: &str) -> (IpAddr, Instant) {
    let services: Api<Service> = Api::namespaced(lab.client(), "default");
    let found = wait_for(Duration::from_secs(20), || async {
        let svc = services.get(name).await.ok()?;
        svc.status?.load_balancer?.ingress?.iter().find_map(|i| i.ip.as_deref()?.parse().ok())
    })
    .await
    .unwrap_or_else(|| panic!("the allocator gave {name} no address"));
    (found, Instant::now())
}

/// Polls the router's FIB every 10 ms until `addr` goes to exactly `want`; the time it took.
async fn wait_routed(lab: &Lab, addr: IpAddr, want: &[&str], timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < timeout {
        last = lab.routed_via(addr).unwrap();
        if last == want {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{addr}: routed via {last:?}, want {want:?} within {timeout:?}\n{}",
        lab.vtysh(&format!("show ip bgp {addr}/32")).unwrap_or_default()
    );
}

/// New connections from the client to `addr`, one every 20 ms, until stopped: (when, serving
/// node or error).
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(Instant, Result<String, String>)>>,
}

impl Traffic {
    fn start(lab: &Lab, addr: IpAddr) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ns = lab.host("client").unwrap().netns.clone();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut log = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = lab::http::get_blocking(&ns, SocketAddr::new(addr, 80), "/", Duration::from_secs(3));
                log.push((Instant::now(), reply.map(|r| r.node.unwrap_or_default()).map_err(|e| e.to_string())));
                std::thread::sleep(Duration::from_millis(20));
            }
            log
        });
        Self { stop, handle }
    }

    fn finish(self) -> Vec<(Instant, Result<String, String>)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn failures(log: &[(Instant, Result<String, String>)]) -> Vec<&(Instant, Result<String, String>)> {
    log.iter().filter(|(_, r)| r.is_err()).collect()
}

/// Every node with an endpoint advertises the address, the router spreads flows over all of
/// them; with `externalTrafficPolicy: Local` only nodes with a usable endpoint do, and the next
/// hops follow the endpoints; an agent restarted in place withdraws no route; hostile or
/// unreachable peers are reported and change nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_the_nodes_holding_the_address_and_the_router_spreads_flows() {
    let lab = start("ecmp", &[]).await;
    serve_on(&lab, &["n1", "n2", "n3"]).await;
    endpoints(&lab, "web", &[Backend::ready("n1"), Backend::ready("n2"), Backend::ready("n3")]).await;
    lab.apply_yaml(&service_yaml("web", "Cluster")).await.unwrap();
    let (ip, written) = address_of(&lab, "web").await;
    let took = wait_routed(&lab, ip, &["n1", "n2", "n3"], Duration::from_secs(10)).await;
    eprintln!("MEASURE status write seen -> 3 next hops in the router's FIB: {took:?} ({:?} since)", written.elapsed());
    assert!(took <= Duration::from_secs(1), "3 next hops after {took:?} (promised: within 1 s of the status write)");

    // 300 new connections from the client reach all three nodes.
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..300 {
        let reply = lab.http_get("client", SocketAddr::new(ip, 80), "/").await.unwrap();
        *served.entry(reply.node.unwrap_or_default()).or_default() += 1;
    }
    eprintln!("MEASURE 300 connections over 3 next hops: {served:?}");
    assert_eq!(served.keys().cloned().collect::<Vec<_>>(), ["n1", "n2", "n3"], "{served:?}");
    assert!(served.values().all(|n| *n >= 30), "uneven spread: {served:?}");

    // The session state is exported (read from BIRD every second).
    for node in ["n1", "n2", "n3"] {
        let agent = lab::agent_name(node);
        let seen = wait_for(Duration::from_secs(3), || async {
            let metrics = lab.scrape(&agent).await?;
            (metrics.contains("purelb_bgp_session_up{peer=\"router\"} 1")
                && metrics.contains("purelb_bgp_advertised_routes{peer=\"router\"} 1"))
            .then_some(())
        })
        .await;
        assert!(seen.is_some(), "{node}:\n{}", lab.scrape(&agent).await.unwrap_or_default());
    }

    // externalTrafficPolicy: Local with endpoints on 2 of 3 nodes: exactly those next hops.
    endpoints(&lab, "local", &[Backend::ready("n1"), Backend::ready("n2")]).await;
    lab.apply_yaml(&service_yaml("local", "Local")).await.unwrap();
    let (lip, _) = address_of(&lab, "local").await;
    wait_routed(&lab, lip, &["n1", "n2"], Duration::from_secs(10)).await;

    // `purelb explain` names the nodes that advertise each routed address: those the router
    // routes it to.
    for (name, addr) in [("web", ip), ("local", lip)] {
        let routed = lab.routed_via(addr).unwrap();
        let explained = wait_for(Duration::from_secs(10), || async {
            let out = std::process::Command::new(purelb_bin())
                .args(["explain", "service", &format!("default/{name}"), "-o", "json", "--kubeconfig"])
                .arg(lab.kubeconfig())
                .output()
                .ok()?;
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let advertised: Vec<String> = report["addresses"][0]["advertisedBy"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            (advertised == routed && report["addresses"][0]["agrees"] == true).then_some(advertised)
        })
        .await;
        assert!(explained.is_some(), "{name}: explain does not say it is advertised by {routed:?}");
    }
    let moved = Instant::now();
    endpoints(&lab, "local", &[Backend::ready("n2"), Backend::ready("n3")]).await;
    let took = wait_routed(&lab, lip, &["n2", "n3"], Duration::from_secs(10)).await;
    eprintln!("MEASURE Local endpoint moved -> next hops follow: {took:?}");
    // Settle time (1 s) + 1 s.
    assert!(moved.elapsed() <= Duration::from_secs(2) + Duration::from_millis(200), "{:?}", moved.elapsed());

    // An agent restarted in place: BIRD keeps running, no route is withdrawn, no request fails.
    let traffic = Traffic::start(&lab, ip);
    let client = lab.client();
    lab::workload::install(&client, &lab.node_names()).await.unwrap();
    lab::workload::new_revision(&client).await.unwrap();
    lab::workload::delete_pod(&client, "n1").await.unwrap();
    let sampler = {
        let netns = lab.topology().router.netns.clone();
        let topology = lab.topology().clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen: Vec<Vec<String>> = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let now = bgp::nodes_of(&topology, &bgp::fib_nexthops(&netns, ip).unwrap());
                if seen.last() != Some(&now) {
                    seen.push(now);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        });
        (stop, handle)
    };
    tokio::task::block_in_place(|| lab.terminate_agent("n1", Duration::from_secs(15))).unwrap();
    lab::workload::replace_pod(&client, "n1").await.unwrap();
    lab.replace_agent("n1").unwrap();
    assert!(lab.wait_ready(&lab::agent_name("n1"), Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = sampler.1.join().unwrap();
    let log = traffic.finish();
    eprintln!(
        "MEASURE agent restarted in place: {} requests, {} failed, next hops {seen:?}",
        log.len(),
        failures(&log).len()
    );
    assert_eq!(seen, [vec!["n1".to_owned(), "n2".to_owned(), "n3".to_owned()]], "a route was withdrawn");
    assert!(failures(&log).is_empty(), "{:?}", failures(&log));

    // An unreachable peer: reported down (metric, Lease annotation, Event) within 10 s; the
    // router's session and routes are untouched.
    let applied = Instant::now();
    lab.apply_yaml(
        "apiVersion: purelb.io/v2
kind: BGPPeer
metadata: {name: nobody, namespace: purelb-system}
spec: {peerAddress: 192.0.2.254, peerASN: 64999, localASN: 64513}
",
    )
    .await
    .unwrap();
    let leases: Api<Lease> = Api::namespaced(lab.client(), "purelb-system");
    let reported = wait_for(Duration::from_secs(10), || async {
        let lease = leases.get(&contract::node_lease_name("n2")).await.ok()?;
        let bgp = lease.annotations().get(contract::LEASE_ANNOTATION_BGP)?.clone();
        let down = bgp.split(',').any(|s| s.starts_with("nobody=") && s != "nobody=Established");
        (down && bgp.contains("router=Established")).then_some(bgp)
    })
    .await;
    assert!(reported.is_some(), "the Lease does not show the session down");
    let metrics = lab.scrape(&lab::agent_name("n2")).await.unwrap_or_default();
    assert!(metrics.contains("purelb_bgp_session_up{peer=\"nobody\"} 0"), "{metrics}");
    let events: Api<Event> = Api::all(lab.client());
    let event = wait_for(Duration::from_secs(10).saturating_sub(applied.elapsed()), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some(contract::reasons::BGP_SESSION_DOWN)
                && e.message.as_deref().is_some_and(|m| m.contains("nobody"))
                && e.involved_object.kind.as_deref() == Some("Node")
        })
    })
    .await;
    assert!(event.is_some(), "no BGPSessionDown Event within 10 s");
    eprintln!("MEASURE unreachable peer -> reported down: {:?}", applied.elapsed());
    assert_eq!(lab.routed_via(ip).unwrap(), ["n1", "n2", "n3"]);

    // Hostile input: what the schema can check is refused at apply; the rest is a ConfigError
    // Event on the BGPPeer, and BIRD is never given a configuration it rejects.
    for (spec, why) in [
        ("{peerAddress: 192.0.2.1, peerASN: 0, localASN: 64513}", "ASN 0"),
        ("{peerAddress: 'not an address', peerASN: 1, localASN: 2}", "address"),
        ("{peerAddress: 192.0.2.1, peerASN: 1, localASN: 2, holdTime: soon}", "hold time"),
    ] {
        let yaml = format!(
            "apiVersion: purelb.io/v2\nkind: BGPPeer\nmetadata: {{name: hostile, namespace: purelb-system}}\nspec: {spec}\n"
        );
        assert!(lab.apply_yaml(&yaml).await.is_err(), "{why} was accepted");
    }
    let community = "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: tagged, namespace: purelb-system}
spec:
  remote:
    v4pool: {pool: 203.0.113.30/32, subnet: 203.0.113.0/24, aggregation: /32}
    bgp: {communities: [not-a-community]}
";
    assert!(lab.apply_yaml(community).await.is_err(), "a community that is not a:b was accepted");
    let errors_before = lab.metric(&lab::agent_name("n3"), "purelb_bgp_config_errors_total").await;
    lab.apply_yaml(
        "apiVersion: purelb.io/v2
kind: BGPPeer
metadata: {name: hostile, namespace: purelb-system}
spec: {peerAddress: 300.1.2.3, peerASN: 64512, localASN: 64513, holdTime: 2s}
",
    )
    .await
    .unwrap();
    let event = wait_for(Duration::from_secs(10), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("ConfigError") && e.involved_object.name.as_deref() == Some("hostile")
        })
    })
    .await;
    let message = event.and_then(|e| e.message).unwrap_or_default();
    assert!(message.contains("spec.peerAddress") && message.contains("300.1.2.3"), "ConfigError: {message:?}");
    // The allocator validates BGPPeers too: Ready=False with the same message, and True for the
    // good one (`kubectl get bgpp` shows it).
    let peers: Api<purelb::api::BGPPeer> = Api::namespaced(lab.client(), "purelb-system");
    let ready_of = |p: &purelb::api::BGPPeer| {
        p.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready").map(|c| (c.status.clone(), c.message.clone()))
    };
    let hostile = wait_for(Duration::from_secs(10), || async {
        let p = peers.get("hostile").await.ok()?;
        ready_of(&p).filter(|(s, _)| s == "False")
    })
    .await;
    assert!(hostile.is_some_and(|(_, m)| m.contains("spec.peerAddress")), "no Ready=False on BGPPeer hostile");
    let router = peers.get(bgp::PEER_NAME).await.unwrap();
    assert_eq!(ready_of(&router).map(|(s, _)| s), Some("True".to_owned()), "{:?}", router.status);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lab.metric(&lab::agent_name("n3"), "purelb_bgp_config_errors_total").await, errors_before);
    assert_eq!(errors_before, Some(0.0));
    assert_eq!(lab.routed_via(ip).unwrap(), ["n1", "n2", "n3"]);
}

/// A node that stops (its BIRD and agent frozen): BFD (3 × 300 ms) takes its route out of the
/// router within 1.5 s; requests fail only inside that window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_leaves_the_router_within_bfd_time() {
    let lab = start("bfd", &[]).await;
    serve_on(&lab, &["n1", "n2", "n3"]).await;
    endpoints(&lab, "web", &[Backend::ready("n1"), Backend::ready("n2"), Backend::ready("n3")]).await;
    lab.apply_yaml(&service_yaml("web", "Cluster")).await.unwrap();
    let (ip, _) = address_of(&lab, "web").await;
    wait_routed(&lab, ip, &["n1", "n2", "n3"], Duration::from_secs(10)).await;
    // BFD comes up after the BGP session (the router starts it for a dynamic neighbour once
    // established): wait until the router has it up with every node.
    let bfd = wait_for(Duration::from_secs(30), || async { (lab.bfd_sessions_up().ok()? == 3).then_some(()) }).await;
    assert!(bfd.is_some(), "BFD not up with every node:\n{}", lab.vtysh("show bfd peers brief").unwrap_or_default());
    let traffic = Traffic::start(&lab, ip);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen = Instant::now();
    lab.pause(&bgp::bird_name("n1")).unwrap();
    lab.pause(&lab::agent_name("n1")).unwrap();
    // n1 also stops answering: its HTTP server is frozen too.
    lab.pause(&lab::serve_name("n1")).unwrap();
    let took = wait_routed(&lab, ip, &["n2", "n3"], Duration::from_secs(10)).await;
    eprintln!("MEASURE node frozen -> route withdrawn by BFD: {took:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = traffic.finish();
    for name in [bgp::bird_name("n1"), lab::agent_name("n1"), lab::serve_name("n1")] {
        lab.resume(&name).unwrap();
    }
    assert!(took <= Duration::from_millis(1500), "the route stayed {took:?} (BFD 3 × 300 ms promises 1.5 s)");
    let late: Vec<_> = failures(&log)
        .into_iter()
        .filter(|(t, _)| t.saturating_duration_since(frozen) > took + Duration::from_secs(3))
        .collect();
    eprintln!("MEASURE node frozen: {} requests, {} failed", log.len(), failures(&log).len());
    // A request that started before the route was withdrawn may time out (3 s) after it.
    assert!(late.is_empty(), "requests failed after the route was withdrawn: {late:?}");
}

/// A node going away (cordoned, then its agent stopped): the routes carry GRACEFUL_SHUTDOWN,
/// then leave the router's FIB, and only then do the addresses leave the node; no new
/// connection fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_leaves_the_router_before_its_addresses_go_and_no_request_fails() {
    let lab = start("drain", &[]).await;
    lab::workload::install(&lab.client(), &lab.node_names()).await.unwrap();
    serve_on(&lab, &["n1", "n2", "n3"]).await;
    endpoints(&lab, "web", &[Backend::ready("n1"), Backend::ready("n2"), Backend::ready("n3")]).await;
    lab.apply_yaml(&service_yaml("web", "Cluster")).await.unwrap();
    let (ip, _) = address_of(&lab, "web").await;
    wait_routed(&lab, ip, &["n1", "n2", "n3"], Duration::from_secs(10)).await;
    let traffic = Traffic::start(&lab, ip);
    tokio::time::sleep(Duration::from_millis(500)).await;
    lab::workload::cordon(&lab.client(), "n1", true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lab.routed_via(ip).unwrap(), ["n1", "n2", "n3"], "cordoning alone withdrew the route");
    let stopping = Instant::now();
    let (route_gone, address_gone) = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let term = scope.spawn(|| lab.terminate_agent("n1", Duration::from_secs(20)).unwrap());
            let mut route_gone = None;
            let mut address_gone = None;
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && (route_gone.is_none() || address_gone.is_none()) {
                if route_gone.is_none() && !lab.routed_via(ip).unwrap().contains(&"n1".to_owned()) {
                    route_gone = Some(stopping.elapsed());
                }
                if address_gone.is_none() && !lab.holders(ip).unwrap().contains(&"n1".to_owned()) {
                    address_gone = Some(stopping.elapsed());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let status = term.join().unwrap();
            eprintln!("agent n1 stopped: {status:?}");
            (route_gone, address_gone)
        })
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = traffic.finish();
    eprintln!(
        "MEASURE drain: route left the FIB after {route_gone:?}, address left n1 after {address_gone:?}; {} requests, {} failed",
        log.len(),
        failures(&log).len()
    );
    let (route_gone, address_gone) =
        (route_gone.expect("the route never left"), address_gone.expect("the address never left"));
    assert!(route_gone < address_gone, "the address left n1 ({address_gone:?}) before the route ({route_gone:?})");
    assert!(failures(&log).is_empty(), "{:?}", failures(&log));
    let agent_log = std::fs::read_to_string(lab.dir().join(format!("{}.log", lab::agent_name("n1")))).unwrap();
    assert!(agent_log.contains("routes tagged GRACEFUL_SHUTDOWN"), "{agent_log}");
}

/// A dual-stack lab: IPv4 routes over the IPv4 sessions, IPv6 routes over the IPv6 sessions
/// (`api.md` §7), both spread over every node; the client reaches the IPv6 address too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_addresses_are_routed_over_the_session_of_their_family() {
    let mut options = LabOptions::new(&lab::test_prefix("bgp", "dual"), 3)
        .lab_bin(LAB_BIN)
        .purelb_bin(purelb_bin())
        .bgp(true)
        .dual_stack(true)
        .ready_timeout(Duration::from_secs(30));
    options.agent_args = ["--lease-duration=2s", "--renew-interval=500ms"].iter().map(|s| (*s).to_owned()).collect();
    let lab = Lab::start(options).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(lab.client(), "purelb-system");
    let up = wait_for(Duration::from_secs(30), || async {
        for node in lab.node_names() {
            let lease = leases.get(&contract::node_lease_name(&node)).await.ok()?;
            let bgp = lease.annotations().get(contract::LEASE_ANNOTATION_BGP)?.clone();
            (bgp == "router=Established,router6=Established").then_some(())?;
        }
        Some(())
    })
    .await;
    assert!(up.is_some(), "sessions not Established:\n{}", lab.vtysh("show bgp summary").unwrap_or_default());
    serve_on(&lab, &["n1", "n2", "n3"]).await;
    endpoints(&lab, "web", &[Backend::ready("n1"), Backend::ready("n2"), Backend::ready("n3")]).await;
    lab.apply_yaml(
        "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations: {purelb.io/service-group: routed}
spec:
  type: LoadBalancer
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 80}
",
    )
    .await
    .unwrap();
    let services: Api<Service> = Api::namespaced(lab.client(), "default");
    let ips: Vec<IpAddr> = wait_for(Duration::from_secs(20), || async {
        let svc = services.get("web").await.ok()?;
        let ips: Vec<IpAddr> =
            svc.status?.load_balancer?.ingress?.iter().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect();
        (ips.len() == 2).then_some(ips)
    })
    .await
    .expect("no dual-stack addresses");
    for ip in &ips {
        wait_routed(&lab, *ip, &["n1", "n2", "n3"], Duration::from_secs(10)).await;
    }
    let v6 = ips.iter().find(|ip| ip.is_ipv6()).copied().unwrap();
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..60 {
        let reply = lab.http_get("client", SocketAddr::new(v6, 80), "/").await.unwrap();
        *served.entry(reply.node.unwrap_or_default()).or_default() += 1;
    }
    eprintln!("MEASURE 60 IPv6 connections over 3 next hops: {served:?}");
    assert_eq!(served.len(), 3, "{served:?}");
    // Each family's routes only over the session of that family.
    let summary = lab.vtysh("show bgp ipv6 unicast summary").unwrap();
    assert!(summary.contains("2001:db8::11"), "{summary}");
    assert!(!lab.vtysh("show bgp ipv4 unicast 2001:db8:f::10/128").unwrap_or_default().contains("2001:db8:f::10/128 "));
    // A passing run leaves nothing behind: the daemons' directories and logs go with the lab's.
    let dir = lab.dir().to_owned();
    lab.shutdown().unwrap();
    let left: Vec<_> =
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(!dir.exists(), "{} is left with {left:?}", dir.display());
}
