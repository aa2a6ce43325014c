//! The agent's lab measurements (agent issue, "Performance"; scale issue, "The tail"): 3 nodes,
//! real `purelb agent` processes in network namespaces, real kernel addresses. Run as root:
//! `cargo build --release -p purelb --bin purelb && cargo bench -p purelb-e2e --bench agent_lab`.
//! Settings: `AGENT_LAB_SERVICES` (50: Services present while measuring), `AGENT_LAB_SAMPLES`
//! (1,000 per latency), `AGENT_LAB_SCALE` (5,000: the second size; 0 skips it), `AGENT_LAB_LARGE` (50,000:
//! the RSS at the largest size; 0 skips it), `AGENT_LAB_CURVE` (1,000 and 20,000: more sizes for
//! the RSS cost curve), `AGENT_LAB_DUMP` (a path prefix: every appearance's times as CSV, and
//! the lab's logs kept).
//!
//! - status write → address on the winner's interface, and Service deletion → address gone
//!   from every node: `AGENT_LAB_SAMPLES` Services created one after another, 50 present at a
//!   time; each gets its status (the bench writes it, as the allocator would; no allocator runs,
//!   so nothing else writes) and is deleted 50 steps later. Times come from `ip -ts monitor
//!   address` in each node's namespace (the time `ip` read the kernel's notification), against
//!   the wall-clock time just before the API request was sent.
//! - the floor, measured in the same run: the emulator's watch fan-out (status write → a
//!   watcher over HTTP sees it) plus one netlink address add in a private namespace; p50 and p99
//!   of each.
//! - one idle agent's API requests per minute (the emulator counts requests per token).
//! - SIGKILL of the holder → the successor holds the address (2 s leases).
//! - the same latencies with `AGENT_LAB_SCALE` Services present (the others have addresses no
//!   node can announce and ten endpoints each), then the agents' RSS with them cached, and with
//!   `AGENT_LAB_LARGE` Services (500,000 endpoints) cached.
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
use purelb_e2e::lab::{self, Lab, LabOptions, ProcessStatus, scale::metric_sum};
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

/// Waits for the first event matching `want` among those from index `from` on (polled every 2 ms;
/// the times come from `ip monitor`, not from the poll).
async fn wait_event_from(
    events: &Events,
    from: usize,
    timeout: Duration,
    want: impl Fn(&AddrEvent) -> bool,
) -> Option<AddrEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = events.lock().unwrap().iter().skip(from).find(|e| want(e)).cloned() {
            return Some(e);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
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

/// p50 and p99 of one netlink address add (the agent's own manager) in a private namespace,
/// over 1,000 adds (200 addresses, each added and deleted five times).
fn netlink_add_floor() -> (Duration, Duration) {
    in_new_netns(|netns| async move {
        let _ = netns.ip(&["link", "add", "pl-floor0", "type", "bridge"]);
        let _ = netns.ip(&["link", "set", "pl-floor0", "up"]);
        let manager = AddressManager::new().unwrap();
        let index = manager.link(&"pl-floor0".into()).await.unwrap().unwrap().index;
        let mut samples = Vec::new();
        for round in 0..5 {
            for d in 1..=200u8 {
                let spec =
                    AddressSpec::new(index, IpAddr::V4(Ipv4Addr::new(198, 51, 100, d)), 24).nodad().noprefixroute();
                let start = Instant::now();
                manager.add_or_replace(&spec).await.unwrap();
                samples.push(start.elapsed());
            }
            if round < 4 {
                let _ = netns.ip(&["addr", "flush", "dev", "pl-floor0"]);
            }
        }
        (percentile(&mut samples, 50), percentile(&mut samples, 99))
    })
}

/// Creates Services `{prefix}{from..to}` in the `far` group (an address no node can announce)
/// with a status and one EndpointSlice of ten endpoints each, 16 at a time.
async fn populate(services: &Api<Service>, slices: &Api<EndpointSlice>, prefix: &str, range: std::ops::Range<usize>) {
    stream::iter(range)
        .for_each_concurrent(16, |i| {
            let services = services.clone();
            let slices = slices.clone();
            async move {
                let name = format!("{prefix}{i}");
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
}

/// Decision passes and the seconds they took, summed over every agent (from `/metrics`).
async fn pass_work(lab: &Lab) -> (f64, f64) {
    let mut total = (0.0, 0.0);
    for node in lab.node_names() {
        let page = lab.scrape(&lab::agent_name(&node)).await.unwrap_or_default();
        total.0 += metric_sum(&page, "purelb_decision_passes_total", "");
        total.1 += metric_sum(&page, "purelb_workqueue_work_duration_seconds_sum", "queue=\"agent\"");
    }
    total
}

/// Where the time goes: decision passes per measured change (all agents) and their mean cost.
fn print_pass_work(what: &str, before: (f64, f64), after: (f64, f64), changes: usize) {
    let passes = after.0 - before.0;
    let secs = after.1 - before.1;
    println!(
        "agent-lab: {what}: {:.1} decision passes per change over 3 agents, {:.2} ms each on average ({passes:.0} passes, {:.1} s of work for {changes} changes)",
        passes / changes.max(1) as f64,
        if passes > 0.0 { secs * 1e3 / passes } else { 0.0 },
        secs,
    );
}

/// Address appearance and removal latency over `samples` Services created one after another,
/// One address that appeared: when its status was sent, and where and when `ip monitor` saw it.
struct Appeared {
    name: String,
    ip: IpAddr,
    sent: SystemTime,
    node: String,
    at: SystemTime,
}

/// `window` of them present at a time: each is created, given a status (→ the address appears
/// on the winner) and, `window` steps later, deleted (→ its address is gone from every node).
/// Returns (appear, gone, wrong winners, each appearance for [`tail_parts`]).
async fn appear_and_gone(
    lab: &Lab,
    services: &Api<Service>,
    events: &Events,
    tag: &str,
    samples: usize,
    window: usize,
) -> (Vec<Duration>, Vec<Duration>, usize, Vec<Appeared>) {
    let nodes = lab.node_names();
    // The local pool has 80 addresses: the window's addresses stay distinct.
    let ip_of = |k: usize| IpAddr::V4(Ipv4Addr::new(192, 0, 2, 120 + u8::try_from(k % 80).unwrap()));
    let name_of = |k: usize| format!("{tag}{k}");
    let (mut appear, mut gone, mut wrong_winner, mut appeared) = (Vec::new(), Vec::new(), 0, Vec::new());
    for k in 0..samples + window {
        if k >= window {
            let (ip, name) = (ip_of(k - window), name_of(k - window));
            tokio::time::sleep(Duration::from_millis(10)).await;
            let mark = events.lock().unwrap().len();
            let sent = SystemTime::now();
            services.delete(&name, &DeleteParams::default()).await.unwrap();
            let event = wait_event_from(events, mark, Duration::from_secs(10), |e| !e.added && e.ip == ip)
                .await
                .unwrap_or_else(|| panic!("{ip} of {name} never went away"));
            gone.push(event.at.duration_since(sent).unwrap_or_default());
        }
        if k >= samples {
            continue;
        }
        let (ip, name) = (ip_of(k), name_of(k));
        services.create(&PostParams::default(), &service(&name, "local")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mark = events.lock().unwrap().len();
        let sent = SystemTime::now();
        set_status(services, &name, ip).await;
        let event = wait_event_from(events, mark, Duration::from_secs(10), |e| e.added && e.ip == ip)
            .await
            .unwrap_or_else(|| panic!("{ip} of {name} never appeared"));
        appear.push(event.at.duration_since(sent).unwrap_or_default());
        let winner = election::elect(nodes.iter().map(String::as_str), ip).unwrap();
        if event.node != winner {
            wrong_winner += 1;
        }
        appeared.push(Appeared { name, ip, sent, node: event.node, at: event.at });
    }
    (appear, gone, wrong_winner, appeared)
}

/// Every `added address` line of an agent's log: (its time, the address). The agent writes the
/// line once the kernel has acknowledged the add.
fn added_in_log(path: &std::path::Path) -> Vec<(SystemTime, IpAddr)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(" added address"))
        .filter_map(|l| {
            let stamp = l.split_whitespace().next()?;
            let at: jiff::Timestamp = stamp.parse().ok()?;
            let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(at.as_nanosecond()).ok()?);
            let ip = l.split_whitespace().find_map(|w| w.strip_prefix("ip="))?.parse().ok()?;
            Some((at, ip))
        })
        .collect()
}

/// Where an appearance's time goes, per sample: status write → a watcher in this process sees
/// it (the fan-out under the same load: `seen`), write → the winner's log says the kernel
/// acknowledged the add, and that log line → `ip monitor`'s time (the observer's part; negative
/// when `ip` read the notification before the agent wrote its line). p50, p99 and max of each.
fn tail_parts(lab: &Lab, what: &str, appeared: &[Appeared], seen: &BTreeMap<String, SystemTime>) {
    let logs: BTreeMap<String, Vec<(SystemTime, IpAddr)>> = lab
        .node_names()
        .iter()
        .filter_map(|node| {
            let agent = lab::agent_name(node);
            let path = lab.log_paths().into_iter().find(|(name, _)| *name == agent)?.1;
            Some((node.clone(), added_in_log(&path)))
        })
        .collect();
    let signed_ms = |from: SystemTime, to: SystemTime| match to.duration_since(from) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    };
    let (mut fanout, mut agent, mut observer) = (Vec::new(), Vec::new(), Vec::new());
    // When the winner logged each add (its first line for the address after the status write).
    let logged: Vec<Option<SystemTime>> = appeared
        .iter()
        .map(|a| {
            logs.get(&a.node)
                .and_then(|lines| lines.iter().filter(|(at, ip)| *ip == a.ip && *at >= a.sent).map(|(at, _)| *at).min())
        })
        .collect();
    let us = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros();
    if let Ok(path) = std::env::var("AGENT_LAB_DUMP") {
        let mut csv = String::from("name,ip,node,sent_us,seen_us,logged_us,monitor_us\n");
        for (a, logged) in appeared.iter().zip(&logged) {
            csv += &format!(
                "{},{},{},{},{},{},{}\n",
                a.name,
                a.ip,
                a.node,
                us(a.sent),
                seen.get(&a.name).map_or(0, |t| us(*t)),
                logged.map_or(0, us),
                us(a.at)
            );
        }
        std::fs::write(format!("{path}-{}.csv", what.replace(' ', "_")), csv).unwrap();
    }
    for (a, logged) in appeared.iter().zip(logged) {
        if let Some(at) = seen.get(&a.name) {
            fanout.push(signed_ms(a.sent, *at));
        }
        if let Some(logged) = logged {
            agent.push(signed_ms(a.sent, logged));
            observer.push(signed_ms(logged, a.at));
        }
    }
    for (part, samples) in [
        ("status write → a watcher sees it (fan-out under the same load)", &mut fanout),
        ("status write → the winner logs the kernel's ack of the add", &mut agent),
        ("the winner's log line → ip monitor's time", &mut observer),
    ] {
        if samples.is_empty() {
            println!("agent-lab: tail parts {what}: {part}: no samples");
            continue;
        }
        samples.sort_by(f64::total_cmp);
        let at = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
        println!(
            "agent-lab: tail parts {what}: {part}: n={} p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
            samples.len(),
            at(50),
            at(99),
            samples[samples.len() - 1]
        );
    }
}

/// A watcher in this process on every Service: when it first saw each one with an address.
fn watch_statuses(
    api: Api<Service>,
    label: Option<&str>,
) -> (Arc<Mutex<BTreeMap<String, SystemTime>>>, tokio::task::JoinHandle<()>) {
    let seen: Arc<Mutex<BTreeMap<String, SystemTime>>> = Arc::default();
    let seen_w = seen.clone();
    let config = match label {
        Some(label) => watcher::Config::default().labels(label),
        None => watcher::Config::default(),
    };
    let watch = tokio::spawn(async move {
        let mut stream = watcher(api, config).applied_objects().boxed();
        while let Ok(Some(svc)) = stream.try_next().await {
            let has = svc.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).is_some_and(|i| !i.is_empty());
            if has {
                seen_w.lock().unwrap().entry(svc.metadata.name.unwrap_or_default()).or_insert_with(SystemTime::now);
            }
        }
    });
    (seen, watch)
}

/// Every lab process still runs (a crash during the bench fails it, with the log's tail).
fn all_running(lab: &Lab) {
    for (name, status) in lab.process_status() {
        assert!(
            status.is_running(),
            "{name} stopped during the bench: {status:?}\n{}",
            lab.log_tail(&name, 30).unwrap_or_default()
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn main() {
    let n: usize = std::env::var("AGENT_LAB_SERVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(50).min(60);
    let scale: usize = std::env::var("AGENT_LAB_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let samples: usize = std::env::var("AGENT_LAB_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let large: usize = std::env::var("AGENT_LAB_LARGE").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let prefix = format!("plb{}", std::process::id());
    let purelb_bin = lab::built_binary("purelb", &["release", "debug"])
        .expect("build the purelb binary first: cargo build --release -p purelb --bin purelb");
    let mut options = LabOptions::new(&prefix, 3)
        .lab_bin(lab::built_binary("purelb-lab", &["release", "debug"]).expect("build purelb-lab first"))
        .purelb_bin(purelb_bin.clone())
        .purelb(false, true)
        .ready_timeout(Duration::from_secs(30))
        .keep_logs(std::env::var_os("AGENT_LAB_DUMP").is_some());
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
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let nodes = lab.node_names();
    let (events, _monitors) = monitor(&lab);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. Status write → address on the winner; deletion → gone everywhere (n Services present).
    let work = pass_work(&lab).await;
    let (seen, watch) = watch_statuses(Api::namespaced(client.clone(), "default"), None);
    let (mut appear, mut gone, wrong_winner, appeared) =
        appear_and_gone(&lab, &services, &events, "m", samples, n).await;
    watch.abort();
    tail_parts(&lab, &format!("at {n} Services"), &appeared, &seen.lock().unwrap());
    print_pass_work(&format!("at {n} Services"), work, pass_work(&lab).await, 2 * samples);
    let (_, appear_p99) = summary("status write → address on the winner", &mut appear);
    println!("agent-lab: {wrong_winner} of {samples} addresses appeared on a node other than the hash winner");
    let (_, gone_p99) = summary("Service deletion → address gone from every node", &mut gone);

    // 2. The floor: watch fan-out (status write → a watcher over HTTP sees it) + one netlink add.
    let (seen, watch) = watch_statuses(Api::namespaced(client.clone(), "default"), Some("bench=floor"));
    let mut fanout = Vec::new();
    for i in 0..samples {
        let name = format!("f{i}");
        let mut svc = service(&name, "none");
        svc.metadata.labels = Some([("bench".to_owned(), "floor".to_owned())].into());
        svc.metadata.annotations = None;
        services.create(&PostParams::default(), &svc).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let sent = SystemTime::now();
        set_status(&services, &name, IpAddr::V4(Ipv4Addr::new(203, 0, 113, u8::try_from(i % 256).unwrap()))).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let at = loop {
            if let Some(at) = seen.lock().unwrap().get(&name).copied() {
                break at;
            }
            assert!(Instant::now() < deadline, "the floor's watcher never saw {name}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        fanout.push(at.duration_since(sent).unwrap_or_default());
        if i >= n {
            services.delete(&format!("f{}", i - n), &DeleteParams::default()).await.unwrap();
        }
    }
    watch.abort();
    let (fanout_p50, fanout_p99) = summary("floor: emulator watch fan-out (status write → watcher)", &mut fanout);
    let (netlink_p50, netlink_p99) = tokio::task::spawn_blocking(netlink_add_floor).await.unwrap();
    let floor = fanout_p50 + ms(netlink_p50);
    let floor_p99 = fanout_p99 + ms(netlink_p99);
    println!(
        "agent-lab: floor: netlink add p50 {:.3} ms; floor = fan-out p50 + netlink add p50 = {floor:.2} ms",
        ms(netlink_p50)
    );
    println!(
        "agent-lab: floor p99: netlink add p99 {:.3} ms; floor p99 = fan-out p99 + netlink add p99 = {floor_p99:.2} ms",
        ms(netlink_p99)
    );
    println!(
        "agent-lab: ratio to the floor: address appears p99 {:.1}×, address gone p99 {:.1}× (targets: p99 ≤ 100 ms each: {} / {})",
        appear_p99 / floor,
        gone_p99 / floor,
        if appear_p99 <= 100.0 { "met" } else { "MISSED" },
        if gone_p99 <= 100.0 { "met" } else { "MISSED" },
    );
    println!(
        "agent-lab: tail at {n} Services: address appears p99 / floor p99 = {:.1}× (target ≤ 5×: {})",
        appear_p99 / floor_p99,
        if appear_p99 <= 5.0 * floor_p99 { "met" } else { "MISSED" },
    );
    for i in samples.saturating_sub(n)..samples {
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
        let mark = events.lock().unwrap().len();
        set_status(&services, &name, ip).await;
        let holder =
            wait_event_from(&events, mark, Duration::from_secs(10), |e| e.added && e.ip == ip).await.unwrap().node;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let killed = SystemTime::now();
        lab.kill_agent(&holder).unwrap();
        let event =
            wait_event_from(&events, mark, Duration::from_secs(15), |e| e.added && e.ip == ip && e.node != holder)
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

    // 5. The same latencies with `scale` Services present (with addresses no node can announce,
    //    ten endpoints each), then the RSS with them cached.
    if scale <= n {
        println!("agent-lab: AGENT_LAB_SCALE={scale}: the measurements with many Services are skipped");
        all_running(&lab);
        return;
    }
    let rss_of_each = || nodes.iter().map(|node| rss_kib(pid_of(&lab, &lab::agent_name(node)))).collect::<Vec<u64>>();
    let rss_before = rss_of_each().into_iter().max().unwrap_or(0);
    // The cost curve: the agents' RSS at each size, and per Service above the idle agent.
    let rss_point = |size: usize| {
        let each = rss_of_each();
        let max = each.iter().copied().max().unwrap_or(0);
        let shown: Vec<String> = each.iter().map(|kib| format!("{:.1}", *kib as f64 / 1024.0)).collect();
        println!("agent-lab: agents' RSS at {size} Services: {} MiB", shown.join(" / "));
        println!(
            "agent-lab: cost curve: {size} Services ({} endpoints): agent RSS max {:.1} MiB, {:.0} bytes per Service above the idle agent ({:.1} MiB)",
            size * 10,
            max as f64 / 1024.0,
            max.saturating_sub(rss_before) as f64 * 1024.0 / size as f64,
            rss_before as f64 / 1024.0
        );
        max
    };
    let curve: Vec<usize> = std::env::var("AGENT_LAB_CURVE")
        .unwrap_or_else(|_| "1000,20000".to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let started = Instant::now();
    let mut at = 0;
    for &size in curve.iter().filter(|&&c| c < scale.saturating_sub(n)) {
        populate(&services, &slices, "s", at..size).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        rss_point(size);
        at = size;
    }
    populate(&services, &slices, "s", at..scale.saturating_sub(n)).await;
    println!(
        "agent-lab: created {scale} Services with status and {scale} EndpointSlices ({} endpoints) in {:.1} s",
        scale * 10,
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let work = pass_work(&lab).await;
    let (seen, watch) = watch_statuses(Api::namespaced(client.clone(), "default"), None);
    tokio::time::sleep(Duration::from_secs(2)).await; // its first list of every Service
    let (mut appear, mut gone, _, appeared) = appear_and_gone(&lab, &services, &events, "b", samples, n).await;
    watch.abort();
    tail_parts(&lab, &format!("at {scale} Services"), &appeared, &seen.lock().unwrap());
    print_pass_work(&format!("at {scale} Services"), work, pass_work(&lab).await, 2 * samples);
    let (_, big_appear_p99) =
        summary(&format!("at {scale} Services: status write → address on the winner"), &mut appear);
    summary(&format!("at {scale} Services: Service deletion → address gone from every node"), &mut gone);
    println!(
        "agent-lab: tail at {scale} Services: address appears p99 / floor p99 = {:.1}× (target ≤ 10×: {})",
        big_appear_p99 / floor_p99,
        if big_appear_p99 <= 10.0 * floor_p99 { "met" } else { "MISSED" },
    );
    populate(&services, &slices, "s", scale.saturating_sub(n)..scale).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let max = rss_point(scale);
    println!(
        "agent-lab: agent RSS with {scale} Services and {} endpoints cached: max {:.1} MiB over {} agents (idle before: {:.1} MiB); target ≤ 64 MiB: {}",
        scale * 10,
        max as f64 / 1024.0,
        nodes.len(),
        rss_before as f64 / 1024.0,
        if max <= 64 * 1024 { "met" } else { "MISSED" }
    );
    let mut at = scale;
    for &size in curve.iter().filter(|&&c| c > scale && c < large) {
        populate(&services, &slices, "s", at..size).await;
        tokio::time::sleep(Duration::from_secs(15)).await;
        rss_point(size);
        at = size;
    }
    if large > scale {
        let started = Instant::now();
        populate(&services, &slices, "s", at..large).await;
        println!(
            "agent-lab: created {large} Services with status and {large} EndpointSlices ({} endpoints) in {:.1} s",
            large * 10,
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(20)).await;
        let max = rss_point(large);
        println!(
            "agent-lab: agent RSS with {large} Services and {} endpoints cached: max {:.1} MiB over {} agents; target ≤ 256 MiB: {}",
            large * 10,
            max as f64 / 1024.0,
            nodes.len(),
            if max <= 256 * 1024 { "met" } else { "MISSED" }
        );
    }
    all_running(&lab);
    drop(lab);
}
