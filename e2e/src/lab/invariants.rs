//! The soak's invariant checker: a pure state machine fed with timestamped observations of the
//! lab (the kernel addresses of every node, the Services, and what the Services and node Leases
//! say should be announced) and with notes about what the soak did (an agent killed, cut off,
//! the API down ..). It records every violation of the five promises of issue 9 with the time
//! it was detected, the time the condition began and how long it lasted:
//!
//! 1. a `local` address is held by at most one node; two holders are allowed only for
//!    [`Bounds::handover_overlap`] (a make-before-break handover);
//! 2. every address that should be announced is held by the node(s) the election picks, and every
//!    Service PureLB handles has its addresses, except within [`Bounds::converge`] of a change
//!    (and while the API is down: no address held when it went down is withdrawn);
//! 3. no PureLB-owned address stays on a node that should not hold it longer than
//!    [`Bounds::orphan_sweep`] (the last holder of a local address keeping it until the elected
//!    node holds it too is a make-before-break move, bounded by (1) and (2), not an orphan);
//! 4. a Service's address never changes unless the Service asked for another one;
//! 5. an address is never given to two Services unless they share a key (and no port collides).
//!
//! Who should hold what ([`expectation`]) is computed by the oracle ([`super::oracle`]), an
//! independent implementation of the documented rules (`api.md` §3, Kubernetes' endpoint
//! conditions), not by the agent's own decision code, so that a wrong rule in the product is a
//! violation here rather than agreed with. A node whose agent is down
//! (killed, stopped) is not held to (2) and (3), nor is one cut off from the API (its view is
//! stale by design); both are held to (1), except that a dead agent cannot remove anything, so
//! a second holder that is a dead agent's node is counted apart ([`CheckerReport::exempt`],
//! which also lists every overlap between running agents, within the bound or not).
//! When a node comes back, checks on it resume after a hold-off ([`Bounds::restart_hold_off`],
//! [`Bounds::rejoin_hold_off`]).
//!
//! Entry points: [`Checker::new`], [`Checker::note`], [`Checker::observe`], [`Checker::allowed`]
//! (the windows in which a failed client request is expected) and [`Checker::report`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use purelb::{
    api::contract,
    core::ipam::Family,
    k8s_openapi::{api::core::v1::Service, jiff::Timestamp},
    kube::ResourceExt,
};
use serde::Serialize;

pub use super::oracle::{Expectation, Expected, Kind, World, expectation};
use super::oracle::{ingress_addresses, pool_kind};

/// One of the five invariants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    /// (1) A `local` address is held by at most one node.
    SingleHolder,
    /// (2) What should be announced is held by the elected node(s); Services get addresses.
    ElectedHolds,
    /// (3) No owned address stays where it should not be.
    NoOrphans,
    /// (4) A Service's address changes only when the Service asks.
    StableAddresses,
    /// (5) An address is shared only by Services with the same key and disjoint ports.
    SharedOnlyByKey,
}

impl Invariant {
    /// Every invariant, in order.
    pub const ALL: [Self; 5] =
        [Self::SingleHolder, Self::ElectedHolds, Self::NoOrphans, Self::StableAddresses, Self::SharedOnlyByKey];

    /// Its number in issue 9 (1..=5).
    #[must_use]
    pub fn number(self) -> u8 {
        match self {
            Self::SingleHolder => 1,
            Self::ElectedHolds => 2,
            Self::NoOrphans => 3,
            Self::StableAddresses => 4,
            Self::SharedOnlyByKey => 5,
        }
    }

    /// One line saying what it promises.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::SingleHolder => "a local address is held by at most one node (handover overlap bounded)",
            Self::ElectedHolds => "every announced address is held by the elected node(s) within the convergence bound",
            Self::NoOrphans => {
                "no owned address stays on a node that should not hold it beyond the orphan sweep interval"
            }
            Self::StableAddresses => "a Service's address changes only when the Service asks for another one",
            Self::SharedOnlyByKey => {
                "an address is shared only by Services with the same sharing key and disjoint ports"
            }
        }
    }
}

/// An address on a node, as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelAddress {
    /// The interface.
    pub ifname: String,
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// It carries PureLB's ownership mark.
    pub owned: bool,
}

/// The addresses of every node, by node name.
pub type Kernel = BTreeMap<String, Vec<KernelAddress>>;

/// What the checker needs to know about one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    /// `namespace/name`.
    pub key: String,
    /// `metadata.uid` (a re-created Service is another Service).
    pub uid: String,
    /// PureLB handles it: `type: LoadBalancer` with PureLB's class or none.
    pub handled: bool,
    /// `status.loadBalancer.ingress` addresses.
    pub addresses: Vec<IpAddr>,
    /// `purelb.io/pool-type` as the allocator wrote it.
    pub kind: Option<Kind>,
    /// Everything in the Service that asks for a particular address (group, pins, sharing key,
    /// class, type, families), as one comparable string.
    pub request: String,
    /// `purelb.io/allow-shared-ip`.
    pub sharing_key: Option<String>,
    /// (protocol, port) pairs.
    pub ports: BTreeSet<(String, i32)>,
}

impl ServiceView {
    /// It has its addresses and the pool type the agents need.
    #[must_use]
    pub fn allocated(&self) -> bool {
        !self.addresses.is_empty() && self.kind.is_some()
    }
}

/// Reads a Service.
#[must_use]
pub fn service_view(svc: &Service) -> ServiceView {
    let annotations = svc.annotations();
    let annotation = |key: &str| annotations.get(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let spec = svc.spec.clone().unwrap_or_default();
    let class = spec.load_balancer_class.clone();
    let handled = spec.type_.as_deref() == Some("LoadBalancer")
        && class.as_deref().is_none_or(|c| c == contract::DEFAULT_LB_CLASS);
    let request = serde_json::json!({
        "group": annotation(contract::ANNOTATION_SERVICE_GROUP),
        "addresses": annotation(contract::ANNOTATION_ADDRESSES),
        "sharing": annotation(contract::ANNOTATION_ALLOW_SHARED_IP),
        "loadBalancerIP": spec.load_balancer_ip,
        "type": spec.type_,
        "class": class,
        "families": spec.ip_families,
        "policy": spec.ip_family_policy,
    })
    .to_string();
    let ports = spec
        .ports
        .unwrap_or_default()
        .iter()
        .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()), p.port))
        .collect();
    ServiceView {
        key: format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any()),
        uid: svc.uid().unwrap_or_default(),
        handled,
        addresses: ingress_addresses(svc),
        kind: pool_kind(svc),
        request,
        sharing_key: annotation(contract::ANNOTATION_ALLOW_SHARED_IP),
        ports,
    }
}

/// The time bounds the checker enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// (1) Longest time two nodes may hold one local address: a make-before-break handover
    /// holds it twice for ~200 ms, longer when a connection raced the withdrawal and the
    /// address was put back for it, or when a rolling update of every agent loads a 2-core
    /// machine (489 ms seen on 2026-12-03, 688 ms with two soaks side by side in CI): 1 s
    /// (`docs/agent.md`, "Graceful handover").
    pub handover_overlap: Duration,
    /// (2) Longest time from a change (of the Services, Leases, endpoints) until the elected
    /// nodes hold the address, and until a new Service has its addresses.
    pub converge: Duration,
    /// (3) Longest time an owned address may stay on a node that should not hold it (the
    /// agents' `--orphan-sweep-interval`).
    pub orphan_sweep: Duration,
    /// (2)/(3) After an agent is back (ready again), checks on its node resume after this.
    pub restart_hold_off: Duration,
    /// (2)/(3) After an agent (or every agent) regains the API, checks on its node resume after
    /// this: the agent waits one lease duration before claiming or dropping after an outage, and
    /// its watch caches retry at most about 5 s apart (`purelb::watch::WatchBackoff`).
    pub rejoin_hold_off: Duration,
    /// (2) After the allocator or the API is back, allocation checks resume after this (the
    /// allocator's leader lease plus slack).
    pub allocation_hold_off: Duration,
    /// (2) While the API is down, an address held when it went down may be missing from its
    /// node for at most this long (nothing should withdraw it at all).
    pub outage_withdrawal: Duration,
    /// (2)/(3) An agent's own Lease is current while its last renewal is younger than this (1.5
    /// renew intervals): a node whose `renewTime` is older neither claims nor drops, and checks
    /// on it pause (`docs/agent.md`, "Split brain / API outages").
    pub renewal_window: Duration,
    /// (2)/(3) After a gap of at least [`Bounds::renewal_window`] between two renewals (an
    /// outage of that node's own, e.g. a starved process), the agent waits one lease duration
    /// before claiming or dropping: checks on it resume after this.
    pub renewal_recovery: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            handover_overlap: Duration::from_secs(1),
            converge: Duration::from_secs(5),
            orphan_sweep: Duration::from_secs(2),
            restart_hold_off: Duration::from_secs(1),
            rejoin_hold_off: Duration::from_secs(6),
            allocation_hold_off: Duration::from_secs(6),
            outage_withdrawal: Duration::from_millis(200),
            renewal_window: Duration::from_millis(750),
            renewal_recovery: Duration::from_secs(2),
        }
    }
}

/// Something the soak did, told to the checker so that it knows which checks apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// The agent of a node is not running (SIGKILL, or exited after SIGTERM).
    AgentDown(String),
    /// The agent of a node is running and ready again.
    AgentUp(String),
    /// The agent of a node got SIGTERM and is handing over.
    AgentStopping(String),
    /// The agent of a node is cut off from the API.
    AgentCut(String),
    /// The agent of a node has the API again.
    AgentHealed(String),
    /// The whole API is unavailable (outage, emulator restart).
    ApiDown,
    /// The API answers again.
    ApiUp,
    /// An allocator replica (possibly the leader) was killed.
    AllocatorDown,
    /// It runs again.
    AllocatorUp,
    /// An address was deleted from a node behind its agent's back.
    Drift {
        /// The node.
        node: String,
        /// The address.
        ip: IpAddr,
    },
}

/// Why a failed client request is expected at some time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowCause {
    /// Within [`Bounds::converge`] of a change of who should hold the address (a Service
    /// created, deleted or edited, endpoints flipped, a node's Lease expired or draining).
    Change,
    /// Within [`Bounds::converge`] of deleting the address behind its agent's back.
    Drift,
    /// A node holding the address has no running (or no settled) agent.
    UnmanagedHolder,
}

impl WindowCause {
    /// Short name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Change => "change",
            Self::Drift => "drift",
            Self::UnmanagedHolder => "unmanaged-holder",
        }
    }
}

/// The windows in which a failed client request to an address is expected, by address.
#[derive(Clone, Debug, Default)]
pub struct Windows(BTreeMap<IpAddr, Vec<(Duration, Duration, WindowCause)>>);

impl Windows {
    fn open(&mut self, ip: IpAddr, from: Duration, to: Duration, cause: WindowCause) {
        let windows = self.0.entry(ip).or_default();
        if let Some(last) = windows.iter_mut().rev().find(|w| w.2 == cause)
            && last.1 >= from
        {
            last.1 = last.1.max(to);
            return;
        }
        windows.push((from, to, cause));
    }

    /// Why a request to `ip` running from `from` to `to` may fail, if it may.
    #[must_use]
    pub fn allowed(&self, ip: IpAddr, from: Duration, to: Duration) -> Option<WindowCause> {
        self.0.get(&ip)?.iter().find(|(start, end, _)| *start <= to && from <= *end).map(|w| w.2)
    }
}

/// One recorded violation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    /// Which invariant.
    pub invariant: Invariant,
    /// When it was detected (since the start of the run).
    #[serde(rename = "at_s", serialize_with = "secs")]
    pub at: Duration,
    /// When the condition was first seen.
    #[serde(rename = "since_s", serialize_with = "secs")]
    pub since: Duration,
    /// How long the condition lasted (`None`: still there at the end).
    #[serde(rename = "lasted_s", serialize_with = "opt_secs")]
    pub lasted: Option<Duration>,
    /// The address, Service or node concerned.
    pub subject: String,
    /// What was seen.
    pub detail: String,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

#[allow(clippy::ref_option)]
fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => secs(d, s),
        None => s.serialize_none(),
    }
}

/// Episodes of a condition that was not held against the product (e.g. two holders while one
/// of them was a dead agent's node), counted so that the report shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExemptStat {
    /// Every episode: when it began, how long it lasted (first to last observation), the address.
    pub episodes: Vec<(Duration, Duration, String)>,
}

impl ExemptStat {
    fn add(&mut self, since: Duration, lasted: Duration, subject: String) {
        self.episodes.push((since, lasted, subject));
    }

    /// The durations.
    #[must_use]
    pub fn durations(&self) -> Vec<Duration> {
        self.episodes.iter().map(|e| e.1).collect()
    }

    /// The longest episode.
    #[must_use]
    pub fn longest(&self) -> Option<&(Duration, Duration, String)> {
        self.episodes.iter().max_by_key(|e| e.1)
    }
}

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct CheckerReport {
    /// Every violation, in detection order.
    pub violations: Vec<Violation>,
    /// Episodes counted for the report, by what they were: the exempted ones, and every
    /// two-holder overlap between running agents (so the report shows the margin to the bound).
    pub exempt: BTreeMap<String, ExemptStat>,
    /// Convergence times by category (`announce local`, `move local`, `withdraw remote`,
    /// `allocate`, `drift repair`, ..).
    pub convergence: BTreeMap<String, Vec<Duration>>,
    /// Convergences cut short by another change before they completed.
    pub superseded: u64,
    /// Observations made.
    pub samples: u64,
    /// Time between consecutive observations.
    pub gaps: Vec<Duration>,
    /// When failed requests were expected.
    pub windows: Windows,
}

impl CheckerReport {
    /// Violations of one invariant.
    #[must_use]
    pub fn count(&self, invariant: Invariant) -> usize {
        self.violations.iter().filter(|v| v.invariant == invariant).count()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Condition {
    Overlap(IpAddr),
    Missing(String, IpAddr),
    Unallocated(String),
    Withdrawn(String, IpAddr),
    Orphan(String, IpAddr, String),
    Shared(IpAddr, String),
    // Not violations: observed for the report.
    ExemptOverlap(IpAddr),
    Dark(IpAddr),
}

struct Episode {
    since: Duration,
    flagged: Option<usize>,
}

struct Seen {
    condition: Condition,
    /// The condition counts from here (the latest of: first seen, the last change of what is
    /// expected, the end of a hold-off).
    start: Duration,
    tolerance: Duration,
    invariant: Invariant,
    subject: String,
    detail: String,
}

#[derive(Clone, Debug, Default)]
struct NodeState {
    down: bool,
    stopping: bool,
    cut: bool,
    /// Checks (2)/(3) on this node resume here.
    checks_from: Duration,
    /// A restarted agent counts as a holder for (1) from here.
    settled_from: Duration,
    /// Its Lease's `renewTime` is older than the renewal window (the agent is not current).
    late: bool,
    /// The last `renewTime` seen.
    renewed: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Managed,
    Isolated,
    Down,
}

struct Freeze {
    held: BTreeSet<(String, IpAddr, bool)>,
    until: Option<Duration>,
}

#[derive(Default)]
struct Tracked {
    addresses: BTreeMap<Family, IpAddr>,
    request: String,
    /// Families whose address may change because the request changed, and from when the
    /// allocator could act on it (the later of the change and the end of an allocation pause).
    asked: BTreeMap<Family, Duration>,
}

struct Pending {
    since: Duration,
    category: String,
}

/// The checker. Feed it [`Note`]s and observations in time order.
pub struct Checker {
    bounds: Bounds,
    dummy: String,
    nodes: BTreeMap<String, NodeState>,
    api_down: bool,
    allocator_down: bool,
    allocation_checks_from: Duration,
    /// Expectation changes in here are artefacts of a whole-API outage (Leases expire in the
    /// store while nobody can renew them): they start no measurements, and open request windows
    /// only when an address joined or left the Services' statuses (a real change).
    outage_artefacts_until: Duration,
    freeze: Option<Freeze>,
    last_at: Option<Duration>,
    last_kernel: Kernel,
    last_expectation: Expectation,
    changed_at: BTreeMap<IpAddr, Duration>,
    episodes: BTreeMap<Condition, Episode>,
    unallocated_since: BTreeMap<String, Duration>,
    request_changed_at: BTreeMap<String, Duration>,
    tracked: BTreeMap<String, Tracked>,
    pending: BTreeMap<IpAddr, Pending>,
    drifts: Vec<(String, IpAddr, Duration)>,
    report: CheckerReport,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker").field("samples", &self.report.samples).finish_non_exhaustive()
    }
}

/// The report label of a condition that is counted, not held against the product.
fn exempt_label(condition: &Condition) -> Option<(&'static str, IpAddr)> {
    match condition {
        Condition::ExemptOverlap(ip) => Some(("two holders, one of them a node without a running agent", *ip)),
        Condition::Dark(ip) => Some(("local address expected but held by no node", *ip)),
        // Counted too (whether or not it was over the bound), to show the margin to it.
        Condition::Overlap(ip) => Some(("two holders, both agents running (a violation only over the bound)", *ip)),
        _ => None,
    }
}

fn family_of(ip: IpAddr) -> Family {
    Family::of(ip)
}

impl Checker {
    /// A checker for `nodes`, whose dummy interface (remote addresses) is `dummy_interface`.
    #[must_use]
    pub fn new(bounds: Bounds, nodes: &[String], dummy_interface: &str) -> Self {
        Self {
            bounds,
            dummy: dummy_interface.to_owned(),
            nodes: nodes.iter().map(|n| (n.clone(), NodeState::default())).collect(),
            api_down: false,
            allocator_down: false,
            allocation_checks_from: Duration::ZERO,
            outage_artefacts_until: Duration::ZERO,
            freeze: None,
            last_at: None,
            last_kernel: Kernel::new(),
            last_expectation: Expectation::new(),
            changed_at: BTreeMap::new(),
            episodes: BTreeMap::new(),
            unallocated_since: BTreeMap::new(),
            request_changed_at: BTreeMap::new(),
            tracked: BTreeMap::new(),
            pending: BTreeMap::new(),
            drifts: Vec::new(),
            report: CheckerReport::default(),
        }
    }

    /// Violations recorded so far.
    #[must_use]
    pub fn violations(&self) -> &[Violation] {
        &self.report.violations
    }

    /// The bounds in force.
    #[must_use]
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    fn mode(&self, state: &NodeState) -> Mode {
        if state.down {
            Mode::Down
        } else if state.stopping || state.cut || state.late || self.api_down {
            Mode::Isolated
        } else {
            Mode::Managed
        }
    }

    fn checkable(&self, node: &str, at: Duration) -> bool {
        self.nodes.get(node).is_some_and(|s| self.mode(s) == Mode::Managed && at >= s.checks_from)
    }

    fn active_holder(&self, node: &str, at: Duration) -> bool {
        self.nodes.get(node).is_none_or(|s| !s.down && at >= s.settled_from)
    }

    /// Records what the soak did at `at`.
    pub fn note(&mut self, at: Duration, note: &Note) {
        let before: BTreeMap<String, Mode> = self.nodes.iter().map(|(n, s)| (n.clone(), self.mode(s))).collect();
        let mut hold_off = self.bounds.rejoin_hold_off;
        match note {
            Note::AgentDown(node) => {
                if let Some(s) = self.nodes.get_mut(node) {
                    s.down = true;
                    s.stopping = false;
                }
            }
            Note::AgentUp(node) => {
                hold_off = self.bounds.restart_hold_off;
                if let Some(s) = self.nodes.get_mut(node) {
                    s.down = false;
                    s.stopping = false;
                    s.settled_from = at + self.bounds.restart_hold_off;
                }
            }
            Note::AgentStopping(node) => {
                if let Some(s) = self.nodes.get_mut(node) {
                    s.stopping = true;
                }
            }
            Note::AgentCut(node) => {
                if let Some(s) = self.nodes.get_mut(node) {
                    s.cut = true;
                }
            }
            Note::AgentHealed(node) => {
                if let Some(s) = self.nodes.get_mut(node) {
                    s.cut = false;
                }
            }
            Note::ApiDown => {
                self.api_down = true;
                // What is held where it should be when the API goes away must stay (an orphan
                // may still go).
                let held = self
                    .last_kernel
                    .iter()
                    .filter(|(node, _)| self.nodes.get(*node).is_some_and(|s| !s.down && !s.stopping))
                    .flat_map(|(node, addresses)| {
                        addresses
                            .iter()
                            .filter(|a| {
                                a.owned
                                    && self.last_expectation.get(&a.ip).is_some_and(|e| {
                                        e.nodes.contains(node) && (e.kind == Kind::Remote) == (a.ifname == self.dummy)
                                    })
                            })
                            .map(|a| (node.clone(), a.ip, a.ifname == self.dummy))
                    })
                    .collect();
                self.freeze = Some(Freeze { held, until: None });
                self.outage_artefacts_until = Duration::MAX;
            }
            Note::ApiUp => {
                self.api_down = false;
                if let Some(freeze) = self.freeze.as_mut() {
                    freeze.until = Some(at + self.bounds.rejoin_hold_off);
                }
                self.outage_artefacts_until = at + self.bounds.rejoin_hold_off;
                self.allocation_checks_from = self.allocation_checks_from.max(at + self.bounds.allocation_hold_off);
            }
            Note::AllocatorDown => self.allocator_down = true,
            Note::AllocatorUp => {
                self.allocator_down = false;
                self.allocation_checks_from = self.allocation_checks_from.max(at + self.bounds.allocation_hold_off);
            }
            Note::Drift { node, ip } => {
                self.drifts.push((node.clone(), *ip, at));
                self.open_window(*ip, at, at + self.bounds.converge, WindowCause::Drift);
            }
        }
        let modes: Vec<(String, Mode)> = self.nodes.iter().map(|(n, s)| (n.clone(), self.mode(s))).collect();
        for (node, mode) in modes {
            if mode == Mode::Managed
                && before.get(&node).is_some_and(|m| *m != Mode::Managed)
                && let Some(s) = self.nodes.get_mut(&node)
            {
                s.checks_from = s.checks_from.max(at + hold_off);
            }
        }
    }

    /// The agents' Lease renewals as seen at `at` (wall clock `now`): `renewed` has the
    /// `renewTime` of each node's Lease. A node whose renewal is late is not current (checks
    /// (2)/(3) pause); a renewal after a gap of [`Bounds::renewal_window`] starts the agent's
    /// recovery, and checks resume [`Bounds::renewal_recovery`] later. Nodes without a Lease
    /// (down, or not yet started) are left to the notes.
    pub fn renewals(&mut self, at: Duration, now: Timestamp, renewed: &BTreeMap<String, Timestamp>) {
        let (window, recovery) = (self.bounds.renewal_window, self.bounds.renewal_recovery);
        let age = |from: Timestamp, to: Timestamp| Duration::try_from(to.duration_since(from)).unwrap_or_default();
        for (node, state) in &mut self.nodes {
            let Some(&time) = renewed.get(node) else {
                state.late = false;
                continue;
            };
            if let Some(previous) = state.renewed
                && time > previous
                && age(previous, time) >= window
            {
                state.checks_from = state.checks_from.max(at + recovery);
            }
            let was_late = state.late;
            state.late = age(time, now) >= window;
            if was_late && !state.late {
                state.checks_from = state.checks_from.max(at);
            }
            state.renewed = Some(time);
        }
    }

    fn open_window(&mut self, ip: IpAddr, from: Duration, to: Duration, cause: WindowCause) {
        self.report.windows.open(ip, from, to, cause);
    }

    /// Why a request to `ip` running from `from` to `to` may fail, if it may.
    #[must_use]
    pub fn allowed(&self, ip: IpAddr, from: Duration, to: Duration) -> Option<WindowCause> {
        self.report.windows.allowed(ip, from, to)
    }

    fn holds(&self, kernel: &Kernel, node: &str, ip: IpAddr, kind: Kind) -> bool {
        kernel.get(node).is_some_and(|addresses| {
            addresses.iter().any(|a| a.ip == ip && a.owned && (a.ifname == self.dummy) == (kind == Kind::Remote))
        })
    }

    /// Checks one observation made at `at`: the kernel addresses of the nodes (a node missing
    /// from `kernel` keeps its previous addresses), who should hold what, and the Services.
    #[allow(clippy::too_many_lines)]
    pub fn observe(&mut self, at: Duration, expected: &Expectation, kernel: &Kernel, services: &[ServiceView]) {
        self.report.samples += 1;
        if let Some(last) = self.last_at {
            self.report.gaps.push(at.saturating_sub(last));
        }
        // A change seen now happened after the previous observation read the API: requests
        // may fail from then on (a deleted Service's address goes within milliseconds).
        let changed_after = self.last_at.unwrap_or(at);
        self.last_at = Some(at);
        let mut merged = self.last_kernel.clone();
        for (node, addresses) in kernel {
            merged.insert(node.clone(), addresses.clone());
        }
        let kernel = merged;
        let bounds = self.bounds;
        let artefact = at < self.outage_artefacts_until;

        // What should be held changed: remember when, open a request window, time it.
        let ips: BTreeSet<IpAddr> = expected.keys().chain(self.last_expectation.keys()).copied().collect();
        for ip in ips {
            let (old, new) = (self.last_expectation.get(&ip), expected.get(&ip));
            if old == new {
                continue;
            }
            let had = old.is_some_and(|e| !e.nodes.is_empty());
            let has = new.is_some_and(|e| !e.nodes.is_empty());
            let kind = new.or(old).map_or("", |e| e.kind.as_str());
            let category = match (had, has) {
                (false, true) => "announce",
                (true, false) => "withdraw",
                _ => "move",
            };
            self.changed_at.insert(ip, at);
            // An address that joined or left the Services' statuses changed for real, also
            // after an API outage (the allocator writes again at once): requests to it may fail.
            let service_change = old.is_none() || new.is_none();
            if artefact {
                self.pending.remove(&ip);
                if service_change {
                    self.open_window(ip, changed_after, at + bounds.converge, WindowCause::Change);
                }
                continue;
            }
            self.open_window(ip, changed_after, at + bounds.converge, WindowCause::Change);
            if self.pending.insert(ip, Pending { since: at, category: format!("{category} {kind}") }).is_some() {
                self.report.superseded += 1;
            }
        }

        let mut seen: Vec<Seen> = Vec::new();
        let changed = |ip: &IpAddr| self.changed_at.get(ip).copied().unwrap_or_default();
        let checks_from = |node: &str| self.nodes.get(node).map_or(Duration::ZERO, |s| s.checks_from);

        // (1) At most one holder of a local address.
        let mut holders: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
        for (node, addresses) in &kernel {
            for a in addresses.iter().filter(|a| a.owned && a.ifname != self.dummy) {
                holders.entry(a.ip).or_default().insert(node);
            }
        }
        for (ip, nodes) in &holders {
            if nodes.len() < 2 {
                continue;
            }
            let active: Vec<&str> = nodes.iter().copied().filter(|n| self.active_holder(n, at)).collect();
            let list = nodes.iter().copied().collect::<Vec<_>>().join(", ");
            let elected = expected
                .get(ip)
                .filter(|e| e.kind == Kind::Local)
                .map(|e| e.nodes.iter().map(String::as_str).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            let condition = if active.len() >= 2 { Condition::Overlap(*ip) } else { Condition::ExemptOverlap(*ip) };
            seen.push(Seen {
                condition,
                start: Duration::ZERO,
                tolerance: bounds.handover_overlap,
                invariant: Invariant::SingleHolder,
                subject: ip.to_string(),
                detail: format!("held by {list} (the agents' decision elects: [{elected}])"),
            });
        }

        // (2) The elected nodes hold what they should.
        for (ip, e) in expected {
            for node in &e.nodes {
                if self.holds(&kernel, node, *ip, e.kind) || !self.checkable(node, at) {
                    continue;
                }
                seen.push(Seen {
                    condition: Condition::Missing(node.clone(), *ip),
                    start: changed(ip).max(checks_from(node)),
                    tolerance: bounds.converge,
                    invariant: Invariant::ElectedHolds,
                    subject: ip.to_string(),
                    detail: format!("{} address should be on {node} but is not", e.kind.as_str()),
                });
            }
            // Went dark: held by someone at the last observation (or already dark), now by nobody.
            let was_held = self.last_kernel.keys().any(|n| self.holds(&self.last_kernel, n, *ip, Kind::Local));
            let dark_before = self.episodes.contains_key(&Condition::Dark(*ip));
            if !holders.contains_key(ip) && !e.nodes.is_empty() && e.kind == Kind::Local && (was_held || dark_before) {
                seen.push(Seen {
                    condition: Condition::Dark(*ip),
                    start: Duration::ZERO,
                    tolerance: Duration::MAX,
                    invariant: Invariant::ElectedHolds,
                    subject: ip.to_string(),
                    detail: String::new(),
                });
            }
        }
        // (2) Services get their addresses.
        let blocked = self.api_down || self.allocator_down;
        for svc in services.iter().filter(|s| s.handled && !s.allocated()) {
            let since = *self.unallocated_since.entry(svc.uid.clone()).or_insert(at);
            if blocked {
                continue;
            }
            let asked = self.request_changed_at.get(&svc.uid).copied().unwrap_or_default();
            seen.push(Seen {
                condition: Condition::Unallocated(svc.uid.clone()),
                start: since.max(asked).max(self.allocation_checks_from),
                tolerance: bounds.converge,
                invariant: Invariant::ElectedHolds,
                subject: svc.key.clone(),
                detail: "handled Service has no address (or no pool type)".to_owned(),
            });
        }
        for svc in services.iter().filter(|s| s.allocated()) {
            if let Some(since) = self.unallocated_since.remove(&svc.uid) {
                self.report.convergence.entry("allocate".to_owned()).or_default().push(at.saturating_sub(since));
            }
        }
        // (2) Nothing held when the API went down is withdrawn while it is down.
        if self.freeze.as_ref().is_some_and(|f| f.until.is_some_and(|until| at >= until)) {
            self.freeze = None;
        }
        if let Some(freeze) = &self.freeze {
            for (node, ip, dummy) in &freeze.held {
                if self.nodes.get(node).is_some_and(|s| s.down || s.stopping) {
                    continue;
                }
                // Once the API is back, a change made since (or pending when it went away) may
                // legitimately move the address: only what is still expected must stay.
                if !self.api_down && !expected.get(ip).is_some_and(|e| e.nodes.contains(node)) {
                    continue;
                }
                let kind = if *dummy { Kind::Remote } else { Kind::Local };
                if !self.holds(&kernel, node, *ip, kind) {
                    seen.push(Seen {
                        condition: Condition::Withdrawn(node.clone(), *ip),
                        start: Duration::ZERO,
                        tolerance: bounds.outage_withdrawal,
                        invariant: Invariant::ElectedHolds,
                        subject: ip.to_string(),
                        detail: format!("withdrawn from {node} while the API was unavailable (or right after)"),
                    });
                }
            }
        }

        // (3) No owned address where it should not be.
        for (node, addresses) in &kernel {
            if !self.checkable(node, at) {
                continue;
            }
            for a in addresses.iter().filter(|a| a.owned) {
                let wanted = expected
                    .get(&a.ip)
                    .is_some_and(|e| e.nodes.contains(node) && (a.ifname == self.dummy) == (e.kind == Kind::Remote));
                // Make before break: the last holder of a local address keeps it until the
                // elected node holds it too (then (1) bounds the overlap); until then the elected
                // node is held to (2).
                let handing_over = a.ifname != self.dummy
                    && expected.get(&a.ip).is_some_and(|e| {
                        e.kind == Kind::Local
                            && !e.nodes.is_empty()
                            && !e.nodes.iter().any(|n| self.holds(&kernel, n, a.ip, Kind::Local))
                    });
                if wanted || handing_over {
                    continue;
                }
                seen.push(Seen {
                    condition: Condition::Orphan(node.clone(), a.ip, a.ifname.clone()),
                    start: changed(&a.ip).max(checks_from(node)),
                    tolerance: bounds.orphan_sweep,
                    invariant: Invariant::NoOrphans,
                    subject: a.ip.to_string(),
                    detail: format!("on {node} {} but {node} should not hold it there", a.ifname),
                });
            }
        }

        // (5) Shared only by key, without port collisions.
        let mut users: BTreeMap<IpAddr, Vec<&ServiceView>> = BTreeMap::new();
        for svc in services {
            for ip in &svc.addresses {
                users.entry(*ip).or_default().push(svc);
            }
        }
        for (ip, list) in &users {
            if list.len() < 2 {
                continue;
            }
            let keys: BTreeSet<Option<&str>> = list.iter().map(|s| s.sharing_key.as_deref()).collect();
            let keyed = keys.len() == 1 && !keys.contains(&None);
            let mut collision = None;
            for (i, a) in list.iter().enumerate() {
                for b in &list[i + 1..] {
                    if let Some(p) = a.ports.intersection(&b.ports).next() {
                        collision = Some(format!("{} and {} both use {}/{}", a.key, b.key, p.1, p.0));
                    }
                }
            }
            if keyed && collision.is_none() {
                continue;
            }
            let names: Vec<String> =
                list.iter().map(|s| format!("{} (key {:?})", s.key, s.sharing_key.as_deref().unwrap_or(""))).collect();
            seen.push(Seen {
                condition: Condition::Shared(*ip, names.join(",")),
                start: Duration::ZERO,
                tolerance: Duration::ZERO,
                invariant: Invariant::SharedOnlyByKey,
                subject: ip.to_string(),
                detail: format!(
                    "given to {}{}",
                    names.join(", "),
                    collision.map(|c| format!("; {c}")).unwrap_or_default()
                ),
            });
        }

        self.update_episodes(at, seen);
        self.check_stable_addresses(at, services);

        // Convergence: every managed node holds the address iff it should.
        let done: Vec<IpAddr> = self
            .pending
            .keys()
            .copied()
            .filter(|ip| {
                let e = expected.get(ip);
                self.nodes.iter().filter(|(_, s)| self.mode(s) == Mode::Managed).all(|(node, _)| {
                    let should = e.is_some_and(|e| e.nodes.contains(node));
                    let kind = e.map_or(Kind::Local, |e| e.kind);
                    let holds = if e.is_some() {
                        self.holds(&kernel, node, *ip, kind)
                    } else {
                        self.holds(&kernel, node, *ip, Kind::Local) || self.holds(&kernel, node, *ip, Kind::Remote)
                    };
                    should == holds
                })
            })
            .collect();
        for ip in done {
            if let Some(p) = self.pending.remove(&ip) {
                self.report.convergence.entry(p.category).or_default().push(at.saturating_sub(p.since));
            }
        }
        let mut repaired = Vec::new();
        for (i, (node, ip, since)) in self.drifts.iter().enumerate() {
            let kind = expected.get(ip).map_or(Kind::Local, |e| e.kind);
            if self.holds(&kernel, node, *ip, kind) {
                repaired.push(i);
                self.report.convergence.entry("drift repair".to_owned()).or_default().push(at.saturating_sub(*since));
            } else if at.saturating_sub(*since) > bounds.converge * 4 {
                repaired.push(i);
            }
        }
        for i in repaired.into_iter().rev() {
            self.drifts.remove(i);
        }

        // Request windows: an address on a node whose agent is not running or not settled.
        let unmanaged: Vec<IpAddr> = kernel
            .iter()
            .filter(|(node, _)| !self.active_holder(node, at))
            .flat_map(|(_, addresses)| addresses.iter().filter(|a| a.owned).map(|a| a.ip))
            .collect();
        for ip in unmanaged {
            self.open_window(ip, at, at + bounds.converge, WindowCause::UnmanagedHolder);
        }

        self.last_kernel = kernel;
        self.last_expectation.clone_from(expected);
    }

    fn update_episodes(&mut self, at: Duration, seen: Vec<Seen>) {
        let now: BTreeSet<Condition> = seen.iter().map(|s| s.condition.clone()).collect();
        let ended: Vec<Condition> = self.episodes.keys().filter(|c| !now.contains(*c)).cloned().collect();
        for condition in ended {
            let Some(episode) = self.episodes.remove(&condition) else { continue };
            let lasted = at.saturating_sub(episode.since);
            if let Some(i) = episode.flagged
                && let Some(v) = self.report.violations.get_mut(i)
            {
                v.lasted = Some(lasted);
            }
            if let Some((label, ip)) = exempt_label(&condition) {
                self.report.exempt.entry(label.to_owned()).or_default().add(episode.since, lasted, ip.to_string());
            }
        }
        for s in seen {
            let episode = self.episodes.entry(s.condition.clone()).or_insert(Episode { since: at, flagged: None });
            let start = s.start.max(episode.since);
            let elapsed = at.saturating_sub(start);
            let over = if s.tolerance.is_zero() { true } else { elapsed > s.tolerance };
            if episode.flagged.is_none()
                && over
                && !matches!(s.condition, Condition::ExemptOverlap(_) | Condition::Dark(_))
            {
                episode.flagged = Some(self.report.violations.len());
                self.report.violations.push(Violation {
                    invariant: s.invariant,
                    at,
                    since: episode.since,
                    lasted: None,
                    subject: s.subject,
                    detail: s.detail,
                });
            }
        }
    }

    fn check_stable_addresses(&mut self, at: Duration, services: &[ServiceView]) {
        let live: BTreeSet<&str> = services.iter().map(|s| s.uid.as_str()).collect();
        self.tracked.retain(|uid, _| live.contains(uid.as_str()));
        self.unallocated_since.retain(|uid, _| live.contains(uid.as_str()));
        self.request_changed_at.retain(|uid, _| live.contains(uid.as_str()));
        for svc in services.iter().filter(|s| !s.uid.is_empty()) {
            let current: BTreeMap<Family, IpAddr> = svc.addresses.iter().map(|ip| (family_of(*ip), *ip)).collect();
            let Some(t) = self.tracked.get_mut(&svc.uid) else {
                self.tracked.insert(
                    svc.uid.clone(),
                    Tracked { addresses: current, request: svc.request.clone(), asked: BTreeMap::new() },
                );
                continue;
            };
            // A request the allocator had time to act on no longer excuses a change.
            let settled = self.bounds.converge * 2;
            let blocked = self.api_down || self.allocator_down;
            let resumed = self.allocation_checks_from;
            t.asked.retain(|_, from| blocked || at.saturating_sub((*from).max(resumed)) <= settled);
            if t.request != svc.request {
                t.request.clone_from(&svc.request);
                let from = at.max(self.allocation_checks_from);
                t.asked.extend([(Family::V4, from), (Family::V6, from)]);
                self.request_changed_at.insert(svc.uid.clone(), at);
                if !svc.allocated() {
                    self.unallocated_since.insert(svc.uid.clone(), at);
                }
            }
            let mut changes = Vec::new();
            for (family, old) in &t.addresses {
                let new = current.get(family);
                if new == Some(old) {
                    continue;
                }
                if t.asked.remove(family).is_none() {
                    changes.push(match new {
                        Some(new) => format!("{family} address changed from {old} to {new}"),
                        None => format!("{family} address {old} was removed"),
                    });
                }
            }
            t.addresses = current;
            for change in changes {
                self.report.violations.push(Violation {
                    invariant: Invariant::StableAddresses,
                    at,
                    since: at,
                    lasted: None,
                    subject: svc.key.clone(),
                    detail: format!("{change} without the Service asking for another address"),
                });
            }
        }
    }

    /// Ends the run at `at`: conditions still open are closed for the report (a violation that
    /// is still there keeps `lasted: None`).
    #[must_use]
    pub fn report(mut self, at: Duration) -> CheckerReport {
        let open: Vec<Condition> = self.episodes.keys().cloned().collect();
        for condition in open {
            if let Some(episode) = self.episodes.remove(&condition)
                && let Some((label, ip)) = exempt_label(&condition)
            {
                let lasted = at.saturating_sub(episode.since);
                self.report.exempt.entry(label.to_owned()).or_default().add(episode.since, lasted, ip.to_string());
            }
        }
        self.report
    }
}

#[cfg(test)]
mod tests;
