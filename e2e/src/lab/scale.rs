//! Scale (issue 20): a simulated cluster of many nodes around a few real agents, and what each
//! real agent pays for it.
//!
//! The emulator holds N simulated Nodes and their node Leases, kept alive by one renewer task
//! that calls the agent's own [`purelb::agent::lease::renew`] (same fields, same cadence as a
//! real agent), with subnets spread over the documentation ranges (`198.51.100.0/24`,
//! `203.0.113.0/24` and 32 IPv6 /64s), and Services with EndpointSlices on those nodes. Three
//! real `purelb agent` processes run on the lab's nodes, on `192.0.2.0/24`, a subnet no
//! simulated node has: the failover winner of their addresses is always a real agent.
//!
//! Per size and lease timing it measures, per real agent: CPU share while only renewals flow,
//! RSS, Lease events received per second, decision passes per second; the emulator's CPU share;
//! and the SIGKILL failover of a real agent's address. `purelb-lab scale` prints the table.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use purelb::{
    agent::lease::{self, LeaseContent, LeaseSettings},
    k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice},
    kube::{
        Api, Client, ResourceExt,
        api::{Patch, PatchParams, PostParams},
    },
};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use super::{Lab, LabError, LabOptions, ProcessStatus};

/// Namespace of the install (Leases).
const NAMESPACE: &str = "purelb-system";
/// Nodes per IPv6 subnet of the simulated nodes (32 subnets).
const V6_SUBNETS: usize = 32;

/// A lease duration and renew interval, as the agents' flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// `--lease-duration`.
    #[serde(serialize_with = "secs")]
    pub lease: Duration,
    /// `--renew-interval`.
    #[serde(serialize_with = "secs")]
    pub renew: Duration,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Timing {
    fn describe(self) -> String {
        format!("{} s / {} s", self.lease.as_secs_f64(), self.renew.as_secs_f64())
    }
}

/// How to run the scale measurements.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    /// Simulated node counts, measured in this order (the real agents come on top).
    pub sizes: Vec<usize>,
    /// Lease timings; each gets a lab of its own.
    pub timings: Vec<Timing>,
    /// Services with EndpointSlices on the simulated nodes (every pass of a real agent decides
    /// them all).
    pub services: usize,
    /// The idle measurement window.
    pub window: Duration,
    /// SIGKILL failovers per point.
    pub failovers: usize,
    /// Lab prefix.
    pub prefix: String,
    /// The `purelb` binary.
    pub purelb_bin: Option<PathBuf>,
    /// The `purelb-lab` binary.
    pub lab_bin: Option<PathBuf>,
}

/// One measured point.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// Lease timing of the agents and the simulator.
    pub timing: Timing,
    /// Nodes in the cluster (simulated plus real).
    pub nodes: usize,
    /// Services with EndpointSlices.
    pub services: usize,
    /// Lease renewals the simulator made per second in the window.
    pub renewals_per_s: f64,
    /// Simulated Leases the simulator let lapse in the window: renewals sent more than a lease
    /// duration after the same node's previous one (a real membership change the agents must
    /// act on; non-zero means the machine could not keep the simulated cluster alive).
    pub sim_lapses: u64,
    /// The longest time between two renewals of one simulated node in the window, ms.
    pub sim_max_gap_ms: f64,
    /// Lease events each real agent received per second (mean over the agents).
    pub lease_events_per_s: f64,
    /// Decision passes per second of each real agent (mean): renewals are the only change.
    pub passes_per_s: f64,
    /// CPU share of one core of the busiest real agent, in percent.
    pub agent_cpu_percent: f64,
    /// Agent CPU per Lease event received, in microseconds (mean over the agents).
    pub agent_cpu_us_per_event: f64,
    /// RSS of the largest real agent, MiB.
    pub agent_rss_mib: f64,
    /// CPU share of the API emulator, in percent of one core.
    pub apiserver_cpu_percent: f64,
    /// SIGKILL of a real holder → another real agent holds the address, in ms.
    pub failover_ms: Vec<f64>,
    /// The killed agent started again → ready (`/readyz`: its caches and EndpointSlices listed,
    /// a first pass run), in ms.
    pub restart_ready_ms: Vec<f64>,
}

/// What `purelb-lab scale` measured.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    /// Every point, in the order measured.
    pub points: Vec<Point>,
    /// The idle window, seconds.
    pub window_s: f64,
}

impl ScaleReport {
    /// Prints the table.
    ///
    /// # Errors
    ///
    /// Writing fails.
    pub fn print(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{:<12} {:>6} {:>8} {:>10} {:>7} {:>10} {:>9} {:>8} {:>10} {:>8} {:>9} {:>14} {:>14}",
            "leases",
            "nodes",
            "services",
            "renewals/s",
            "lapsed",
            "events/s",
            "passes/s",
            "cpu %",
            "µs/event",
            "rss MiB",
            "api cpu %",
            "failover ms",
            "restart ms"
        )?;
        for p in &self.points {
            // Comma-separated, so that the two lists stay two columns for a parser.
            let failover = p.failover_ms.iter().map(|ms| format!("{ms:.0}")).collect::<Vec<_>>().join(",");
            let restart = p.restart_ready_ms.iter().map(|ms| format!("{ms:.0}")).collect::<Vec<_>>().join(",");
            writeln!(
                out,
                "{:<12} {:>6} {:>8} {:>10.0} {:>7} {:>10.1} {:>9.2} {:>8.2} {:>10.1} {:>8.1} {:>9.1} {:>14} {:>14}",
                p.timing.describe(),
                p.nodes,
                p.services,
                p.renewals_per_s,
                p.sim_lapses,
                p.lease_events_per_s,
                p.passes_per_s,
                p.agent_cpu_percent,
                p.agent_cpu_us_per_event,
                p.agent_rss_mib,
                p.apiserver_cpu_percent,
                failover,
                restart
            )?;
        }
        writeln!(
            out,
            "(idle window {:.0} s per point; cpu % is of one core; lapsed: simulated Leases renewed more than a lease late in the window, a real membership change)",
            self.window_s
        )
    }
}

/// One simulated node.
#[derive(Clone, Debug)]
struct SimNode {
    settings: LeaseSettings,
    content: LeaseContent,
}

/// The simulated nodes' Leases, renewed on the agents' cadence by one task.
pub struct Simulator {
    client: Client,
    nodes: Arc<Mutex<Vec<SimNode>>>,
    renewals: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    /// Renewals sent more than a lease after the node's previous one.
    lapses: Arc<AtomicU64>,
    /// The longest gap between two renewals of one node since the last [`Simulator::lapses`], µs.
    max_gap_us: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    timing: Timing,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("timing", &self.timing).finish_non_exhaustive()
    }
}

/// The name of simulated node `i`.
#[must_use]
pub fn sim_node(i: usize) -> String {
    format!("sim-{i:05}")
}

/// The subnets of simulated node `i` (`purelb.io/subnets`): one IPv4 documentation range and
/// one of [`V6_SUBNETS`] IPv6 /64s, never the lab's `192.0.2.0/24`.
#[must_use]
pub fn sim_subnets(i: usize) -> String {
    let v4 = if i.is_multiple_of(2) { "198.51.100.0/24" } else { "203.0.113.0/24" };
    format!("{v4},2001:db8:{:x}::/64", 0x100 + i % V6_SUBNETS)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Simulator {
    /// Starts the renewer (no nodes yet: [`Simulator::grow`]).
    #[must_use]
    pub fn start(client: Client, timing: Timing) -> Self {
        let nodes: Arc<Mutex<Vec<SimNode>>> = Arc::default();
        let renewals = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let lapses = Arc::new(AtomicU64::new(0));
        let max_gap_us = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let task = {
            let (client, nodes, renewals, errors) = (client.clone(), nodes.clone(), renewals.clone(), errors.clone());
            let (lapses, max_gap_us) = (lapses.clone(), max_gap_us.clone());
            tokio::spawn(async move {
                // When each node's last renewal was sent (by its index).
                let mut last_sent: Vec<Option<Instant>> = Vec::new();
                // Every node renews once per interval, spread evenly over it: each tick renews
                // the nodes whose slot came up.
                let tick = Duration::from_millis(20);
                let mut ticker = tokio::time::interval(tick);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut started = Instant::now();
                let mut done: u64 = 0;
                let mut n: u64 = 0;
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {}
                        _ = stopped.changed() => return,
                    }
                    // Only the nodes due are copied out of the lock, not all of them per tick.
                    let batch: Vec<(usize, SimNode)> = {
                        let all = lock(&nodes);
                        if all.is_empty() {
                            continue;
                        }
                        if all.len() as u64 != n {
                            // New nodes (renewed once by `grow`): the cadence starts over at the
                            // new size, with no catch-up burst for the time before.
                            n = all.len() as u64;
                            started = Instant::now();
                            done = 0;
                        }
                        // Renewals due by now since the start, at n per interval.
                        let due = u64::try_from(
                            started.elapsed().as_nanos() * u128::from(n) / timing.renew.as_nanos().max(1),
                        )
                        .unwrap_or(u64::MAX);
                        (done..due.max(done)).map(|k| ((k % n) as usize, all[(k % n) as usize].clone())).collect()
                    };
                    done += batch.len() as u64;
                    let sent = Instant::now();
                    for (i, _) in &batch {
                        if last_sent.len() <= *i {
                            last_sent.resize(*i + 1, None);
                        }
                        if let Some(previous) = last_sent[*i].replace(sent) {
                            let gap = sent.saturating_duration_since(previous);
                            if gap > timing.lease {
                                lapses.fetch_add(1, Ordering::Relaxed);
                            }
                            max_gap_us.fetch_max(u64::try_from(gap.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
                        }
                    }
                    stream::iter(batch.into_iter().map(|(_, node)| node))
                        .for_each_concurrent(32, |node| {
                            let (client, renewals, errors) = (&client, &renewals, &errors);
                            async move {
                                match lease::renew(client, &node.settings, &node.content).await {
                                    Ok(()) => renewals.fetch_add(1, Ordering::Relaxed),
                                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                                };
                            }
                        })
                        .await;
                }
            })
        };
        Self { client, nodes, renewals, errors, lapses, max_gap_us, stop, task, timing }
    }

    /// Lapses so far (renewals sent more than a lease after the node's previous one), and the
    /// longest gap between two renewals of one node since the last call.
    pub fn lapses(&self) -> (u64, Duration) {
        (self.lapses.load(Ordering::Relaxed), Duration::from_micros(self.max_gap_us.swap(0, Ordering::Relaxed)))
    }

    /// Simulated nodes now.
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.nodes).len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renewals made so far, and failed ones.
    #[must_use]
    pub fn renewals(&self) -> (u64, u64) {
        (self.renewals.load(Ordering::Relaxed), self.errors.load(Ordering::Relaxed))
    }

    /// Adds simulated nodes until there are `total`: a Node object and a first renewal each.
    ///
    /// # Errors
    ///
    /// The API refuses a Node or a Lease.
    pub async fn grow(&self, total: usize) -> Result<(), LabError> {
        let start = self.len();
        let nodes_api: Api<Node> = Api::all(self.client.clone());
        let created: Vec<Result<SimNode, LabError>> = stream::iter(start..total)
            .map(|i| {
                let nodes_api = nodes_api.clone();
                let client = self.client.clone();
                let timing = self.timing;
                async move {
                    let name = sim_node(i);
                    let node: Node = serde_json::from_value(json!({
                        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "purelb.io/simulated": "true"}}
                    }))
                    .map_err(|e| LabError::Parse { what: "simulated Node".to_owned(), detail: e.to_string() })?;
                    let node = nodes_api
                        .create(&PostParams::default(), &node)
                        .await
                        .map_err(|e| api_error(format!("create Node {name}"), e))?;
                    let settings = LeaseSettings {
                        namespace: NAMESPACE.to_owned(),
                        node: name.clone(),
                        instance: format!("sim-{i}"),
                        duration: timing.lease,
                        api_timeout: Duration::from_secs(10),
                    };
                    let content =
                        LeaseContent { subnets: sim_subnets(i), node_uid: node.uid(), ..LeaseContent::default() };
                    lease::renew(&client, &settings, &content)
                        .await
                        .map_err(|e| LabError::Parse { what: format!("Lease of {name}"), detail: e.to_string() })?;
                    Ok(SimNode { settings, content })
                }
            })
            .buffered(16)
            .collect()
            .await;
        let mut added = Vec::with_capacity(created.len());
        for node in created {
            added.push(node?);
        }
        lock(&self.nodes).extend(added);
        Ok(())
    }

    /// Stops renewing (the Leases then expire).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn api_error(action: String, source: purelb::kube::Error) -> LabError {
    LabError::Api { action, source: Box::new(source) }
}

/// CPU time (user + system, every thread) of process `pid` so far.
#[must_use]
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command may contain spaces: the fields start after the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    let hz = clock_ticks();
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`; 100 on every Linux we run).
fn clock_ticks() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|hz| *hz > 0)
            .unwrap_or(100)
    })
}

/// A memory figure of `pid` from `/proc/PID/status` (`VmRSS`, `VmHWM`: the peak RSS), MiB; 0
/// when the process or the field is gone.
#[must_use]
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Sum of the samples of `name` whose labels contain `label` (e.g. `watch="leases"`).
#[must_use]
pub fn metric_sum(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?;
            (labels.is_empty() || labels.starts_with('{')).then_some(())?;
            labels.contains(label).then_some(())?;
            value.parse::<f64>().ok()
        })
        .sum()
}

fn pid_of(lab: &Lab, name: &str) -> Option<u32> {
    match lab.status_of(name).ok()? {
        ProcessStatus::Running { pid } => Some(pid),
        _ => None,
    }
}

/// What one real agent counted so far.
#[derive(Clone, Copy, Debug, Default)]
struct AgentCounters {
    cpu: Duration,
    lease_events: f64,
    passes: f64,
}

async fn counters(lab: &Lab, agent: &str) -> Option<AgentCounters> {
    let pid = pid_of(lab, agent)?;
    let page = lab.scrape(agent).await?;
    Some(AgentCounters {
        cpu: cpu_time(pid),
        lease_events: metric_sum(&page, "purelb_watch_events_total", "watch=\"leases\""),
        passes: metric_sum(&page, "purelb_decision_passes_total", ""),
    })
}

/// Waits until no agent received a Service event and no agent's work queue had an item waiting
/// for two samples a second apart (an overloaded agent's queue always holds membership work:
/// then `Some(timeout)`, said in the report).
async fn settle(lab: &Lab, agents: &[String], timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    let sample = || async {
        let mut events = 0.0;
        let mut depth = 0.0;
        for agent in agents {
            if let Some(page) = lab.scrape(agent).await {
                events += metric_sum(&page, "purelb_watch_events_total", "watch=\"services\"");
                depth += metric_sum(&page, "purelb_workqueue_depth", "");
            }
        }
        (events, depth)
    };
    let mut last = sample().await.0;
    let mut quiet = 0;
    while quiet < 2 {
        if started.elapsed() > timeout {
            return Some(timeout);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (events, depth) = sample().await;
        quiet = if (events - last).abs() < 0.5 && depth < 0.5 { quiet + 1 } else { 0 };
        last = events;
    }
    None
}

const REAL_GROUP: &str = "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: real, namespace: purelb-system}
spec:
  local:
    v4pool: {subnet: 192.0.2.0/24, pool: 192.0.2.200-192.0.2.220}
";

const SIM_GROUP: &str = "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: simulated, namespace: purelb-system}
spec:
  local:
    v6pool: {subnet: 2001:db8:100::/56, pool: 2001:db8:100::/56}
";

/// A Service of group `group` with `ip` in its status, as the allocator leaves it.
fn service_with(name: &str, group: &str, ip: IpAddr) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": {
            "purelb.io/allocated-by": "PureLB", "purelb.io/allocated-from": group, "purelb.io/pool-type": "local"}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": ip.to_string()}]}}
    })
}

async fn put_service(api: &Api<Service>, name: &str, body: &serde_json::Value) -> Result<(), LabError> {
    let svc: Service = serde_json::from_value(body.clone())
        .map_err(|e| LabError::Parse { what: "Service".to_owned(), detail: e.to_string() })?;
    api.create(&PostParams::default(), &svc).await.map_err(|e| api_error(format!("create Service {name}"), e))?;
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": body["status"]})))
        .await
        .map_err(|e| api_error(format!("write the status of Service {name}"), e))?;
    Ok(())
}

/// Creates `count` Services on the simulated subnets, each with an EndpointSlice of ten ready
/// endpoints on simulated nodes `0..sim_nodes`.
async fn background_services(client: &Client, count: usize, sim_nodes: usize) -> Result<(), LabError> {
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let results: Vec<Result<(), LabError>> = stream::iter(0..count)
        .map(|i| {
            let (services, slices) = (services.clone(), slices.clone());
            async move {
                let name = format!("bg{i}");
                // 2001:db8:1xx::n on the /64 of simulated nodes i % 32.
                let ip: IpAddr = format!("2001:db8:{:x}::{:x}", 0x100 + i % V6_SUBNETS, 0x1000 + i)
                    .parse()
                    .map_err(|e: std::net::AddrParseError| LabError::Parse { what: name.clone(), detail: e.to_string() })?;
                put_service(&services, &name, &service_with(&name, "simulated", ip)).await?;
                let endpoints: Vec<serde_json::Value> = (0..10)
                    .map(|e| {
                        let node = sim_node((i + e * V6_SUBNETS) % sim_nodes.max(1));
                        json!({"addresses": [format!("2001:db8:ffff:{:x}::{:x}", i, e + 1)],
                               "conditions": {"ready": true, "serving": true, "terminating": false},
                               "nodeName": node})
                    })
                    .collect();
                let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-sim"), "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv6", "endpoints": endpoints, "ports": [{"name": "", "port": 80, "protocol": "TCP"}]
                }))
                .map_err(|e| LabError::Parse { what: "EndpointSlice".to_owned(), detail: e.to_string() })?;
                slices
                    .create(&PostParams::default(), &slice)
                    .await
                    .map_err(|e| api_error(format!("create the EndpointSlice of {name}"), e))?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Polls `lab.holders(ip)` every 5 ms until a node other than `old` holds it (the killed
/// agent's node keeps the address in its kernel, as a crashed agent's node would).
async fn taken_over(lab: &Lab, ip: IpAddr, old: &str, timeout: Duration) -> Option<(String, Duration)> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(holders) = lab.holders(ip)
            && let Some(other) = holders.iter().find(|h| *h != old)
        {
            return Some((other.clone(), started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Waits until `ip` has exactly one holder, and returns it.
async fn one_holder(lab: &Lab, ip: IpAddr, timeout: Duration) -> Option<String> {
    super::wait_for(timeout, || async {
        let holders = lab.holders(ip).ok()?;
        (holders.len() == 1).then(|| holders[0].clone())
    })
    .await
}

/// Runs the measurements for every timing and size.
///
/// # Errors
///
/// The lab cannot be built, or the API refuses what the simulator writes.
pub async fn run(options: &ScaleOptions, progress: &mut (dyn std::io::Write + Send)) -> Result<ScaleReport, LabError> {
    let mut points = Vec::new();
    for (t, timing) in options.timings.iter().enumerate() {
        let prefix = format!("{}{t}", options.prefix);
        let mut lab_options = LabOptions::new(&prefix, 3).purelb(false, true).ready_timeout(Duration::from_secs(60));
        lab_options.purelb_bin.clone_from(&options.purelb_bin);
        lab_options.lab_bin.clone_from(&options.lab_bin);
        lab_options.agent_args = vec![
            format!("--lease-duration={}s", timing.lease.as_secs()),
            format!("--renew-interval={}ms", timing.renew.as_millis()),
            "--handover-timeout=5s".to_owned(),
            // Its pass is not caused by renewals; out of the windows.
            "--orphan-sweep-interval=10m".to_owned(),
        ];
        let lab = Lab::start(lab_options).await?;
        lab.apply_yaml(REAL_GROUP).await?;
        lab.apply_yaml(SIM_GROUP).await?;
        let client = lab.client();
        let sim = Simulator::start(client.clone(), *timing);
        let largest = options.sizes.iter().copied().max().unwrap_or(0);
        // The background Services' endpoints go to the first nodes of the smallest size.
        let first = options.sizes.iter().copied().min().unwrap_or(0).max(1);
        sim.grow(first).await?;
        let _ =
            writeln!(progress, "scale: {}: {} Services with 10 endpoints each", timing.describe(), options.services);
        background_services(&client, options.services, first).await?;
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let real_ip = |k: usize| IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200 + u8::try_from(k % 20).unwrap_or(0)));
        for k in 0..options.failovers.max(1) {
            let name = format!("real{k}");
            put_service(&services, &name, &service_with(&name, "real", real_ip(k))).await?;
        }
        for &size in &options.sizes {
            if size < sim.len() {
                continue;
            }
            let _ = writeln!(progress, "scale: {}: growing to {size} simulated nodes", timing.describe());
            sim.grow(size).await?;
            // Let the agents see every new member and settle.
            tokio::time::sleep(timing.lease + Duration::from_secs(3)).await;
            let agents: Vec<String> = lab.node_names().iter().map(|n| super::agent_name(n)).collect();
            // And work off the Services and EndpointSlices just created (50,000 of each take
            // the agents longer than a lease): the window measures an idle cluster.
            if let Some(waited) = settle(&lab, &agents, Duration::from_secs(300)).await {
                let _ = writeln!(progress, "scale: the agents still worked off watch events after {waited:?}");
            }
            let apiserver = pid_of(&lab, super::APISERVER);
            let mut before = BTreeMap::new();
            for agent in &agents {
                before.insert(agent.clone(), counters(&lab, agent).await.unwrap_or_default());
            }
            let api_before = apiserver.map(cpu_time).unwrap_or_default();
            let (renewed_before, _) = sim.renewals();
            let (lapses_before, _) = sim.lapses();
            let started = Instant::now();
            tokio::time::sleep(options.window).await;
            let elapsed = started.elapsed().as_secs_f64();
            let (renewed_after, failed) = sim.renewals();
            let (lapses_after, max_gap) = sim.lapses();
            let api_after = apiserver.map(cpu_time).unwrap_or_default();
            let (mut events, mut passes, mut cpu_max, mut per_event, mut rss) = (0.0, 0.0, 0.0_f64, 0.0, 0.0_f64);
            let mut rss_each = Vec::new();
            for agent in &agents {
                let after = counters(&lab, agent).await.unwrap_or_default();
                let b = before.get(agent).copied().unwrap_or_default();
                let e = (after.lease_events - b.lease_events) / elapsed;
                let cpu = after.cpu.saturating_sub(b.cpu).as_secs_f64() / elapsed;
                events += e;
                passes += (after.passes - b.passes) / elapsed;
                cpu_max = cpu_max.max(cpu * 100.0);
                per_event += if e > 0.0 { cpu * 1e6 / e } else { 0.0 };
                let own = pid_of(&lab, agent).map_or(0.0, |pid| memory_mib(pid, "VmRSS"));
                rss_each.push(format!("{agent} {own:.1}"));
                rss = rss.max(own);
            }
            #[allow(clippy::cast_precision_loss)]
            let n = agents.len().max(1) as f64;
            let mut failover_ms = Vec::new();
            let mut restart_ready_ms = Vec::new();
            for k in 0..options.failovers {
                let ip = real_ip(k);
                let Some(holder) = one_holder(&lab, ip, Duration::from_secs(30)).await else {
                    let _ = writeln!(progress, "scale: {ip} has no single holder; failover skipped");
                    continue;
                };
                lab.kill_agent(&holder)?;
                let took = taken_over(&lab, ip, &holder, timing.lease * 5).await;
                lab.restart_agent(&holder)?;
                // The next failover's successor may be this agent: it must be ready first.
                let restarted = Instant::now();
                if lab.wait_ready(&super::agent_name(&holder), Duration::from_secs(300)).await {
                    restart_ready_ms.push(restarted.elapsed().as_secs_f64() * 1000.0);
                } else {
                    let _ = writeln!(progress, "scale: {holder} was not ready 300 s after its restart");
                }
                match took {
                    Some((_, d)) => failover_ms.push(d.as_secs_f64() * 1000.0),
                    None => {
                        let _ = writeln!(progress, "scale: nobody took {ip} over from {holder}");
                    }
                }
                // The restarted agent may win its address back: let that settle.
                tokio::time::sleep(timing.lease + Duration::from_secs(2)).await;
            }
            #[allow(clippy::cast_precision_loss)]
            let point = Point {
                timing: *timing,
                nodes: size + agents.len(),
                services: options.services + options.failovers,
                renewals_per_s: (renewed_after - renewed_before) as f64 / elapsed,
                sim_lapses: lapses_after - lapses_before,
                sim_max_gap_ms: max_gap.as_secs_f64() * 1000.0,
                lease_events_per_s: events / n,
                passes_per_s: passes / n,
                agent_cpu_percent: cpu_max,
                agent_cpu_us_per_event: per_event / n,
                agent_rss_mib: rss,
                apiserver_cpu_percent: api_after.saturating_sub(api_before).as_secs_f64() / elapsed * 100.0,
                failover_ms,
                restart_ready_ms,
            };
            let _ = writeln!(
                progress,
                "scale: {} nodes {}: {:.0} renewals/s ({failed} failed in all; {} lapsed in the window, longest gap {:.0} ms), {:.1} lease events/s, {:.2} passes/s, cpu {:.2} %, rss {:.1} MiB ({}), api cpu {:.1} %, failover {:?} ms",
                timing.describe(),
                point.nodes,
                point.renewals_per_s,
                point.sim_lapses,
                point.sim_max_gap_ms,
                point.lease_events_per_s,
                point.passes_per_s,
                point.agent_cpu_percent,
                point.agent_rss_mib,
                rss_each.join(", "),
                point.apiserver_cpu_percent,
                point.failover_ms
            );
            points.push(point);
            if size == largest {
                break;
            }
        }
        sim.stop().await;
        drop(lab);
    }
    Ok(ScaleReport { points, window_s: options.window.as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table keeps one column per figure (what `scripts/bench-report.py` reads): the lapses
    /// after the renewals, the failovers and the restarts as two comma-separated lists, a
    /// missing failover leaving its list shorter, not the columns shifted.
    #[test]
    fn the_table_has_one_column_per_figure() {
        let point = |failover_ms: Vec<f64>| Point {
            timing: Timing { lease: Duration::from_secs(2), renew: Duration::from_secs(1) },
            nodes: 1003,
            services: 50_002,
            renewals_per_s: 1000.2,
            sim_lapses: 3,
            sim_max_gap_ms: 1021.0,
            lease_events_per_s: 1008.3,
            passes_per_s: 0.0,
            agent_cpu_percent: 4.0,
            agent_cpu_us_per_event: 38.1,
            agent_rss_mib: 216.6,
            apiserver_cpu_percent: 11.9,
            failover_ms,
            restart_ready_ms: vec![4550.2, 3862.0],
        };
        let report = ScaleReport { points: vec![point(vec![1224.0, 1467.4]), point(vec![2178.0])], window_s: 15.0 };
        let mut out = Vec::new();
        report.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let rows: Vec<Vec<&str>> =
            text.lines().filter(|l| l.starts_with("2 s / 1 s")).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            rows[0],
            [
                "2",
                "s",
                "/",
                "1",
                "s",
                "1003",
                "50002",
                "1000",
                "3",
                "1008.3",
                "0.00",
                "4.00",
                "38.1",
                "216.6",
                "11.9",
                "1224,1467",
                "4550,3862"
            ],
            "{text}"
        );
        assert_eq!(rows[1][15..], ["2178", "4550,3862"], "{text}");
    }

    #[test]
    fn metrics_are_summed_by_label() {
        let page = "# HELP x\npurelb_watch_events_total{watch=\"leases\"} 12\npurelb_watch_events_total{watch=\"services\"} 3\npurelb_workqueue_work_duration_seconds_count{queue=\"agent\"} 7\npurelb_workqueue_work_duration_seconds_count{queue=\"other\"} 1\n";
        assert!((metric_sum(page, "purelb_watch_events_total", "watch=\"leases\"") - 12.0).abs() < f64::EPSILON);
        assert!(
            (metric_sum(page, "purelb_workqueue_work_duration_seconds_count", "queue=\"agent\"") - 7.0).abs()
                < f64::EPSILON
        );
        assert!(metric_sum(page, "purelb_watch_events", "watch=\"leases\"").abs() < f64::EPSILON);
    }

    #[test]
    fn simulated_nodes_never_share_the_real_agents_subnet() {
        for i in 0..1000 {
            let subnets = sim_subnets(i);
            assert!(!subnets.contains("192.0.2."), "{subnets}");
            assert_eq!(subnets.split(',').count(), 2);
        }
        assert_eq!(sim_node(7), "sim-00007");
    }
}
