//! `purelb agent` in the network-namespace lab, as root, with the real binary on every node
//! (leases of 2 s renewed every 500 ms): local addresses on exactly the hash winner and served
//! to the client host, failover after SIGKILL, graceful handover on SIGTERM, remote addresses on
//! every node's `kube-lb0` with the aggregation prefix, withdrawal when the Service goes,
//! orphan removal at restart (an administrator's address in the pool range stays) and drift repair.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use purelb_e2e::lab::wait_for;
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use purelb::{
    api::contract,
    core::election,
    k8s_openapi::api::{
        coordination::v1::Lease,
        core::v1::{Event, Service},
    },
    kube::{Api, api::DeleteParams},
};
use purelb_e2e::lab::{self, Backend, Lab, LabOptions, ServiceBackends};

const LAB_BIN: &str = env!("CARGO_BIN_EXE_purelb-lab");

async fn start(tag: &str) -> Lab {
    start_with(tag, false).await
}

async fn start_with(tag: &str, dual_stack: bool) -> Lab {
    let mut options = LabOptions::new(&prefix(tag), 3)
        .dual_stack(dual_stack)
        .lab_bin(LAB_BIN)
        .purelb_bin(purelb_bin())
        .ready_timeout(Duration::from_secs(30));
    options.agent_args =
        ["--lease-duration=2s", "--renew-interval=500ms", "--handover-timeout=5s", "--orphan-sweep-interval=2s"]
            .iter()
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
    lab
}

const LOCAL_GROUP: &str = "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: local, namespace: purelb-system}
spec:
  local:
    v4pool: {subnet: 192.0.2.0/24, pool: 192.0.2.240/29}
";

const REMOTE_GROUP: &str = "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: remote, namespace: purelb-system}
spec:
  remote:
    v4pool: {subnet: 198.51.100.0/24, pool: 198.51.100.16/28, aggregation: /28}
";

fn service_yaml(name: &str, group: &str) -> String {
    service_yaml_with(name, group, "Cluster")
}

fn service_yaml_with(name: &str, group: &str, policy: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  annotations: {{purelb.io/service-group: {group}}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: {policy}
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

/// Waits until exactly `want` hold `addr` (sorted node names).
async fn wait_holders(lab: &Lab, addr: IpAddr, want: &[&str], timeout: Duration) -> Duration {
    let started = Instant::now();
    let got = wait_for(timeout, || async { (lab.holders(addr).ok()? == want).then_some(()) }).await;
    assert!(got.is_some(), "{addr}: holders {:?}, want {want:?} within {timeout:?}", lab.holders(addr).unwrap());
    started.elapsed()
}

/// The `ip -o addr` lines of `dev` in a node that mention `addr`.
fn addr_lines(lab: &Lab, node: &str, dev: &str, addr: IpAddr) -> Vec<String> {
    let out = lab.exec_ok(node, "ip", &["-o", "addr", "show", "dev", dev]).unwrap();
    out.lines().filter(|l| l.contains(&format!(" {addr}/"))).map(str::to_owned).collect()
}

async fn serve_everywhere(lab: &Lab, name: &str) {
    let mut backends = ServiceBackends::new("default", name).port_name("http");
    for node in lab.node_names() {
        lab.serve(&node, 80).await.unwrap();
        backends = backends.backend(Backend::ready(&node));
    }
    lab.set_endpoints(&backends).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_address_on_the_hash_winner_serves_and_fails_over_after_sigkill() {
    let lab = start("loc").await;
    lab.apply_yaml(LOCAL_GROUP).await.unwrap();
    serve_everywhere(&lab, "web").await;
    let applied = Instant::now();
    lab.apply_yaml(&service_yaml("web", "local")).await.unwrap();
    let ip = address_of(&lab, "web").await;
    let names = lab.node_names();
    let winner = election::elect(names.iter().map(String::as_str), ip).unwrap().to_owned();
    wait_holders(&lab, ip, &[winner.as_str()], Duration::from_secs(20)).await;
    eprintln!("MEASURE Service applied -> address on the winner {winner}: {:?}", applied.elapsed());
    // Prefix of the subnet, noprefixroute, the ownership mark, a finite lifetime.
    let lines = addr_lines(&lab, &winner, "eth0", ip);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&format!("{ip}/24")), "{}", lines[0]);
    assert!(lines[0].contains("noprefixroute"), "{}", lines[0]);
    assert!(lines[0].contains("valid_lft") && !lines[0].contains("valid_lft forever"), "{}", lines[0]);

    let reply = lab.http_get("client", SocketAddr::new(ip, 80), "/").await.unwrap();
    assert_eq!((reply.status, reply.node.as_deref()), (200, Some(winner.as_str())));

    // The winner's Lease says what it holds.
    let leases: Api<Lease> = Api::namespaced(lab.client(), "purelb-system");
    let announcing = wait_for(Duration::from_secs(10), || async {
        let lease = leases.get(&contract::node_lease_name(&winner)).await.ok()?;
        let value = lease.metadata.annotations?.get(contract::LEASE_ANNOTATION_ANNOUNCING)?.clone();
        value.contains(&format!("{ip}%eth0")).then_some(value)
    })
    .await;
    assert!(announcing.is_some(), "the winner's Lease does not list {ip}");

    // SIGKILL the holder: the address moves to the winner among the others.
    let rest: Vec<&str> = names.iter().map(String::as_str).filter(|n| *n != winner).collect();
    let successor = election::elect(rest.iter().copied(), ip).unwrap().to_owned();
    let killed = Instant::now();
    lab.kill_agent(&winner).unwrap();
    let moved =
        wait_for(Duration::from_secs(20), || async { lab.holders(ip).ok()?.contains(&successor).then_some(()) }).await;
    assert!(moved.is_some(), "{successor} did not take {ip}: {:?}", lab.holders(ip).unwrap());
    eprintln!("MEASURE SIGKILL -> {successor} holds the address: {:?}", killed.elapsed());
    let third: Vec<&str> = rest.iter().copied().filter(|n| *n != successor).collect();
    assert!(!lab.holders(ip).unwrap().iter().any(|h| third.contains(&h.as_str())), "a third node took it too");
    let page = wait_for(Duration::from_secs(10), || async {
        let reply = lab.http_get("client", SocketAddr::new(ip, 80), "/").await.ok()?;
        (reply.status == 200 && reply.node.as_deref() == Some(successor.as_str())).then_some(())
    })
    .await;
    assert!(page.is_some(), "the client never reached {successor}");
    eprintln!("MEASURE SIGKILL -> page from {successor}: {:?}", killed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_address_on_every_node_with_the_aggregation_prefix_and_gone_with_the_service() {
    let lab = start("rem").await;
    lab.apply_yaml(REMOTE_GROUP).await.unwrap();
    lab.apply_yaml(&service_yaml("routed", "remote")).await.unwrap();
    let ip = address_of(&lab, "routed").await;
    wait_holders(&lab, ip, &["n1", "n2", "n3"], Duration::from_secs(20)).await;
    for node in lab.node_names() {
        let lines = addr_lines(&lab, &node, "kube-lb0", ip);
        assert_eq!(lines.len(), 1, "{node}: {lines:?}");
        assert!(lines[0].contains(&format!("{ip}/28")), "{node}: {}", lines[0]);
        assert!(lines[0].contains("valid_lft forever"), "{node}: {}", lines[0]);
    }
    let services: Api<Service> = Api::namespaced(lab.client(), "default");
    let deleted = Instant::now();
    services.delete("routed", &DeleteParams::default()).await.unwrap();
    wait_holders(&lab, ip, &[], Duration::from_secs(20)).await;
    eprintln!("MEASURE Service deleted -> address gone from every node: {:?}", deleted.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_go_administrator_addresses_stay_and_drift_is_repaired() {
    let lab = start("orp").await;
    lab.apply_yaml(LOCAL_GROUP).await.unwrap();
    lab.apply_yaml(&service_yaml("web", "local")).await.unwrap();
    let ip = address_of(&lab, "web").await;
    let names = lab.node_names();
    let winner = election::elect(names.iter().map(String::as_str), ip).unwrap().to_owned();
    wait_holders(&lab, ip, &[winner.as_str()], Duration::from_secs(20)).await;

    // Drift: someone deletes the held address; it comes back.
    let removed = Instant::now();
    lab.exec_ok(&winner, "ip", &["addr", "del", &format!("{ip}/24"), "dev", "eth0"]).unwrap();
    wait_holders(&lab, ip, &[winner.as_str()], Duration::from_secs(5)).await;
    eprintln!("MEASURE drift: address deleted -> back: {:?}", removed.elapsed());
    assert!(removed.elapsed() < Duration::from_secs(5));

    // An administrator's address inside the pool range, without our mark, on another node.
    let other = names.iter().find(|n| **n != winner).unwrap().clone();
    lab.exec_ok(&other, "ip", &["addr", "add", "192.0.2.247/24", "dev", "eth0"]).unwrap();
    let admin: IpAddr = "192.0.2.247".parse().unwrap();
    // Several orphan sweeps (every 2 s) and address-change passes run meanwhile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(lab.holders(admin).unwrap(), vec![other.clone()], "the administrator's address must stay");

    // Orphan after a restart: kill the holder's agent, delete the Service, restart.
    lab.kill_agent(&winner).unwrap();
    let services: Api<Service> = Api::namespaced(lab.client(), "default");
    services.delete("web", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(lab.holders(ip).unwrap().contains(&winner), "the killed agent's address stays until it restarts");
    let restarted = Instant::now();
    lab.restart_agent(&winner).unwrap();
    wait_holders(&lab, ip, &[], Duration::from_secs(20)).await;
    eprintln!("MEASURE restart -> orphan removed: {:?}", restarted.elapsed());
    assert_eq!(lab.holders(admin).unwrap(), vec![other]);
}

/// Known gap (agent issue, `docs/agent.md`): about one run in four, a connection that is in
/// flight when the client's neighbour entry moves to the successor's MAC is reset by the
/// successor, so this strict zero-failure check is not part of the default run yet. Run it with
/// `cargo test -p purelb-e2e --test agent -- --ignored sigterm`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "one in ~4 runs a connection in flight at the ARP switch is reset; see docs/agent.md"]
async fn sigterm_hands_the_address_over_without_failed_requests() {
    let lab = start("trm").await;
    lab.apply_yaml(LOCAL_GROUP).await.unwrap();
    serve_everywhere(&lab, "web").await;
    lab.apply_yaml(&service_yaml("web", "local")).await.unwrap();
    let ip = address_of(&lab, "web").await;
    let names = lab.node_names();
    let winner = election::elect(names.iter().map(String::as_str), ip).unwrap().to_owned();
    wait_holders(&lab, ip, &[winner.as_str()], Duration::from_secs(20)).await;
    let rest: Vec<&str> = names.iter().map(String::as_str).filter(|n| *n != winner).collect();
    let successor = election::elect(rest.iter().copied(), ip).unwrap().to_owned();
    // Let the client learn the holder's MAC first.
    assert_eq!(lab.http_get("client", SocketAddr::new(ip, 80), "/").await.unwrap().status, 200);

    let target = SocketAddr::new(ip, 80);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client_ns = lab.host("client").unwrap().netns.clone();
    let flag = stop.clone();
    let requests = std::thread::spawn(move || {
        let mut log: Vec<(Instant, Result<String, String>)> = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let reply = lab::http::get_blocking(&client_ns, target, "/", Duration::from_secs(3));
            let at = Instant::now();
            log.push((at, reply.map(|r| r.node.unwrap_or_default()).map_err(|e| e.to_string())));
            std::thread::sleep(Duration::from_millis(10));
        }
        log
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let terminated = Instant::now();
    let status = tokio::task::block_in_place(|| lab.terminate_agent(&winner, Duration::from_secs(15))).unwrap();
    eprintln!("MEASURE SIGTERM -> agent exited ({status:?}): {:?}", terminated.elapsed());
    wait_holders(&lab, ip, &[successor.as_str()], Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let log = requests.join().unwrap();
    let failures: Vec<_> = log.iter().filter(|(_, r)| r.is_err()).collect();
    let last_old = log.iter().filter(|(_, r)| r.as_deref() == Ok(winner.as_str())).map(|(t, _)| *t).max();
    let first_new = log.iter().filter(|(_, r)| r.as_deref() == Ok(successor.as_str())).map(|(t, _)| *t).min();
    if let (Some(a), Some(b)) = (last_old, first_new) {
        eprintln!(
            "MEASURE handover gap (last reply from {winner} -> first from {successor}): {:?}",
            b.saturating_duration_since(a)
        );
    }
    eprintln!("MEASURE handover: {} requests, {} failed", log.len(), failures.len());
    assert!(first_new.is_some(), "no reply from {successor}");
    assert!(failures.is_empty(), "failed requests during the handover: {failures:?}");
    // The old node's Lease is gone.
    let leases: Api<Lease> = Api::namespaced(lab.client(), "purelb-system");
    assert!(leases.get_opt(&contract::node_lease_name(&winner)).await.unwrap().is_none());
}

async fn endpoints(lab: &Lab, name: &str, backends: &[Backend]) {
    let mut b = ServiceBackends::new("default", name).port_name("http");
    for backend in backends {
        b = b.backend(backend.clone());
    }
    lab.set_endpoints(&b).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_traffic_policy_local_follows_usable_endpoints() {
    let lab = start("etp").await;
    lab.apply_yaml(LOCAL_GROUP).await.unwrap();
    lab.apply_yaml(REMOTE_GROUP).await.unwrap();

    // Remote: only the node with a usable endpoint; withdrawn after the settle time; back again.
    endpoints(&lab, "routed", &[Backend::ready("n2"), Backend::not_ready("n3")]).await;
    lab.apply_yaml(&service_yaml_with("routed", "remote", "Local")).await.unwrap();
    let rip = address_of(&lab, "routed").await;
    wait_holders(&lab, rip, &["n2"], Duration::from_secs(20)).await;
    let flipped = Instant::now();
    endpoints(&lab, "routed", &[Backend::not_ready("n2"), Backend::not_ready("n3")]).await;
    let waited = wait_holders(&lab, rip, &[], Duration::from_secs(10)).await;
    eprintln!("MEASURE endpoint not ready -> remote address withdrawn: {:?}", flipped.elapsed());
    assert!(waited >= Duration::from_millis(800), "withdrawn before the settle time: {waited:?}");
    let flipped = Instant::now();
    endpoints(&lab, "routed", &[Backend::ready("n2"), Backend::ready("n3")]).await;
    wait_holders(&lab, rip, &["n2", "n3"], Duration::from_secs(10)).await;
    eprintln!("MEASURE endpoint ready -> remote address announced: {:?}", flipped.elapsed());

    // Local: the holder is a node with a usable endpoint; with none, nobody and a Warning.
    endpoints(&lab, "web", &[Backend::ready("n3")]).await;
    lab.apply_yaml(&service_yaml_with("web", "local", "Local")).await.unwrap();
    let ip = address_of(&lab, "web").await;
    wait_holders(&lab, ip, &["n3"], Duration::from_secs(20)).await;
    endpoints(&lab, "web", &[Backend::ready("n1")]).await;
    wait_holders(&lab, ip, &["n1"], Duration::from_secs(20)).await;
    endpoints(&lab, "web", &[Backend::not_ready("n1")]).await;
    wait_holders(&lab, ip, &[], Duration::from_secs(20)).await;
    let events: Api<Event> = Api::namespaced(lab.client(), "default");
    let warned = wait_for(Duration::from_secs(10), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("AnnouncementFailed")
                    && e.message.as_deref().is_some_and(|m| m.contains("no node has a usable endpoint"))
            })
            .map(|e| e.message.unwrap_or_default())
    })
    .await;
    assert!(warned.is_some(), "no AnnouncementFailed Warning for the Service without endpoints");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_local_service_is_announced_in_both_families() {
    let lab = start_with("dual", true).await;
    lab.apply_yaml(
        "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: local, namespace: purelb-system}
spec:
  local:
    v4pool: {subnet: 192.0.2.0/24, pool: 192.0.2.240/29}
    v6pool: {subnet: 2001:db8::/64, pool: 2001:db8::f0/124}
    skipIPv6DAD: true
",
    )
    .await
    .unwrap();
    serve_everywhere(&lab, "web").await;
    lab.apply_yaml(
        "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations: {purelb.io/service-group: local}
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
    .expect("two addresses");
    let names = lab.node_names();
    for ip in ips {
        let winner = election::elect(names.iter().map(String::as_str), ip).unwrap().to_owned();
        wait_holders(&lab, ip, &[winner.as_str()], Duration::from_secs(20)).await;
        let lines = addr_lines(&lab, &winner, "eth0", ip);
        assert_eq!(lines.len(), 1, "{lines:?}");
        if ip.is_ipv6() {
            assert!(lines[0].contains(&format!("{ip}/64")), "{}", lines[0]);
            assert!(lines[0].contains("nodad"), "{}", lines[0]);
            // Deprecated at once (0) or one second after the add (see docs/agent.md).
            assert!(lines[0].contains("preferred_lft 0sec") || lines[0].contains("preferred_lft 1sec"), "{}", lines[0]);
        }
        let reply = wait_for(Duration::from_secs(10), || async {
            let reply = lab.http_get("client", SocketAddr::new(ip, 80), "/").await.ok()?;
            (reply.status == 200).then_some(reply)
        })
        .await;
        assert!(reply.is_some(), "no page through {ip}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_the_api_yields_to_its_successor() {
    let lab = start("cut").await;
    lab.apply_yaml(LOCAL_GROUP).await.unwrap();
    lab.apply_yaml(&service_yaml("web", "local")).await.unwrap();
    let ip = address_of(&lab, "web").await;
    let names = lab.node_names();
    let winner = election::elect(names.iter().map(String::as_str), ip).unwrap().to_owned();
    wait_holders(&lab, ip, &[winner.as_str()], Duration::from_secs(20)).await;
    let rest: Vec<&str> = names.iter().map(String::as_str).filter(|n| *n != winner).collect();
    let successor = election::elect(rest.iter().copied(), ip).unwrap().to_owned();

    let cut = Instant::now();
    lab.partition_agent(&winner, purelb_e2e::apiserver::FailMode::Refuse).await.unwrap();
    let taken =
        wait_for(Duration::from_secs(20), || async { lab.holders(ip).ok()?.contains(&successor).then(Instant::now) })
            .await
            .expect("the successor never took the address");
    eprintln!("MEASURE holder cut off -> successor holds: {:?}", cut.elapsed());
    wait_holders(&lab, ip, &[successor.as_str()], Duration::from_secs(10)).await;
    let overlap = taken.elapsed();
    eprintln!("MEASURE both nodes held the address for at most: {overlap:?}");
    assert!(overlap < Duration::from_secs(3), "the cut-off node kept the address for {overlap:?}");
    lab.heal_agent(&winner).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_withdraws_and_moves_nothing() {
    let lab = start("out").await;
    lab.apply_yaml(LOCAL_GROUP).await.unwrap();
    lab.apply_yaml(REMOTE_GROUP).await.unwrap();
    lab.apply_yaml(&service_yaml("web", "local")).await.unwrap();
    lab.apply_yaml(&service_yaml("routed", "remote")).await.unwrap();
    let ip = address_of(&lab, "web").await;
    let rip = address_of(&lab, "routed").await;
    let names = lab.node_names();
    let winner = election::elect(names.iter().map(String::as_str), ip).unwrap().to_owned();
    wait_holders(&lab, ip, &[winner.as_str()], Duration::from_secs(20)).await;
    wait_holders(&lab, rip, &["n1", "n2", "n3"], Duration::from_secs(20)).await;
    let processes: Vec<String> = names.iter().map(|n| lab::agent_name(n)).chain(["allocator".to_owned()]).collect();
    for p in &processes {
        lab.partition(p, purelb_e2e::apiserver::FailMode::Refuse).await.unwrap();
    }
    // Four lease durations without the API, then a while after it is back.
    let check = async |span: Duration| {
        let until = Instant::now() + span;
        while Instant::now() < until {
            assert_eq!(lab.holders(ip).unwrap(), vec![winner.clone()], "the local address moved or vanished");
            assert_eq!(lab.holders(rip).unwrap(), names, "a remote address was withdrawn");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    check(Duration::from_secs(8)).await;
    for p in &processes {
        lab.heal(p).await.unwrap();
    }
    check(Duration::from_secs(5)).await;
}

fn purelb_bin() -> PathBuf {
    lab::built_binary("purelb", &["debug", "release"])
        .expect("build the purelb binary first: cargo build -p purelb --bin purelb")
}

/// Namespace prefix unique to this process and test; also removes labs of dead test runs.
fn prefix(tag: &str) -> String {
    lab::test_prefix("pla", tag)
}
