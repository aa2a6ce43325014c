//! The agent's lab measurements (agent issue, "Performance"): 3 nodes, real `purelb agent`
//! processes in network namespaces, real kernel addresses. Run as root:
//! `cargo build --release -p purelb --bin purelb && cargo bench -p purelb-e2e --bench agent_lab`
//! (`AGENT_LAB_SERVICES=n` changes the 50 Services, `AGENT_LAB_SCALE=n` the 5,000).
//!
//! - status write → address on the winner's interface, and Service deletion → address gone
//!   from every node, over 50 Services one at a time (the bench writes the status itself, as
//!   the allocator would; no allocator runs, so nothing else writes). Times come from
//!   `ip -ts monitor address` in each node's namespace (kernel notification time), against the
//!   wall-clock time just before the API request was sent.
//! - the floor, measured in the same run: the emulator's watch fan-out (status write → a
//!   watcher over HTTP sees it) plus one netlink address add in a private namespace.
//! - SIGKILL of the holder → the successor holds the address (2 s leases).
//! - one idle agent's API requests per minute (the emulator counts requests per token).
//! - agent RSS with `AGENT_LAB_SCALE` Services (with addresses no node can announce) and ten
//!   endpoints each cached.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_precision_loss)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use futures::{StreamExt, TryStreamExt, stream};
use purelb::{
    core::{
        election,
        netlink::{AddressManager, AddressSpec},
    },
    k8s_openapi::{
        api::{core::v1::Service, discovery::v1::EndpointSlice},
        jiff,
    },
    kube::{
        Api,
        api::{DeleteParams, Patch, PatchParams, PostParams},
        runtime::{WatchStreamExt, watcher},
    },
    testing::in_new_netns,
};
use purelb_e2e::lab::{self, Lab, LabOptions, ProcessStatus};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

const GROUP: &str = "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: local, namespace: purelb-system}
spec:
  local:
    v4pool: {subnet: 192.0.2.0/24, pool: 192.0.2.120-192.0.2.199}
";

/// A group whose subnet is on no node: its Services are cached and evaluated, never announced.
const FAR_GROUP: &str = "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: far, namespace: purelb-system}
spec:
  local:
    v4pool: {subnet: 203.0.113.0/24, pool: 203.0.113.0/24}
";

/// One address change a node's kernel reported.
#[derive(Clone, Debug)]
struct AddrEvent {
    at: SystemTime,
    node: String,
    added: bool,
    ip: IpAddr,
}

type Events = Arc<Mutex<Vec<AddrEvent>>>;

/// Parses one `ip -ts monitor address` line: `[2026-11-25T19:28:26.271342] [Deleted ]2: br0 inet 192.0.2.5/24 ...`.
fn parse_monitor(node: &str, line: &str) -> Option<AddrEvent> {
    let rest = line.strip_prefix('[')?;
    let (stamp, rest) = rest.split_once(']')?;
    let at: jiff::Timestamp = format!("{stamp}Z").parse().ok()?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(at.as_nanosecond()).ok()?);
    let rest = rest.trim_start();
    let (added, rest) = match rest.strip_prefix("Deleted ") {
        Some(r) => (false, r),
        None => (true, rest),
    };
    let mut words = rest.split_whitespace();
    let ip = words.find(|w| *w == "inet" || *w == "inet6").and_then(|_| words.next())?;
    let ip: IpAddr = ip.split('/').next()?.parse().ok()?;
    Some(AddrEvent { at, node: node.to_owned(), added, ip })
}

/// Starts `ip -ts monitor address` in every node; events go to the shared list.
fn monitor(lab: &Lab) -> (Events, Vec<tokio::process::Child>) {
    let events: Events = Arc::default();
    let mut children = Vec::new();
    for node in &lab.topology().nodes {
        let mut child = tokio::process::Command::new("ip")
            .args(["-n", &node.netns, "-ts", "monitor", "address"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let events = events.clone();
        let name = node.name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(e) = parse_monitor(&name, &line) {
                    events.lock().unwrap().push(e);
                }
            }
        });
        children.push(child);
    }
    (events, children)
}

/// Waits for the first event matching `want` at or after `since`.
async fn wait_event(events: &Events, timeout: Duration, want: impl Fn(&AddrEvent) -> bool) -> Option<AddrEvent> {
    lab::wait_for(timeout, || {
        let found = events.lock().unwrap().iter().find(|e| want(e)).cloned();
        async move { found }
    })
    .await
}

fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    samples[(samples.len() * p / 100).min(samples.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(what: &str, samples: &mut [Duration]) -> (f64, f64) {
    let (p50, p99) = (ms(percentile(samples, 50)), ms(percentile(samples, 99)));
    println!(
        "agent-lab: {what}: n={} p50 {p50:.1} ms p99 {p99:.1} ms max {:.1} ms",
        samples.len(),
        ms(samples[samples.len() - 1])
    );
    (p50, p99)
}

fn service(name: &str, group: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {
            "purelb.io/allocated-by": "PureLB", "purelb.io/allocated-from": group, "purelb.io/pool-type": "local"}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "selector": {"app": name}}
    }))
    .unwrap()
}

async fn set_status(api: &Api<Service>, name: &str, ip: IpAddr) {
    let body = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body)).await.unwrap();
}

async fn requests_of(lab: &Lab, token: &str) -> BTreeMap<String, u64> {
    let url = format!("{}/_emulator/requests", lab.api_url());
    let body = tokio::process::Command::new("curl").args(["-sf", &url]).output().await.unwrap().stdout;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let prefix: String = token.chars().take(8).collect();
    let mut out = BTreeMap::new();
    for row in v["requests"].as_array().unwrap() {
        if row["token"] == prefix.as_str() {
            out.insert(
                format!("{} {}", row["verb"].as_str().unwrap(), row["resource"].as_str().unwrap()),
                row["count"].as_u64().unwrap(),
            );
        }
    }
    out
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn pid_of(lab: &Lab, name: &str) -> u32 {
    match lab.status_of(name).unwrap() {
        ProcessStatus::Running { pid } => pid,
        other => panic!("{name} is not running: {other:?}"),
    }
}

/// p50 of one netlink address add (the agent's own manager) in a private namespace.
fn netlink_add_floor() -> Duration {
    in_new_netns(|netns| async move {
        let _ = netns.ip(&["link", "add", "pl-floor0", "type", "bridge"]);
        let _ = netns.ip(&["link", "set", "pl-floor0", "up"]);
        let manager = AddressManager::new().unwrap();
        let index = manager.link(&"pl-floor0".into()).await.unwrap().unwrap().index;
        let mut samples = Vec::new();
        for d in 1..=200u8 {
            let spec = AddressSpec::new(index, IpAddr::V4(Ipv4Addr::new(198, 51, 100, d)), 24).nodad().noprefixroute();
            let start = Instant::now();
            manager.add_or_replace(&spec).await.unwrap();
            samples.push(start.elapsed());
        }
        percentile(&mut samples, 50)
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn main() {
    let n: usize = std::env::var("AGENT_LAB_SERVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(50).min(100);
    let scale: usize = std::env::var("AGENT_LAB_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let prefix = format!("plb{}", std::process::id());
    let purelb_bin = lab::built_binary("purelb", &["release", "debug"])
        .expect("build the purelb binary first: cargo build --release -p purelb --bin purelb");
    let mut options = LabOptions::new(&prefix, 3)
        .lab_bin(lab::built_binary("purelb-lab", &["release", "debug"]).expect("build purelb-lab first"))
        .purelb_bin(purelb_bin.clone())
        .purelb(false, true)
        .ready_timeout(Duration::from_secs(30));
    options.agent_args = ["--lease-duration=2s", "--renew-interval=500ms", "--handover-timeout=5s"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let lab = Lab::start(options).await.unwrap();
    println!("agent-lab: purelb binary {}", purelb_bin.display());
    lab.apply_yaml(GROUP).await.unwrap();
    lab.apply_yaml(FAR_GROUP).await.unwrap();
    let client = lab.client();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let nodes = lab.node_names();
    let (events, _monitors) = monitor(&lab);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. Status write → address on the winner; deletion → gone everywhere.
    let mut appear = Vec::new();
    let mut wrong_winner = 0;
    for i in 0..n {
        let name = format!("m{i}");
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 120 + u8::try_from(i).unwrap()));
        services.create(&PostParams::default(), &service(&name, "local")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = SystemTime::now();
        set_status(&services, &name, ip).await;
        let event = wait_event(&events, Duration::from_secs(10), |e| e.added && e.ip == ip)
            .await
            .unwrap_or_else(|| panic!("{ip} never appeared"));
        appear.push(event.at.duration_since(sent).unwrap_or_default());
        let winner = election::elect(nodes.iter().map(String::as_str), ip).unwrap();
        if event.node != winner {
            wrong_winner += 1;
        }
    }
    let (_, appear_p99) = summary("status write → address on the winner", &mut appear);
    println!("agent-lab: {wrong_winner} of {n} addresses appeared on a node other than the hash winner");
    let mut gone = Vec::new();
    for i in 0..n {
        let name = format!("m{i}");
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 120 + u8::try_from(i).unwrap()));
        let sent = SystemTime::now();
        services.delete(&name, &DeleteParams::default()).await.unwrap();
        let event = wait_event(&events, Duration::from_secs(10), |e| !e.added && e.ip == ip)
            .await
            .unwrap_or_else(|| panic!("{ip} never went away"));
        gone.push(event.at.duration_since(sent).unwrap_or_default());
        assert!(lab.holders(ip).unwrap().is_empty(), "{ip} still held after deletion");
    }
    let (_, gone_p99) = summary("Service deletion → address gone from every node", &mut gone);

    // 2. The floor: watch fan-out (status write → a watcher over HTTP sees it) + one netlink add.
    let floor_api: Api<Service> = Api::namespaced(client.clone(), "default");
    let seen: Arc<Mutex<BTreeMap<String, SystemTime>>> = Arc::default();
    let seen_w = seen.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(floor_api, watcher::Config::default().labels("bench=floor")).applied_objects().boxed();
        while let Ok(Some(svc)) = stream.try_next().await {
            let has = svc.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).is_some_and(|i| !i.is_empty());
            if has {
                seen_w.lock().unwrap().entry(svc.metadata.name.unwrap_or_default()).or_insert_with(SystemTime::now);
            }
        }
    });
    let mut fanout = Vec::new();
    for i in 0..n {
        let name = format!("f{i}");
        let mut svc = service(&name, "none");
        svc.metadata.labels = Some([("bench".to_owned(), "floor".to_owned())].into());
        svc.metadata.annotations = None;
        services.create(&PostParams::default(), &svc).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = SystemTime::now();
        set_status(&services, &name, IpAddr::V4(Ipv4Addr::new(203, 0, 113, u8::try_from(i).unwrap()))).await;
        let at = lab::wait_for(Duration::from_secs(10), || {
            let at = seen.lock().unwrap().get(&name).copied();
            async move { at }
        })
        .await
        .unwrap();
        fanout.push(at.duration_since(sent).unwrap_or_default());
    }
    watch.abort();
    let (fanout_p50, _) = summary("floor: emulator watch fan-out (status write → watcher)", &mut fanout);
    let netlink = tokio::task::spawn_blocking(netlink_add_floor).await.unwrap();
    let floor = fanout_p50 + ms(netlink);
    println!(
        "agent-lab: floor: netlink add p50 {:.3} ms; floor = fan-out p50 + netlink add p50 = {floor:.2} ms",
        ms(netlink)
    );
    println!(
        "agent-lab: ratio to the floor: address appears p99 {:.1}×, address gone p99 {:.1}× (targets: p99 ≤ 100 ms each: {} / {})",
        appear_p99 / floor,
        gone_p99 / floor,
        if appear_p99 <= 100.0 { "met" } else { "MISSED" },
        if gone_p99 <= 100.0 { "met" } else { "MISSED" },
    );
    for i in 0..n {
        let _ = services.delete(&format!("f{i}"), &DeleteParams::default()).await;
    }

    // 3. One idle agent's API requests per minute.
    let agent0 = lab::agent_name(&nodes[0]);
    let token = lab.token(&agent0).unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = requests_of(&lab, &token).await;
    let idle = Duration::from_secs(30);
    tokio::time::sleep(idle).await;
    let after = requests_of(&lab, &token).await;
    let mut per_minute = BTreeMap::new();
    for (k, v) in &after {
        let d = v - before.get(k).copied().unwrap_or(0);
        if d > 0 {
            per_minute.insert(k.clone(), d as f64 * 60.0 / idle.as_secs_f64());
        }
    }
    let total: f64 = per_minute.values().sum();
    println!("agent-lab: idle agent API requests: {total:.0}/min (renew interval 500 ms in this lab): {per_minute:?}");

    // 4. SIGKILL of the holder → the successor holds the address.
    let mut failover = Vec::new();
    for round in 0..3u8 {
        let name = format!("k{round}");
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 180 + round));
        services.create(&PostParams::default(), &service(&name, "local")).await.unwrap();
        set_status(&services, &name, ip).await;
        let holder = wait_event(&events, Duration::from_secs(10), |e| e.added && e.ip == ip).await.unwrap().node;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let killed = SystemTime::now();
        lab.kill_agent(&holder).unwrap();
        let event = wait_event(&events, Duration::from_secs(15), |e| e.added && e.ip == ip && e.node != holder)
            .await
            .unwrap_or_else(|| panic!("nobody took {ip} over from {holder}"));
        failover.push(event.at.duration_since(killed).unwrap_or_default());
        lab.restart_agent(&holder).unwrap();
        assert!(lab.wait_ready(&lab::agent_name(&holder), Duration::from_secs(30)).await);
        services.delete(&name, &DeleteParams::default()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let (_, failover_p99) = summary("SIGKILL of the holder → successor holds the address (2 s leases)", &mut failover);
    println!("agent-lab: failover target ≤ 3 s: {}", if failover_p99 <= 3000.0 { "met" } else { "MISSED" });

    // 5. RSS with `scale` Services and ten endpoints each cached.
    let pid = pid_of(&lab, &agent0);
    let rss_before = rss_kib(pid);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    stream::iter(0..scale)
        .for_each_concurrent(16, |i| {
            let services = services.clone();
            let slices = slices.clone();
            async move {
                let name = format!("s{i}");
                services.create(&PostParams::default(), &service(&name, "far")).await.unwrap();
                let ip = Ipv4Addr::new(203, 0, 113, u8::try_from(i % 256).unwrap());
                set_status(&services, &name, IpAddr::V4(ip)).await;
                let endpoints: Vec<serde_json::Value> = (0..10)
                    .map(|e| {
                        json!({"addresses": [format!("2001:db8:{i:x}::{:x}", e + 1)],
                               "conditions": {"ready": true, "serving": true, "terminating": false},
                               "nodeName": format!("node-{}", e % 3)})
                    })
                    .collect();
                let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-abcde"), "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv6", "endpoints": endpoints, "ports": [{"name": "", "port": 80, "protocol": "TCP"}]
                }))
                .unwrap();
                slices.create(&PostParams::default(), &slice).await.unwrap();
            }
        })
        .await;
    println!(
        "agent-lab: created {scale} Services with status and {scale} EndpointSlices ({} endpoints) in {:.1} s",
        scale * 10,
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut rss = Vec::new();
    for node in &nodes {
        rss.push(rss_kib(pid_of(&lab, &lab::agent_name(node))));
    }
    let max = rss.iter().copied().max().unwrap_or(0);
    println!(
        "agent-lab: agent RSS with {scale} Services and {} endpoints cached: max {:.1} MiB over {} agents (idle before: {:.1} MiB); target ≤ 64 MiB: {}",
        scale * 10,
        max as f64 / 1024.0,
        rss.len(),
        rss_before as f64 / 1024.0,
        if max <= 64 * 1024 { "met" } else { "MISSED" }
    );
    for (name, status) in lab.process_status() {
        assert!(
            status.is_running(),
            "{name} stopped during the bench: {status:?}\n{}",
            lab.log_tail(&name, 30).unwrap_or_default()
        );
    }
    drop(lab);
}
