//! `purelb-lab soak`: a chaos soak of the real `purelb` processes in a dual-stack lab (3 or 4
//! nodes, two allocator replicas), with the [invariant checker](super::invariants) watching the
//! whole time and a client host sending requests to the announced local addresses.
//!
//! Two seeded random schedules run side by side until the duration is over:
//!
//! - **churn** (every 0.3–1.5 s): create, delete and edit Services (local and remote groups,
//!   `externalTrafficPolicy` Cluster and Local, sharing keys, dual-stack; edits flip the traffic
//!   policy, change the port, move the Service to the other group or touch a label) and flip
//!   endpoint readiness;
//! - **faults** (one at a time, 1–4 s apart; every kind once first, in a shuffled order, then
//!   weighted at random): SIGKILL and restart an agent or an allocator replica (the leader
//!   more often), SIGTERM an agent (graceful handover) or all of them in turn (rolling update),
//!   cut one agent off the API, make the whole API unavailable (up to 30 s), force every watch
//!   to expire (compaction, then every watch closed: resumes get 410 Gone), delete an announced
//!   address behind its agent's back, restart the emulator with its data.
//!
//! Churn pauses while the API is down and for the rejoin hold-off after it. At the end the lab
//! settles (churn and faults stopped) and the report lists every violation, the exempted
//! episodes, the count of every action, convergence times, the client's requests and where
//! the failed ones fall, and the seed (the schedules depend only on it; the timing of the
//! processes does not).
//!
//! Entry points: [`SoakOptions`], [`run`], [`SoakReport::print`].

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use purelb::{
    api::contract,
    k8s_openapi::api::{coordination::v1::Lease, core::v1::Service},
    kube::{
        Api,
        api::{DeleteParams, ListParams, Patch, PatchParams},
    },
};
use serde::Serialize;
use serde_json::json;

use super::{
    API_CHANGE_LOG, API_DATA_DIR, Backend, Lab, LabError, LabOptions, ProcessStatus, ServiceBackends, agent_name,
    invariants::{Bounds, Checker, Invariant, Kind, Note, Violation, WindowCause},
    netns,
    observer::{ChangeLog, KernelSampler, Observation, Sampler},
    topology::{DUMMY_LINK, INSTALL_NAMESPACE},
};
use crate::apiserver::FailMode;

/// Agent timing in the soak (as in the lab tests): 2 s leases renewed every 500 ms, 5 s
/// handover timeout, orphan sweep every 2 s.
pub const AGENT_ARGS: [&str; 4] =
    ["--lease-duration=2s", "--renew-interval=500ms", "--handover-timeout=5s", "--orphan-sweep-interval=2s"];
/// Allocator leader election in the soak: 4 s lease, renewed every second.
pub const ALLOCATOR_ARGS: [&str; 2] = ["--lease-duration=4s", "--renew-interval=1s"];
/// Port the client's requests go to (every node serves it on every address).
pub const PROBE_PORT: u16 = 80;
/// Namespace of the soak's Services.
const NAMESPACE: &str = "default";
/// Field manager of the soak's writes.
const MANAGER: &str = "purelb-lab-soak";
/// Label on every soak Service; edits toggle [`TAG_LABEL`].
const SOAK_LABEL: &str = "purelb.io/soak";
const TAG_LABEL: &str = "purelb.io/soak-tag";

/// The local group: the lab's LAN (one elected node per address).
pub const LOCAL_GROUP_YAML: &str = "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: soak-local, namespace: purelb-system}
spec:
  local:
    v4pool: {subnet: 192.0.2.0/24, pool: 192.0.2.240-192.0.2.254}
    v6pool: {subnet: 2001:db8::/64, pool: 2001:db8::f0-2001:db8::ff}
    skipIPv6DAD: true
";
/// The remote group: routed addresses on every node's dummy interface.
pub const REMOTE_GROUP_YAML: &str = "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata: {name: soak-remote, namespace: purelb-system}
spec:
  remote:
    v4pool: {subnet: 198.51.100.0/24, pool: 198.51.100.0/26, aggregation: /26}
    v6pool: {subnet: 2001:db8:5::/64, pool: 2001:db8:5::/122}
";

/// How to run a soak.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// How long churn and faults run (the settle time comes on top).
    pub duration: Duration,
    /// Seed of the schedules.
    pub seed: u64,
    /// Nodes (3 or 4).
    pub nodes: usize,
    /// Lab prefix.
    pub prefix: String,
    /// Lab directory.
    pub dir: Option<PathBuf>,
    /// The `purelb` binary.
    pub purelb_bin: Option<PathBuf>,
    /// The `purelb-lab` binary.
    pub lab_bin: Option<PathBuf>,
    /// Time between observations of the checker.
    pub sample_every: Duration,
    /// Quiet time at the end (checks continue).
    pub settle: Duration,
    /// Keep the logs (they are kept anyway when the soak fails).
    pub keep_logs: bool,
    /// Bounds of the checker.
    pub bounds: Bounds,
    /// Leave out what triggers the open product bugs listed in `e2e/README.md` ("Soak"): no
    /// Service with `externalTrafficPolicy: Local` shares an address (the agents elect one node
    /// per Service, so sharers with different endpoint nodes get the address announced by two
    /// nodes), and an agent is never cut off by a connection that hangs (its watches then stay
    /// stale for up to the client's 295 s read timeout while its Lease renews).
    pub avoid_open_bugs: bool,
}

impl SoakOptions {
    /// A soak of `duration` with `seed` in a 4-node lab named `prefix`.
    #[must_use]
    pub fn new(prefix: &str, duration: Duration, seed: u64) -> Self {
        Self {
            duration,
            seed,
            nodes: 4,
            prefix: prefix.to_owned(),
            dir: None,
            purelb_bin: None,
            lab_bin: None,
            sample_every: Duration::from_millis(25),
            settle: Duration::from_secs(10),
            keep_logs: false,
            bounds: Bounds::default(),
            avoid_open_bugs: false,
        }
    }
}

/// A seed from the clock and the process id, for runs without `--seed`.
#[must_use]
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut rng = Rng::new(u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or(0), u64::from(std::process::id()));
    rng.next_u64() % 1_000_000_000
}

/// A small deterministic generator (SplitMix64): the same seed and stream give the same
/// sequence on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Stream `stream` of `seed`.
    #[must_use]
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Self(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next_u64();
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        usize::try_from(self.next_u64() % (n as u64)).unwrap_or(0)
    }

    /// Uniform in `[0, 1)`.
    #[allow(clippy::cast_precision_loss)]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform between `low` and `high`.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        low + (high.saturating_sub(low)).mul_f64(self.unit())
    }

    /// One item, uniformly.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }

    /// One item, with probability proportional to its weight.
    pub fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> Option<T> {
        let total: u32 = items.iter().map(|(_, w)| *w).sum();
        let mut left = u32::try_from(self.below(usize::try_from(total).unwrap_or(0))).unwrap_or(0);
        for (item, weight) in items {
            if left < *weight {
                return Some(*item);
            }
            left -= weight;
        }
        None
    }

    /// The items in a random order.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// The fault kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL an agent, restart it after 0.5–4 s.
    KillAgent,
    /// SIGKILL an allocator replica (the leader 60 % of the time), restart it after 0.5–3 s.
    KillAllocator,
    /// SIGTERM an agent (graceful handover), start it again.
    TerminateAgent,
    /// SIGTERM and restart every agent in turn.
    RollingUpdate,
    /// Cut one agent off the API for 3–12 s.
    CutAgent,
    /// The whole API unavailable for 3–30 s.
    ApiOutage,
    /// Compaction plus every watch closed: every resumed watch gets 410 Gone.
    WatchExpiry,
    /// Delete an announced address behind its agent's back.
    DeleteAddress,
    /// Restart the emulator (same data, same port).
    RestartApiserver,
}

impl Fault {
    const ALL: [(Self, u32); 9] = [
        (Self::KillAgent, 3),
        (Self::KillAllocator, 2),
        (Self::TerminateAgent, 2),
        (Self::RollingUpdate, 1),
        (Self::CutAgent, 2),
        (Self::ApiOutage, 1),
        (Self::WatchExpiry, 2),
        (Self::DeleteAddress, 3),
        (Self::RestartApiserver, 1),
    ];

    /// The name in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::KillAgent => "kill-agent",
            Self::KillAllocator => "kill-allocator",
            Self::TerminateAgent => "sigterm-agent",
            Self::RollingUpdate => "rolling-update",
            Self::CutAgent => "cut-agent",
            Self::ApiOutage => "api-outage",
            Self::WatchExpiry => "watch-expiry",
            Self::DeleteAddress => "delete-address",
            Self::RestartApiserver => "restart-apiserver",
        }
    }
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// How many.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Stats {
    /// Nearest-rank percentiles of `values`.
    #[must_use]
    pub fn of(values: &[Duration]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort();
        let rank = |p: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
            let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted.get(i).map_or(0.0, |d| (d.as_secs_f64() * 1e4).round() / 10.0)
        };
        Self { count: sorted.len(), p50_ms: rank(0.5), p90_ms: rank(0.9), p99_ms: rank(0.99), max_ms: rank(1.0) }
    }
}

/// One entry of the soak's timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// Seconds since the start.
    pub t_s: f64,
    /// The action.
    pub action: String,
    /// What exactly.
    pub detail: String,
}

/// A failed client request.
#[derive(Clone, Debug, Serialize)]
pub struct FailedRequest {
    /// Target address.
    pub ip: IpAddr,
    /// When it started (seconds since the start).
    pub start_s: f64,
    /// When it ended.
    pub end_s: f64,
    /// Why it failed.
    pub error: String,
    /// How it was classified: `outside`, `handover-reset`, or a window cause.
    pub class: String,
}

/// The client's requests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestReport {
    /// Sent.
    pub sent: u64,
    /// Answered 200.
    pub ok: u64,
    /// Failed (any reason).
    pub failed: u64,
    /// Failed inside an allowed window, by window.
    pub allowed: BTreeMap<String, u64>,
    /// Failed during a graceful handover of their address and in no allowed window (also
    /// counted in `outside`: a handover must cost no request, `docs/agent.md`).
    pub handover_failures: u64,
    /// Graceful handovers (SIGTERM of an agent holding local addresses).
    pub handovers: u64,
    /// Failed outside every allowed window (must be 0).
    pub outside: u64,
    /// The failures outside (and the handover resets), for the record.
    pub notable: Vec<FailedRequest>,
}

/// One invariant's line in the report.
#[derive(Clone, Debug, Serialize)]
pub struct InvariantLine {
    /// 1..=5.
    pub number: u8,
    /// Which.
    pub invariant: Invariant,
    /// What it promises.
    pub promise: &'static str,
    /// Violations found.
    pub violations: usize,
}

/// Bounds and timings used, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct BoundsReport {
    /// Target time between observations.
    pub sample_period_ms: u128,
    /// (1) overlap allowed during a handover.
    pub handover_overlap_ms: u128,
    /// (2) convergence bound.
    pub converge_ms: u128,
    /// (3) orphan sweep interval.
    pub orphan_sweep_ms: u128,
    /// Checks on a restarted agent's node resume this long after it is ready.
    pub restart_hold_off_ms: u128,
    /// Checks on a node whose agent regained the API resume this long after.
    pub rejoin_hold_off_ms: u128,
    /// Allocation checks resume this long after the allocator or the API is back.
    pub allocation_hold_off_ms: u128,
    /// (2) an address held when the API went down may be missing this long.
    pub outage_withdrawal_ms: u128,
    /// Agent flags.
    pub agent_args: Vec<String>,
    /// Allocator flags.
    pub allocator_args: Vec<String>,
}

/// Exempted episodes (not violations), with their durations.
#[derive(Clone, Debug, Serialize)]
pub struct ExemptLine {
    /// What they were.
    pub what: String,
    /// Durations.
    pub stats: Stats,
    /// When the longest began (seconds since the start).
    pub longest_since_s: f64,
    /// Its address.
    pub longest_subject: String,
    /// Every episode: start (s), duration (ms), address.
    pub episodes: Vec<(f64, f64, String)>,
}

/// What a soak found.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// The seed (rerun with `--seed` to get the same schedules).
    pub seed: u64,
    /// Requested duration of churn and faults.
    pub duration_s: f64,
    /// Whole run, lab built to lab torn down.
    pub elapsed_s: f64,
    /// Nodes.
    pub nodes: usize,
    /// What triggers the open product bugs was left out (`--avoid-open-bugs`).
    pub avoid_open_bugs: bool,
    /// The `purelb` binary and its build (`debug`/`release`).
    pub purelb_bin: String,
    /// `debug`, `release` or `unknown`.
    pub build: String,
    /// Bounds and timings.
    pub bounds: BoundsReport,
    /// Observations made, and the time between them.
    pub samples: u64,
    /// Time between observations.
    pub sample_gaps: Stats,
    /// Per invariant.
    pub invariants: Vec<InvariantLine>,
    /// Every violation.
    pub violations: Vec<Violation>,
    /// Exempted episodes.
    pub exempt: Vec<ExemptLine>,
    /// Actions done, by kind.
    pub actions: BTreeMap<String, u64>,
    /// Actions that failed (the API was down, a request timed out), by kind.
    pub action_failures: BTreeMap<String, u64>,
    /// Convergence times by category.
    pub convergence: BTreeMap<String, Stats>,
    /// Convergences cut short by another change.
    pub superseded: u64,
    /// The client's requests.
    pub requests: RequestReport,
    /// Problems of the run itself (a process that did not come back, ..).
    pub errors: Vec<String>,
    /// Every action, in order.
    pub timeline: Vec<Entry>,
    /// Zero violations, zero failed requests outside the windows, no errors.
    pub passed: bool,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

impl SoakReport {
    /// Writes the report for people.
    ///
    /// # Errors
    ///
    /// Writing fails.
    pub fn print(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let b = &self.bounds;
        writeln!(out, "== soak report (seed {})", self.seed)?;
        writeln!(
            out,
            "lab: {} nodes dual-stack, 2 allocator replicas, purelb {} build ({}); {:.0} s of churn and faults, {:.0} s in all{}",
            self.nodes,
            self.build,
            self.purelb_bin,
            self.duration_s,
            self.elapsed_s,
            if self.avoid_open_bugs { "; open bugs avoided" } else { "" }
        )?;
        writeln!(
            out,
            "checker: {} observations, every {} ms target (achieved p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)",
            self.samples, b.sample_period_ms, self.sample_gaps.p50_ms, self.sample_gaps.p99_ms, self.sample_gaps.max_ms
        )?;
        writeln!(
            out,
            "bounds: handover overlap {} ms, convergence {} ms, orphan sweep {} ms, hold-off after restart {} ms / rejoin {} ms / allocator {} ms, withdrawal during outage {} ms",
            b.handover_overlap_ms,
            b.converge_ms,
            b.orphan_sweep_ms,
            b.restart_hold_off_ms,
            b.rejoin_hold_off_ms,
            b.allocation_hold_off_ms,
            b.outage_withdrawal_ms
        )?;
        writeln!(out, "timings: agent {} ; allocator {}", b.agent_args.join(" "), b.allocator_args.join(" "))?;
        writeln!(out, "invariants:")?;
        for line in &self.invariants {
            writeln!(out, "  ({}) {:<100} {} violations", line.number, line.promise, line.violations)?;
        }
        for v in &self.violations {
            let lasted = v.lasted.map_or_else(|| "still at the end".to_owned(), |d| format!("{} ms", d.as_millis()));
            writeln!(
                out,
                "  VIOLATION ({}) t={:.3}s since {:.3}s lasted {lasted}: {} {}",
                v.invariant.number(),
                secs(v.at),
                secs(v.since),
                v.subject,
                v.detail
            )?;
            for e in self.timeline.iter().filter(|e| e.t_s <= secs(v.since) + 1.0 && e.t_s >= secs(v.since) - 15.0) {
                writeln!(out, "      t={:>8.3}s {} {}", e.t_s, e.action, e.detail)?;
            }
        }
        if !self.exempt.is_empty() {
            writeln!(out, "episodes counted for the report (violations are listed above):")?;
            for e in &self.exempt {
                writeln!(
                    out,
                    "  {}: {} (p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms: {} from t={:.3}s)",
                    e.what,
                    e.stats.count,
                    e.stats.p50_ms,
                    e.stats.p99_ms,
                    e.stats.max_ms,
                    e.longest_subject,
                    e.longest_since_s
                )?;
            }
        }
        writeln!(out, "actions:")?;
        for (name, count) in &self.actions {
            let failed = self.action_failures.get(name).map(|f| format!(" ({f} failed)")).unwrap_or_default();
            writeln!(out, "  {name:<20} {count}{failed}")?;
        }
        writeln!(out, "convergence (ms):               count      p50      p90      p99      max")?;
        for (name, s) in &self.convergence {
            writeln!(
                out,
                "  {name:<28} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
            )?;
        }
        writeln!(out, "  ({} convergences superseded by a later change)", self.superseded)?;
        let r = &self.requests;
        let allowed: Vec<String> = r.allowed.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(
            out,
            "requests: {} sent, {} ok, {} failed: {} inside allowed windows ({}), {} outside the windows ({} of them during {} graceful handovers)",
            r.sent,
            r.ok,
            r.failed,
            r.allowed.values().sum::<u64>(),
            if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") },
            r.outside,
            r.handover_failures,
            r.handovers
        )?;
        for f in &r.notable {
            writeln!(out, "  {} {} t={:.3}..{:.3}s: {}", f.class, f.ip, f.start_s, f.end_s, f.error)?;
        }
        for e in &self.errors {
            writeln!(out, "ERROR: {e}")?;
        }
        writeln!(
            out,
            "result: {} (seed {}; rerun: purelb-lab soak --duration {:.0} --seed {} --nodes {}{})",
            if self.passed { "PASS" } else { "FAIL" },
            self.seed,
            self.duration_s,
            self.seed,
            self.nodes,
            if self.avoid_open_bugs { " --avoid-open-bugs" } else { "" }
        )
    }
}

/// One Service the churn created, as it asked for it.
#[derive(Clone, Debug)]
struct Plan {
    name: String,
    remote: bool,
    etp_local: bool,
    dual: bool,
    sharing: Option<String>,
    port: u16,
    endpoints: BTreeMap<String, EndpointState>,
    tagged: bool,
}

/// The endpoint a churned Service has on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndpointState {
    /// Ready (and serving).
    Ready,
    /// Shutting down but still serving (`ready: false, serving: true, terminating: true`): a
    /// rollout's old pod. It keeps the node usable for `externalTrafficPolicy: Local` while
    /// no endpoint on the node is ready (kube-proxy's rule, `docs/agent.md`).
    Terminating,
    /// Neither ready nor serving (a failing readiness probe, or the pod gone).
    NotReady,
}

impl EndpointState {
    /// A new Service's endpoint: ready 75 %, terminating 15 %, not ready 10 % (one draw).
    fn draw(rng: &mut Rng) -> Self {
        match rng.unit() {
            u if u < 0.75 => Self::Ready,
            u if u < 0.9 => Self::Terminating,
            _ => Self::NotReady,
        }
    }

    /// The next state of a flip: a ready endpoint fails (not ready) or starts terminating, half
    /// the time each; a terminating one goes away; a missing one comes back ready.
    fn flipped(self, rng: &mut Rng) -> Self {
        match self {
            Self::Ready if rng.chance(0.5) => Self::Terminating,
            Self::Ready | Self::Terminating => Self::NotReady,
            Self::NotReady => Self::Ready,
        }
    }

    fn backend(self, node: &str) -> Backend {
        match self {
            Self::Ready => Backend::ready(node),
            Self::Terminating => Backend::terminating(node),
            Self::NotReady => Backend::not_ready(node),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Terminating => "terminating",
            Self::NotReady => "not ready",
        }
    }
}

impl Plan {
    fn object(&self) -> serde_json::Value {
        let mut annotations = serde_json::Map::new();
        annotations.insert(
            contract::ANNOTATION_SERVICE_GROUP.to_owned(),
            json!(if self.remote { "soak-remote" } else { "soak-local" }),
        );
        if let Some(key) = &self.sharing {
            annotations.insert(contract::ANNOTATION_ALLOW_SHARED_IP.to_owned(), json!(key));
        }
        let (policy, families) =
            if self.dual { ("RequireDualStack", json!(["IPv4", "IPv6"])) } else { ("SingleStack", json!(["IPv4"])) };
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name, "namespace": NAMESPACE, "annotations": annotations,
                "labels": {SOAK_LABEL: "true"}},
            "spec": {
                "type": "LoadBalancer",
                "externalTrafficPolicy": if self.etp_local { "Local" } else { "Cluster" },
                "ipFamilyPolicy": policy,
                "ipFamilies": families,
                "selector": {"app": self.name},
                "ports": [{"name": "http", "port": self.port, "targetPort": PROBE_PORT, "protocol": "TCP"}],
            },
        })
    }

    fn backends(&self) -> ServiceBackends {
        let mut b = ServiceBackends::new(NAMESPACE, &self.name).port(PROBE_PORT).port_name("http");
        for (node, state) in &self.endpoints {
            b = b.backend(state.backend(node));
        }
        b
    }

    fn describe(&self) -> String {
        format!(
            "{} {}{}{}{} port {} ready on [{}]{}",
            self.name,
            if self.remote { "remote" } else { "local" },
            if self.dual { " dual-stack" } else { " IPv4" },
            if self.etp_local { " eTP=Local" } else { " eTP=Cluster" },
            self.sharing.as_ref().map(|k| format!(" key {k}")).unwrap_or_default(),
            self.port,
            self.on(EndpointState::Ready),
            match self.on(EndpointState::Terminating) {
                t if t.is_empty() => String::new(),
                t => format!(" terminating on [{t}]"),
            }
        )
    }

    /// The nodes whose endpoint is in `state`, comma-separated.
    fn on(&self, state: EndpointState) -> String {
        self.endpoints.iter().filter(|(_, s)| **s == state).map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The plan of a Service the churn does not know (its create answer was lost).
    fn from_service(svc: &Service, nodes: &[String]) -> Option<Self> {
        let name = svc.metadata.name.clone()?;
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();
        let spec = svc.spec.clone().unwrap_or_default();
        let port = spec.ports.as_ref().and_then(|p| p.first()).map(|p| p.port)?;
        Some(Self {
            name,
            remote: annotations.get(contract::ANNOTATION_SERVICE_GROUP).map(String::as_str) == Some("soak-remote"),
            etp_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            dual: spec.ip_family_policy.as_deref() == Some("RequireDualStack"),
            sharing: annotations.get(contract::ANNOTATION_ALLOW_SHARED_IP).cloned(),
            port: u16::try_from(port).ok()?,
            endpoints: nodes.iter().map(|n| (n.clone(), EndpointState::Ready)).collect(),
            tagged: svc.metadata.labels.as_ref().is_some_and(|l| l.contains_key(TAG_LABEL)),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Churn {
    Create,
    Delete,
    EditPolicy,
    EditPort,
    EditGroup,
    EditLabel,
    FlipEndpoint,
}

impl Churn {
    fn name(self) -> &'static str {
        match self {
            Self::Create => "create-service",
            Self::Delete => "delete-service",
            Self::EditPolicy => "edit-traffic-policy",
            Self::EditPort => "edit-port",
            Self::EditGroup => "edit-group",
            Self::EditLabel => "edit-label",
            Self::FlipEndpoint => "flip-endpoint",
        }
    }
}

/// A graceful handover: SIGTERM to exit (plus a second), and the local addresses the node held.
#[derive(Clone, Debug)]
struct Handover {
    node: String,
    from: Duration,
    to: Duration,
    ips: BTreeSet<IpAddr>,
}

/// State shared by the churn, the faults and the reporting.
struct Soak {
    lab: Arc<Lab>,
    sampler: Sampler,
    nodes: Vec<String>,
    deadline: Instant,
    bounds: Bounds,
    max_outage: Duration,
    avoid_open_bugs: bool,
    gate: tokio::sync::Mutex<()>,
    timeline: Mutex<Vec<Entry>>,
    actions: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<Vec<String>>,
    handovers: Mutex<Vec<Handover>>,
    next_port: AtomicU64,
    next_name: AtomicU64,
    next_key: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

const API_TIMEOUT: Duration = Duration::from_secs(15);

async fn bounded<T>(
    what: &str,
    future: impl std::future::Future<Output = Result<T, purelb::kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(API_TIMEOUT, future).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {API_TIMEOUT:?}")),
    }
}

impl Soak {
    fn record(&self, action: &str, detail: impl Into<String>) {
        let t_s = secs(self.sampler.now());
        lock(&self.timeline).push(Entry { t_s, action: action.to_owned(), detail: detail.into() });
        *lock(&self.actions).entry(action.to_owned()).or_default() += 1;
    }

    /// A timeline entry that is not an action.
    fn mark(&self, what: &str, detail: impl Into<String>) {
        let t_s = secs(self.sampler.now());
        lock(&self.timeline).push(Entry { t_s, action: what.to_owned(), detail: detail.into() });
    }

    fn failed(&self, action: &str, why: &str) {
        let t_s = secs(self.sampler.now());
        lock(&self.timeline).push(Entry { t_s, action: format!("{action} (failed)"), detail: why.to_owned() });
        *lock(&self.failures).entry(action.to_owned()).or_default() += 1;
    }

    fn error(&self, message: String) {
        let t_s = secs(self.sampler.now());
        lock(&self.timeline).push(Entry { t_s, action: "ERROR".to_owned(), detail: message.clone() });
        lock(&self.errors).push(format!("t={t_s:.3}s: {message}"));
    }

    fn over(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.lab.client(), NAMESPACE)
    }

    async fn emulator(&self, path: &str, body: serde_json::Value) -> Result<(), String> {
        let request = ::http::Request::post(path)
            .header(::http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string().into_bytes())
            .map_err(|e| e.to_string())?;
        bounded(path, self.lab.client().request_text(request)).await.map(|_| ())
    }

    /// Runs a blocking lab call (signals and waits) off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Lab) -> Result<T, LabError> + Send + 'static,
    ) -> Result<T, String> {
        let lab = self.lab.clone();
        tokio::task::spawn_blocking(move || f(&lab)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
    }

    // ---- churn ----

    async fn churn(&self, mut rng: Rng) {
        let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
        while !self.over() {
            tokio::time::sleep(rng.between(Duration::from_millis(300), Duration::from_millis(1500))).await;
            let _quiet = self.gate.lock().await;
            if self.over() {
                break;
            }
            let n = plans.len();
            let action = if n < 4 {
                Churn::Create
            } else {
                let create = if n >= 10 { 0 } else { 3 };
                rng.weighted(&[
                    (Churn::Create, create),
                    (Churn::Delete, 2),
                    (Churn::EditPolicy, 1),
                    (Churn::EditPort, 1),
                    (Churn::EditGroup, 1),
                    (Churn::EditLabel, 1),
                    (Churn::FlipEndpoint, 3),
                ])
                .unwrap_or(Churn::Create)
            };
            if let Err(why) = self.churn_once(action, &mut plans, &mut rng).await {
                self.failed(action.name(), &why);
                self.resync(&mut plans).await;
            }
        }
    }

    async fn churn_once(&self, action: Churn, plans: &mut BTreeMap<String, Plan>, rng: &mut Rng) -> Result<(), String> {
        let names: Vec<String> = plans.keys().cloned().collect();
        let apply = PatchParams::apply(MANAGER).force();
        match action {
            Churn::Create => {
                let name = format!("s{}", self.next_name.fetch_add(1, Ordering::Relaxed));
                let remote = rng.chance(0.3);
                let dual = rng.chance(0.4);
                // Share with an existing key of the same group, or bring a new key, or none.
                let keys: Vec<String> = plans
                    .values()
                    .filter(|p| p.remote == remote)
                    .filter_map(|p| p.sharing.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let sharing = if !keys.is_empty() && rng.chance(0.35) {
                    rng.pick(&keys).cloned()
                } else if rng.chance(0.3) {
                    Some(format!("k{}", self.next_key.fetch_add(1, Ordering::Relaxed)))
                } else {
                    None
                };
                let etp_local = rng.chance(0.3);
                let plan = Plan {
                    name: name.clone(),
                    remote,
                    etp_local,
                    dual,
                    sharing,
                    port: self.port(),
                    endpoints: self.nodes.iter().map(|n| (n.clone(), EndpointState::draw(rng))).collect(),
                    tagged: false,
                };
                self.lab.set_endpoints(&plan.backends()).await.map_err(|e| e.to_string())?;
                bounded("create", self.services().patch(&name, &apply, &Patch::Apply(&plan.object()))).await?;
                self.record(action.name(), plan.describe());
                plans.insert(name, plan);
            }
            Churn::Delete => {
                let Some(name) = rng.pick(&names).cloned() else { return Ok(()) };
                bounded("delete", self.services().delete(&name, &DeleteParams::default())).await?;
                plans.remove(&name);
                self.record(action.name(), name.clone());
                self.lab.delete_endpoints(NAMESPACE, &name).await.map_err(|e| e.to_string())?;
            }
            Churn::EditPolicy | Churn::EditPort | Churn::EditGroup => {
                let Some(plan) = rng.pick(&names).and_then(|n| plans.get_mut(n)) else { return Ok(()) };
                let mut next = plan.clone();
                match action {
                    Churn::EditPolicy => next.etp_local = !next.etp_local,
                    Churn::EditPort => next.port = self.port(),
                    _ => next.remote = !next.remote,
                }
                bounded("edit", self.services().patch(&next.name, &apply, &Patch::Apply(&next.object()))).await?;
                self.record(action.name(), next.describe());
                *plan = next;
            }
            Churn::EditLabel => {
                let Some(plan) = rng.pick(&names).and_then(|n| plans.get_mut(n)) else { return Ok(()) };
                let value = if plan.tagged { serde_json::Value::Null } else { json!("x") };
                let patch = json!({"metadata": {"labels": {TAG_LABEL: value}}});
                bounded("label", self.services().patch(&plan.name, &PatchParams::default(), &Patch::Merge(&patch)))
                    .await?;
                plan.tagged = !plan.tagged;
                self.record(action.name(), format!("{} tagged={}", plan.name, plan.tagged));
            }
            Churn::FlipEndpoint => {
                let Some(plan) = rng.pick(&names).and_then(|n| plans.get_mut(n)) else { return Ok(()) };
                let Some(node) = rng.pick(&self.nodes).cloned() else { return Ok(()) };
                let mut next = plan.clone();
                let state = next.endpoints.entry(node.clone()).or_insert(EndpointState::Ready);
                *state = state.flipped(rng);
                let now = *state;
                self.lab.set_endpoints(&next.backends()).await.map_err(|e| e.to_string())?;
                self.record(action.name(), format!("{} {node} {}", next.name, now.as_str()));
                *plan = next;
            }
        }
        Ok(())
    }

    fn port(&self) -> u16 {
        let n = self.next_port.fetch_add(1, Ordering::Relaxed);
        u16::try_from(8000 + n % 50_000).unwrap_or(8000)
    }

    /// After a failed write: the Services as the API has them.
    async fn resync(&self, plans: &mut BTreeMap<String, Plan>) {
        let params = ListParams::default().labels(&format!("{SOAK_LABEL}=true"));
        let Ok(list) = bounded("list", self.services().list(&params)).await else { return };
        let live: BTreeMap<String, Service> =
            list.items.into_iter().filter_map(|s| Some((s.metadata.name.clone()?, s))).collect();
        plans.retain(|name, _| live.contains_key(name));
        for (name, svc) in &live {
            if !plans.contains_key(name)
                && let Some(plan) = Plan::from_service(svc, &self.nodes)
                && self.lab.set_endpoints(&plan.backends()).await.is_ok()
            {
                plans.insert(name.clone(), plan);
            }
        }
    }

    // ---- faults ----

    async fn faults(&self, mut rng: Rng) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut deck: Vec<Fault> = Fault::ALL.iter().map(|(f, _)| *f).collect();
        rng.shuffle(&mut deck);
        while !self.over() {
            let fault = deck.pop().or_else(|| rng.weighted(&Fault::ALL)).unwrap_or(Fault::WatchExpiry);
            if let Err(why) = self.fault(fault, &mut rng).await {
                self.failed(fault.name(), &why);
            }
            tokio::time::sleep(rng.between(Duration::from_secs(1), Duration::from_secs(4))).await;
        }
    }

    fn local_addresses_of(observation: &Observation, node: &str) -> BTreeSet<IpAddr> {
        observation
            .kernel
            .get(node)
            .map(|list| list.iter().filter(|a| a.owned && a.ifname != DUMMY_LINK).map(|a| a.ip).collect())
            .unwrap_or_default()
    }

    async fn restart_agent(&self, node: &str) -> Result<(), String> {
        let name = agent_name(node);
        let n = node.to_owned();
        self.blocking(move |lab| lab.restart_agent(&n)).await?;
        if self.lab.wait_ready(&name, Duration::from_secs(30)).await {
            self.sampler.note(Note::AgentUp(node.to_owned()));
            Ok(())
        } else {
            self.error(format!("{name} was not ready 30 s after its restart"));
            self.sampler.note(Note::AgentUp(node.to_owned()));
            Err(format!("{name} not ready"))
        }
    }

    async fn terminate_agent(&self, node: &str) -> Result<(), String> {
        let held = Self::local_addresses_of(&self.sampler.latest(), node);
        self.sampler.note(Note::AgentStopping(node.to_owned()));
        let from = self.sampler.now();
        let n = node.to_owned();
        let status = self.blocking(move |lab| lab.terminate_agent(&n, Duration::from_secs(15))).await?;
        let exited = self.sampler.now();
        self.sampler.note(Note::AgentDown(node.to_owned()));
        if !matches!(status, ProcessStatus::Exited { code: Some(0), .. }) {
            self.error(format!("agent-{node} did not exit 0 within 15 s of SIGTERM: {status}"));
        }
        self.record(
            "sigterm-agent",
            format!("{node} (held {}) exited after {} ms", fmt_ips(&held), (exited - from).as_millis()),
        );
        lock(&self.handovers).push(Handover {
            node: node.to_owned(),
            from,
            to: exited + Duration::from_secs(1),
            ips: held,
        });
        Ok(())
    }

    #[allow(clippy::too_many_lines)]
    async fn fault(&self, fault: Fault, rng: &mut Rng) -> Result<(), String> {
        let name = fault.name();
        match fault {
            Fault::KillAgent => {
                let node = rng.pick(&self.nodes).cloned().ok_or("no node")?;
                let held = Self::local_addresses_of(&self.sampler.latest(), &node);
                let n = node.clone();
                self.blocking(move |lab| lab.kill_agent(&n)).await?;
                self.sampler.note(Note::AgentDown(node.clone()));
                let pause = rng.between(Duration::from_millis(500), Duration::from_secs(4));
                self.record(name, format!("{node} (held {}), restart in {} ms", fmt_ips(&held), pause.as_millis()));
                tokio::time::sleep(pause).await;
                self.restart_agent(&node).await?;
            }
            Fault::KillAllocator => {
                let replicas = self.lab.allocator_names();
                let leader = self.allocator_leader(&replicas).await;
                let victim = match &leader {
                    Some(l) if rng.chance(0.6) => l.clone(),
                    _ => rng.pick(&replicas).cloned().ok_or("no allocator")?,
                };
                let was_leader = leader.as_ref().is_none_or(|l| *l == victim);
                let v = victim.clone();
                self.blocking(move |lab| lab.kill(&v)).await?;
                if was_leader {
                    self.sampler.note(Note::AllocatorDown);
                }
                let pause = rng.between(Duration::from_millis(500), Duration::from_secs(3));
                self.record(
                    name,
                    format!(
                        "{victim} ({}), restart in {} ms",
                        if was_leader { "leader or unknown" } else { "standby" },
                        pause.as_millis()
                    ),
                );
                tokio::time::sleep(pause).await;
                let v = victim.clone();
                self.blocking(move |lab| lab.restart(&v)).await?;
                let ready = self.lab.wait_ready(&victim, Duration::from_secs(30)).await;
                self.sampler.note(Note::AllocatorUp);
                if !ready {
                    self.error(format!("{victim} was not ready 30 s after its restart"));
                }
            }
            Fault::TerminateAgent => {
                let node = rng.pick(&self.nodes).cloned().ok_or("no node")?;
                self.terminate_agent(&node).await?;
                tokio::time::sleep(rng.between(Duration::from_millis(500), Duration::from_secs(2))).await;
                self.restart_agent(&node).await?;
            }
            Fault::RollingUpdate => {
                self.record(name, format!("SIGTERM and restart {} in turn", self.nodes.join(", ")));
                for node in &self.nodes {
                    self.terminate_agent(node).await?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    self.restart_agent(node).await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Fault::CutAgent => {
                let node = rng.pick(&self.nodes).cloned().ok_or("no node")?;
                let modes: &[FailMode] = if self.avoid_open_bugs {
                    &[FailMode::Refuse, FailMode::Unavailable]
                } else {
                    &[FailMode::Refuse, FailMode::Unavailable, FailMode::Hang]
                };
                let mode = *rng.pick(modes).ok_or("no mode")?;
                let span = rng.between(Duration::from_secs(3), Duration::from_secs(12));
                let held = Self::local_addresses_of(&self.sampler.latest(), &node);
                self.sampler.note(Note::AgentCut(node.clone()));
                self.lab.partition_agent(&node, mode).await.map_err(|e| e.to_string())?;
                self.record(name, format!("{node} (held {}) {mode:?} for {} ms", fmt_ips(&held), span.as_millis()));
                tokio::time::sleep(span).await;
                let healed = self.heal(&node).await;
                self.sampler.note(Note::AgentHealed(node.clone()));
                healed?;
            }
            Fault::ApiOutage => {
                let _quiet = self.gate.lock().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                let span = rng.between(Duration::from_secs(3), self.max_outage.max(Duration::from_secs(3)));
                let mode = if rng.chance(0.5) { "refuse" } else { "unavailable" };
                self.sampler.note(Note::ApiDown);
                let body = json!({"action": "unavailable", "seconds": span.as_secs_f64(), "mode": mode});
                // With `refuse` the listener may close before the answer: the fault is set anyway.
                let posted = self.emulator("/_emulator/faults", body).await;
                self.record(
                    name,
                    format!(
                        "{mode} for {} ms{}",
                        span.as_millis(),
                        posted.err().map(|e| format!(" ({e})")).unwrap_or_default()
                    ),
                );
                tokio::time::sleep(span).await;
                let back = self.lab.wait_api(Duration::from_secs(20)).await;
                self.sampler.note(Note::ApiUp);
                if !back {
                    self.error("the API did not answer 20 s after the outage ended".to_owned());
                }
                tokio::time::sleep(self.bounds.rejoin_hold_off + Duration::from_secs(1)).await;
            }
            Fault::WatchExpiry => {
                self.emulator("/_emulator/compact", json!({})).await?;
                self.emulator("/_emulator/faults", json!({"action": "expireNextWatch", "count": 3})).await?;
                self.emulator("/_emulator/faults", json!({"action": "closeWatches"})).await?;
                self.record(name, "history compacted, next 3 watches expired, every watch closed");
            }
            Fault::DeleteAddress => {
                let observation = self.sampler.latest();
                let candidates: Vec<(String, IpAddr, u8, String)> = observation
                    .kernel
                    .iter()
                    .flat_map(|(node, list)| {
                        list.iter()
                            .filter(|a| {
                                a.owned && observation.expectation.get(&a.ip).is_some_and(|e| e.nodes.contains(node))
                            })
                            .map(|a| (node.clone(), a.ip, a.prefix_len, a.ifname.clone()))
                    })
                    .collect();
                let Some((node, ip, prefix, ifname)) = rng.pick(&candidates).cloned() else {
                    self.record(name, "nothing announced to delete");
                    return Ok(());
                };
                self.sampler.note(Note::Drift { node: node.clone(), ip });
                self.lab
                    .exec_ok(&node, "ip", &["addr", "del", &format!("{ip}/{prefix}"), "dev", &ifname])
                    .map_err(|e| e.to_string())?;
                self.record(name, format!("{ip}/{prefix} from {node} {ifname}"));
            }
            Fault::RestartApiserver => {
                let _quiet = self.gate.lock().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.sampler.note(Note::ApiDown);
                let result = self.lab.restart_apiserver(Duration::from_secs(60)).await;
                self.sampler.note(Note::ApiUp);
                match result {
                    Ok(down) => self.record(name, format!("unreachable for {} ms", down.as_millis())),
                    Err(e) => self.error(format!("restarting the emulator: {e}")),
                }
                tokio::time::sleep(self.bounds.rejoin_hold_off + Duration::from_secs(1)).await;
            }
        }
        Ok(())
    }

    async fn heal(&self, node: &str) -> Result<(), String> {
        // The heal must land even if the first try is slow.
        let mut last = String::new();
        for _ in 0..3 {
            match tokio::time::timeout(API_TIMEOUT, self.lab.heal_agent(node)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".to_owned(),
            }
        }
        self.error(format!("could not reconnect agent-{node}: {last}"));
        Err(last)
    }

    async fn allocator_leader(&self, replicas: &[String]) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.lab.client(), INSTALL_NAMESPACE);
        let lease = bounded("get lease", leases.get(contract::ALLOCATOR_LEASE_NAME)).await.ok()?;
        let holder = lease.spec?.holder_identity?;
        let pid: u32 = holder.rsplit_once('_')?.1.parse().ok()?;
        replicas
            .iter()
            .find(|r| matches!(self.lab.status_of(r), Ok(ProcessStatus::Running { pid: p }) if p == pid))
            .cloned()
    }
}

fn fmt_ips(ips: &BTreeSet<IpAddr>) -> String {
    if ips.is_empty() {
        return "nothing".to_owned();
    }
    ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

/// One client request.
#[derive(Clone, Debug)]
struct Probe {
    ip: IpAddr,
    start: Duration,
    end: Duration,
    error: Option<String>,
}

fn fetch(ip: IpAddr) -> Result<(), String> {
    let target = SocketAddr::new(ip, PROBE_PORT);
    let mut stream =
        TcpStream::connect_timeout(&target, Duration::from_secs(1)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let request =
        format!("GET / HTTP/1.1\r\nHost: {target}\r\nUser-Agent: purelb-lab-soak\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).map_err(|e| format!("receive: {e}"))?;
    if reply.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("answer: {:?}", String::from_utf8_lossy(&reply[..reply.len().min(40)])))
    }
}

struct Prober {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Result<Vec<Probe>, LabError>>>,
}

impl Prober {
    /// Client threads (inside the client's namespace) sending requests to the local addresses
    /// that should be announced, round robin, about 20 per second each.
    fn start(netns: &str, latest: Arc<Mutex<Arc<Observation>>>, epoch: Instant, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let handles = (0..threads)
            .map(|offset| {
                let (stop, sent, failed, latest) = (stop.clone(), sent.clone(), failed.clone(), latest.clone());
                let netns = netns.to_owned();
                std::thread::spawn(move || {
                    netns::in_netns(&netns, move || {
                        let mut probes = Vec::new();
                        let mut turn = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let targets: Vec<IpAddr> = {
                                let observation = lock(&latest).clone();
                                observation
                                    .expectation
                                    .iter()
                                    .filter(|(_, e)| e.kind == Kind::Local && !e.nodes.is_empty())
                                    .map(|(ip, _)| *ip)
                                    .collect()
                            };
                            let spread = offset * targets.len() / threads.max(1);
                            let Some(ip) = targets.get((turn + spread) % targets.len().max(1)).copied() else {
                                std::thread::sleep(Duration::from_millis(50));
                                continue;
                            };
                            turn += 1;
                            let start = epoch.elapsed();
                            let result = fetch(ip);
                            let end = epoch.elapsed();
                            sent.fetch_add(1, Ordering::Relaxed);
                            if result.is_err() {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            probes.push(Probe { ip, start, end, error: result.err() });
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Ok(probes)
                    })
                })
            })
            .collect();
        Self { stop, sent, failed, threads: handles }
    }

    fn finish(self) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for handle in self.threads {
            if let Ok(Ok(mut probes)) = handle.join() {
                all.append(&mut probes);
            }
        }
        all.sort_by_key(|p| p.start);
        all
    }
}

fn classify(
    probes: &[Probe],
    handovers: &[Handover],
    checker_allowed: impl Fn(IpAddr, Duration, Duration) -> Option<WindowCause>,
) -> RequestReport {
    let mut report = RequestReport {
        sent: probes.len() as u64,
        handovers: handovers.iter().filter(|h| !h.ips.is_empty()).count() as u64,
        ..RequestReport::default()
    };
    for p in probes {
        let Some(error) = &p.error else {
            report.ok += 1;
            continue;
        };
        report.failed += 1;
        let failure = |class: &str| FailedRequest {
            ip: p.ip,
            start_s: secs(p.start),
            end_s: secs(p.end),
            error: error.clone(),
            class: class.to_owned(),
        };
        if let Some(cause) = checker_allowed(p.ip, p.start, p.end) {
            *report.allowed.entry(cause.as_str().to_owned()).or_default() += 1;
            continue;
        }
        report.outside += 1;
        match handovers.iter().find(|h| h.ips.contains(&p.ip) && h.from <= p.end && p.start <= h.to) {
            Some(h) => {
                report.handover_failures += 1;
                report.notable.push(failure(&format!("outside, during the graceful handover of {}", h.node)));
            }
            None => report.notable.push(failure("outside")),
        }
    }
    report
}

/// Runs a soak and tears the lab down. Progress lines go to `progress`.
///
/// # Errors
///
/// The lab cannot be built or observed. Problems during the run are in the report.
#[allow(clippy::too_many_lines)]
pub async fn run(options: SoakOptions, progress: &mut (dyn Write + Send)) -> Result<SoakReport, LabError> {
    let started = Instant::now();
    let nodes_n = options.nodes.clamp(3, 4);
    let mut lab_options = LabOptions::new(&options.prefix, nodes_n)
        .dual_stack(true)
        .allocators(2)
        .persist_api(true)
        .ready_timeout(Duration::from_secs(60))
        .keep_logs(options.keep_logs);
    lab_options.dir.clone_from(&options.dir);
    lab_options.purelb_bin.clone_from(&options.purelb_bin);
    lab_options.lab_bin.clone_from(&options.lab_bin);
    lab_options.agent_args = AGENT_ARGS.iter().map(|s| (*s).to_owned()).collect();
    lab_options.allocator_args = ALLOCATOR_ARGS.iter().map(|s| (*s).to_owned()).collect();
    let _ = writeln!(
        progress,
        "soak: seed {} for {:?}, building a {nodes_n}-node dual-stack lab {}",
        options.seed, options.duration, options.prefix
    );
    let mut lab = Lab::start(lab_options).await?;
    let not_running: Vec<String> =
        lab.process_status().into_iter().filter(|(_, s)| !s.is_running()).map(|(n, s)| format!("{n}: {s}")).collect();
    if !not_running.is_empty() {
        lab.set_keep_logs(true);
        return Err(LabError::Command {
            command: "purelb-lab soak".to_owned(),
            detail: format!("processes not running: {}", not_running.join("; ")),
        });
    }
    let purelb_bin = lab.purelb_bin().map(|p| p.display().to_string()).unwrap_or_default();
    let build = if purelb_bin.contains("/release/") {
        "release"
    } else if purelb_bin.contains("/debug/") {
        "debug"
    } else {
        "unknown"
    };
    lab.apply_yaml(LOCAL_GROUP_YAML).await?;
    lab.apply_yaml(REMOTE_GROUP_YAML).await?;
    let nodes = lab.node_names();
    for node in &nodes {
        lab.serve(node, PROBE_PORT).await?;
    }

    let epoch = Instant::now();
    let checker = Checker::new(options.bounds, &nodes, DUMMY_LINK);
    let log = ChangeLog::new(lab.dir().join(API_DATA_DIR).join(API_CHANGE_LOG));
    let kernel = KernelSampler::open(lab.topology())?;
    let sampler = Sampler::start(epoch, options.sample_every, log, kernel, nodes.clone(), checker);
    let client_netns = lab.topology().client.netns.clone();
    let prober = Prober::start(&client_netns, sampler.latest_handle(), epoch, 2);
    let (sent, failed) = (prober.sent.clone(), prober.failed.clone());

    let max_outage = (options.duration / 6).clamp(Duration::from_secs(3), Duration::from_secs(30));
    let soak = Soak {
        lab: Arc::new(lab),
        sampler,
        nodes: nodes.clone(),
        deadline: Instant::now() + options.duration,
        bounds: options.bounds,
        max_outage,
        avoid_open_bugs: options.avoid_open_bugs,
        gate: tokio::sync::Mutex::new(()),
        timeline: Mutex::new(Vec::new()),
        actions: Mutex::new(BTreeMap::new()),
        failures: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(Vec::new()),
        handovers: Mutex::new(Vec::new()),
        next_port: AtomicU64::new(0),
        next_name: AtomicU64::new(1),
        next_key: AtomicU64::new(1),
    };
    let _ = writeln!(
        progress,
        "soak: lab up in {:.1} s; churn and faults for {:?} (seed {})",
        started.elapsed().as_secs_f64(),
        options.duration,
        options.seed
    );
    let report_progress = async {
        let mut ticker = tokio::time::interval(Duration::from_secs(30));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if soak.over() {
                break;
            }
            let actions: u64 = lock(&soak.actions).values().sum();
            let _ = writeln!(
                progress,
                "soak: t={:.0}s actions {actions}, violations {}, requests {} ({} failed)",
                soak.sampler.now().as_secs_f64(),
                soak.sampler.violations(),
                sent.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
            );
        }
    };
    tokio::join!(soak.churn(Rng::new(options.seed, 1)), soak.faults(Rng::new(options.seed, 2)), report_progress);
    soak.mark("settle", format!("churn and faults stopped; {} s quiet", options.settle.as_secs()));
    tokio::time::sleep(options.settle).await;
    for (name, status) in soak.lab.process_status() {
        if !status.is_running() && !name.starts_with("serve-") {
            soak.error(format!("{name} is not running at the end: {status}"));
        } else if !status.is_running() {
            soak.error(format!("{name} (the lab's HTTP server) stopped: {status}"));
        }
    }
    let probes = tokio::task::spawn_blocking(move || prober.finish()).await.unwrap_or_default();
    let Soak { lab, sampler, timeline, actions, failures, errors, handovers, .. } = soak;
    let output = sampler.stop().await?;
    let checker = output.report;
    let handovers = handovers.into_inner().unwrap_or_else(PoisonError::into_inner);
    let requests = classify(&probes, &handovers, |ip, from, to| checker.windows.allowed(ip, from, to));
    let mut errors = errors.into_inner().unwrap_or_else(PoisonError::into_inner);
    if output.unreadable > 0 || output.log_errors > 0 {
        errors.push(format!(
            "the emulator's change log: {} lines unreadable, {} read errors",
            output.unreadable, output.log_errors
        ));
    }
    let b = options.bounds;
    let bounds = BoundsReport {
        sample_period_ms: options.sample_every.as_millis(),
        handover_overlap_ms: b.handover_overlap.as_millis(),
        converge_ms: b.converge.as_millis(),
        orphan_sweep_ms: b.orphan_sweep.as_millis(),
        restart_hold_off_ms: b.restart_hold_off.as_millis(),
        rejoin_hold_off_ms: b.rejoin_hold_off.as_millis(),
        allocation_hold_off_ms: b.allocation_hold_off.as_millis(),
        outage_withdrawal_ms: b.outage_withdrawal.as_millis(),
        agent_args: AGENT_ARGS.iter().map(|s| (*s).to_owned()).collect(),
        allocator_args: ALLOCATOR_ARGS.iter().map(|s| (*s).to_owned()).collect(),
    };
    let invariants = Invariant::ALL
        .iter()
        .map(|i| InvariantLine {
            number: i.number(),
            invariant: *i,
            promise: i.describe(),
            violations: checker.count(*i),
        })
        .collect();
    let passed = checker.violations.is_empty() && requests.outside == 0 && errors.is_empty();
    let mut report = SoakReport {
        seed: options.seed,
        duration_s: secs(options.duration),
        elapsed_s: 0.0,
        nodes: nodes_n,
        avoid_open_bugs: options.avoid_open_bugs,
        purelb_bin,
        build: build.to_owned(),
        bounds,
        samples: checker.samples,
        sample_gaps: Stats::of(&checker.gaps),
        invariants,
        violations: checker.violations.clone(),
        exempt: checker
            .exempt
            .iter()
            .map(|(what, stat)| ExemptLine {
                what: what.clone(),
                stats: Stats::of(&stat.durations()),
                longest_since_s: stat.longest().map_or(0.0, |(since, _, _)| secs(*since)),
                longest_subject: stat.longest().map(|(_, _, s)| s.clone()).unwrap_or_default(),
                episodes: stat
                    .episodes
                    .iter()
                    .map(|(since, lasted, ip)| (secs(*since), lasted.as_secs_f64() * 1000.0, ip.clone()))
                    .collect(),
            })
            .collect(),
        actions: actions.into_inner().unwrap_or_else(PoisonError::into_inner),
        action_failures: failures.into_inner().unwrap_or_else(PoisonError::into_inner),
        convergence: checker.convergence.iter().map(|(k, v)| (k.clone(), Stats::of(v))).collect(),
        superseded: checker.superseded,
        requests,
        errors,
        timeline: timeline.into_inner().unwrap_or_else(PoisonError::into_inner),
        passed,
    };
    match Arc::try_unwrap(lab) {
        Ok(mut lab) => {
            let dir = lab.dir().to_owned();
            if !passed {
                lab.set_keep_logs(true);
                let _ = writeln!(progress, "soak: FAILED; the logs stay in {}", dir.display());
            }
            if let Err(e) = lab.shutdown() {
                report.errors.push(format!("tearing the lab down: {e}"));
            }
        }
        Err(lab) => drop(lab),
    }
    report.elapsed_s = secs(started.elapsed());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic_per_seed_and_stream() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(42, 1);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(42, 1);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(42, 2);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut r = Rng::new(7, 0);
        for _ in 0..1000 {
            assert!(r.below(3) < 3);
            let d = r.between(Duration::from_millis(300), Duration::from_millis(1500));
            assert!(d >= Duration::from_millis(300) && d <= Duration::from_millis(1500));
        }
        let mut counts = [0u32; 2];
        for _ in 0..1000 {
            match r.weighted(&[(0usize, 1), (1usize, 3)]) {
                Some(i) => counts[i] += 1,
                None => panic!("weighted returned nothing"),
            }
        }
        assert!(counts[1] > counts[0] * 2, "{counts:?}");
        let mut deck = [1, 2, 3, 4, 5];
        r.shuffle(&mut deck);
        deck.sort_unstable();
        assert_eq!(deck, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Stats::of(&values);
        assert_eq!((s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms), (100, 50.0, 90.0, 99.0, 100.0));
        assert_eq!(Stats::of(&[]).count, 0);
    }

    #[test]
    fn failed_requests_are_classified_by_window_and_handover() {
        let ip: IpAddr = "192.0.2.240".parse().unwrap();
        let other: IpAddr = "192.0.2.241".parse().unwrap();
        let at = |s: u64| Duration::from_secs(s);
        let probe = |ip, s: u64, ok: bool| Probe {
            ip,
            start: at(s),
            end: at(s) + Duration::from_millis(10),
            error: (!ok).then(|| "connection reset".to_owned()),
        };
        let handovers = [Handover { node: "n1".to_owned(), from: at(10), to: at(12), ips: BTreeSet::from([ip]) }];
        let probes = [
            probe(ip, 1, true),
            probe(ip, 10, false),    // a handover costs no request
            probe(ip, 11, false),    // nor a second one
            probe(other, 11, false), // not the handed-over address
            probe(ip, 20, false),    // inside a change window
            probe(ip, 40, false),    // outside everything
        ];
        let report = classify(&probes, &handovers, |ip, from, _| {
            (ip == "192.0.2.240".parse::<IpAddr>().unwrap() && from >= at(19) && from <= at(25))
                .then_some(WindowCause::Change)
        });
        assert_eq!((report.sent, report.ok, report.failed), (6, 1, 5));
        assert_eq!(report.handover_failures, 2);
        assert_eq!(report.handovers, 1);
        assert_eq!(report.allowed.get("change"), Some(&1));
        assert_eq!(report.outside, 4);
        assert_eq!(report.notable.len(), 4);
        assert!(report.notable.iter().filter(|f| f.class.contains("handover of n1")).count() == 2);
    }

    #[test]
    fn services_ask_for_what_the_plan_says() {
        let plan = Plan {
            name: "s1".to_owned(),
            remote: false,
            etp_local: true,
            dual: true,
            sharing: Some("k1".to_owned()),
            port: 8001,
            endpoints: BTreeMap::from([
                ("n1".to_owned(), EndpointState::Ready),
                ("n2".to_owned(), EndpointState::NotReady),
                ("n3".to_owned(), EndpointState::Terminating),
            ]),
            tagged: false,
        };
        let object = plan.object();
        assert_eq!(object["metadata"]["annotations"]["purelb.io/service-group"], "soak-local");
        assert_eq!(object["metadata"]["annotations"]["purelb.io/allow-shared-ip"], "k1");
        assert_eq!(object["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(object["spec"]["ipFamilyPolicy"], "RequireDualStack");
        assert_eq!(object["spec"]["ports"][0]["port"], 8001);
        let backends = plan.backends();
        assert_eq!(backends.backends.len(), 3);
        assert!(backends.backends[0].ready && !backends.backends[1].ready && !backends.backends[1].serving);
        let terminating = &backends.backends[2];
        assert!(!terminating.ready && terminating.serving && terminating.terminating);
        assert!(plan.describe().ends_with("ready on [n1] terminating on [n3]"), "{}", plan.describe());
        let svc: Service = serde_json::from_value(object).unwrap();
        let back = Plan::from_service(&svc, &["n1".to_owned()]).unwrap();
        assert_eq!((back.remote, back.etp_local, back.dual, back.port), (false, true, true, 8001));
        assert_eq!(back.sharing.as_deref(), Some("k1"));
        for yaml in [LOCAL_GROUP_YAML, REMOTE_GROUP_YAML] {
            let group: purelb::api::ServiceGroup = serde_yaml_ng::from_str(yaml).unwrap();
            let (base, spec) = match (&group.spec.local, &group.spec.remote) {
                (Some(spec), None) => ("spec.local", spec),
                (None, Some(spec)) => ("spec.remote", spec),
                _ => panic!("one of local and remote: {yaml}"),
            };
            let pools = purelb::core::ipam::parse_pool_spec(base, spec).unwrap();
            assert!(!pools.v4.is_empty() && !pools.v6.is_empty(), "{yaml}");
        }
    }
}
