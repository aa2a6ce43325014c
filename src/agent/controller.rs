//! The agent's IO: watch caches (Services, node Leases, ServiceGroups, LBNodeAgents, this Node,
//! EndpointSlices into an [`EndpointIndex`]), the membership Lease task, a netlink watch, and one
//! worker that runs level-triggered passes: desired addresses from [`super::decide`], actual
//! addresses from a netlink snapshot, then add / renew / withdraw the difference, send GARP/NA
//! bursts on takeover, publish Events on transitions and update `purelb.io/announcing`.
//! Entry point: [`run`].
//!
//! Rules applied here (issue 6): an agent whose own Lease is not current makes no new local
//! claims and removes nothing; a draining agent (SIGTERM) makes no new local claims and keeps
//! each local address until another node's Lease lists it or `--handover-timeout` passes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        events::{EventType, Reporter},
        reflector::{self, Store},
        watcher::{self, Event},
    },
};
use rtnetlink::packet_route::link::LinkAttribute;
use tokio::sync::Notify;

use super::{
    cached::CachedService,
    config::{self, Config},
    connections,
    decide::{self, Decision, Inputs, Kind},
    echo::{Echo, Echoes},
    lease::{self, LeaseContent, LeaseError, LeaseSettings},
    plan::{self, Action, AddWhy, HeldState, Outcome, Timers},
    shutdown::{self, Evidence, ShutdownMode, Verdict},
};
use crate::{
    api::{BGPPeer, LBNodeAgent, ServiceGroup, contract, contract::reasons},
    core::{
        announce::{
            BurstHandle, ETH_P_ALL, LinkInfo, MacAddr, SocketTransmitter, open_packet_capture, parse_claim, spawn_burst,
        },
        election::{self, HeldAddress, Members},
        endpoints::{EndpointIndex, ServiceKey},
        ipam::{Family, ParsedPools},
        memory,
        netlink::{Address, AddressManager, AddressSnapshot, AddressSpec, Link, LinkRef, NetlinkError},
        queue::WorkQueue,
    },
    telemetry::{Readiness, catalog, scoped},
};

/// Settings of the agent.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Install namespace (Leases, ServiceGroups, LBNodeAgents).
    pub namespace: String,
    /// This node.
    pub node: String,
    /// Pod UID (`purelb.io/instance`); a random one when empty.
    pub instance: String,
    /// `--lease-duration`.
    pub lease_duration: Duration,
    /// `--renew-interval`.
    pub renew_interval: Duration,
    /// `--handover-timeout`.
    pub handover_timeout: Duration,
    /// `--orphan-sweep-interval`.
    pub orphan_sweep_interval: Duration,
    /// Timeout of every API call.
    pub api_timeout: Duration,
    /// Event `reportingInstance`.
    pub reporter_instance: String,
    /// How long a remote address stays after its last usable local endpoint went away.
    pub settle_time: Duration,
    /// This agent's Pod (`--pod-name`), read at a SIGTERM; empty: unknown.
    pub pod_name: String,
    /// `--shutdown-mode`.
    pub shutdown_mode: ShutdownMode,
    /// `--successor-timeout`: how long the Lease stays valid for a successor on this node
    /// when the addresses are kept at a SIGTERM.
    pub successor_timeout: Duration,
    /// BGP with BIRD (`--bird-socket`); `None`: off.
    pub bgp: Option<crate::bgp::BgpSettings>,
}

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A netlink operation failed.
    #[error("netlink: {0}")]
    Netlink(#[from] NetlinkError),
    /// A watch cache never became ready.
    #[error("the {0} watch stopped before it was ready")]
    WatchStopped(&'static str),
    /// Reading link details failed.
    #[error("cannot read the details of interface {link}: {reason}")]
    LinkDetails {
        /// The interface.
        link: String,
        /// Why.
        reason: String,
    },
}

/// How long a draining node waits for a moment without open connections to an address once
/// its successor holds it (both hold it meanwhile; the invariant allows 200 ms of overlap, and
/// the successor's Lease takes 40–70 ms to reach this node's pass in a loaded debug lab).
const QUIET_WAIT: Duration = Duration::from_millis(50);

/// After a connection raced a quiet withdrawal: how long to wait for it to end (its client
/// retransmits into the address put back after at least 200 ms).
const RACE_WAIT: Duration = Duration::from_millis(300);

/// How long a node that sees another host claim one of its addresses waits for the API's
/// answer (node Leases, the Services on the address and their EndpointSlices) before it yields.
const FRESH_READ_TIMEOUT: Duration = Duration::from_millis(300);

/// After a pass that decided at least this many addresses at once, the memory it freed is
/// returned to the system ([`memory::release_freed`]: a millisecond per 10,000 or so; below
/// this size what a pass frees is not worth it).
const RELEASE_FREED_AFTER: usize = 1_000;

/// Records a graceful handover of one address as done (`purelb_handover_duration_seconds`,
/// from the start of the drain).
fn record_handover(drain_started: Option<Instant>) {
    if let Some(t) = drain_started {
        metrics::histogram!(catalog::HANDOVER_DURATION).record(t.elapsed().as_secs_f64());
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Work {
    /// A decision pass over everything.
    Pass,
    /// Services changed ([`Agent::dirty`]): a pass for those.
    Services,
    /// A node Lease changed, or a member's Lease may have expired: a pass only when the
    /// membership changed (renewals moved the expiry times on), or when what a node announces
    /// changed while a rule of this node waits on it ([`Timers::waits_on_holders`]). Idle
    /// renewals, and the `purelb.io/announcing` updates every address change causes on every
    /// node, cause no pass.
    Members,
}

/// The last status published per (Service, address), for transition-only Events.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Note {
    Announcing(Kind, String),
    NotHere,
    Failed(String),
}

#[derive(Default)]
struct State {
    /// What this node holds and the timers of the plan's rules.
    timers: Timers,
    /// GARP/NA bursts running, by address.
    bursts: HashMap<IpAddr, BurstHandle>,
    /// What this node last reported per Service and address, with the number of the pass that
    /// last saw it (entries not seen by the current pass are dropped). `Note::NotHere` is never
    /// kept: no entry means not here.
    notes: HashMap<ServiceKey, HashMap<IpAddr, (Note, u64)>>,
    /// Passes run (numbers the `notes`).
    reports: u64,
    /// Per Service this node evaluates: `purelb_endpointslice_count` and its endpoints
    /// without nodeName, as last exported.
    slice_counts: BTreeMap<ServiceKey, (usize, usize)>,
    /// The last pass's decision and what it was made from (a pass for some Services brings
    /// it up to date when the rest is unchanged).
    decided: Option<Decided>,
    /// Addresses the last pass could not hold (their Events are revisited by the next pass).
    failed: Vec<IpAddr>,
    config_error: Option<String>,
    /// BGPPeers and ServiceGroups left out of BIRD's configuration, with why (Events on change).
    bgp_problems: BTreeMap<(&'static str, String), String>,
    /// The election's members at the last pass (an expiry timer compares against them).
    members: Option<Members>,
}

/// A decision and the inputs it was made from, besides the Services.
struct Decided {
    decision: decide::Decision,
    /// The members (their election; what they announce does not decide).
    members: Members,
    groups: HashMap<String, ParsedPools>,
    /// [`Agent::endpoints_version`] when it was made.
    endpoints_version: u64,
}

impl State {
    /// `purelb_endpointslice_count` per Service this node evaluates and
    /// `purelb_endpointslice_endpoints_without_node`: for every Service (`scope` `None`), or
    /// for the Services in `scope`, sorted (the others are as the last pass left them). Series are
    /// written only when a count changed: most passes change none.
    fn export_slice_counts(
        &mut self,
        decision: &decide::Decision,
        index: &EndpointIndex,
        scope: Option<&[ServiceKey]>,
    ) {
        let count = |key: &ServiceKey| {
            (
                index.slice_count(key),
                index.external_endpoints(key, Family::V4) + index.external_endpoints(key, Family::V6),
            )
        };
        let series = |key: &ServiceKey| vec![("service", key.to_string())];
        #[allow(clippy::cast_precision_loss)]
        match scope {
            None => {
                // `considered` lists a Service's addresses next to each other.
                let mut counts: Vec<(&ServiceKey, (usize, usize))> = Vec::new();
                for (key, _, _) in &decision.considered {
                    if counts.last().is_none_or(|(last, _)| *last != key) {
                        counts.push((key, count(key)));
                    }
                }
                let changed = counts.len() != self.slice_counts.len()
                    || counts.iter().any(|(key, n)| self.slice_counts.get(*key) != Some(n));
                if changed {
                    self.slice_counts = counts.into_iter().map(|(key, n)| (key.clone(), n)).collect();
                    scoped::replace_gauges(
                        catalog::ENDPOINTSLICE_COUNT,
                        self.slice_counts.iter().map(|(key, (slices, _))| (series(key), *slices as f64)),
                    );
                }
            }
            Some(scope) => {
                debug_assert!(scope.is_sorted());
                // `scope` is sorted; one walk over `considered`, not one per key.
                let evaluated: HashSet<&ServiceKey> = decision
                    .considered
                    .iter()
                    .filter(|(k, _, _)| scope.binary_search(k).is_ok())
                    .map(|(k, _, _)| k)
                    .collect();
                for key in scope {
                    if evaluated.contains(key) {
                        let n = count(key);
                        if self.slice_counts.insert(key.clone(), n) != Some(n) {
                            scoped::set_gauge(catalog::ENDPOINTSLICE_COUNT, series(key), n.0 as f64);
                        }
                    } else if self.slice_counts.remove(key).is_some() {
                        scoped::remove_gauge(catalog::ENDPOINTSLICE_COUNT, &series(key));
                    }
                }
            }
        }
        let without_node: usize = self.slice_counts.values().map(|(_, n)| n).sum();
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(catalog::ENDPOINTSLICE_ENDPOINTS_WITHOUT_NODE).set(without_node as f64);
    }
}

/// What the Lease task and the worker share (never held across an await).
#[derive(Default)]
struct Shared {
    config: Config,
    announcing: String,
    draining: bool,
    drain_started: Option<Instant>,
    /// Why this node is going away (cordoned, excluded, tainted, being deleted): draining
    /// while it is, with no time limit (the addresses stay until a successor holds them).
    leaving: Option<String>,
    /// The successor's Lease is written: no more renewals (a SIGTERM that keeps the addresses).
    kept_for_successor: bool,
    renewed_at: Option<Instant>,
    /// When a renewal last failed (its answer or its timeout).
    renew_failed_at: Option<Instant>,
    /// After an outage of this node's Lease: no claims and no drops until then, so that peers
    /// whose renewals the cache does not show yet are not taken for gone.
    recovering_until: Option<Instant>,
    /// `purelb.io/bgp` (BGP on only).
    bgp: Option<String>,
}

struct Agent {
    client: Client,
    /// When this agent started.
    started: Instant,
    settings: Settings,
    mgr: AddressManager,
    links: rtnetlink::Handle,
    services: Store<CachedService>,
    leases: Store<Lease>,
    groups: Store<ServiceGroup>,
    lbnas: Store<LBNodeAgent>,
    nodes: Store<Node>,
    endpoints: std::sync::Mutex<EndpointIndex>,
    queue: WorkQueue<Work>,
    recorder: crate::events::Publisher,
    transmitter: Arc<SocketTransmitter>,
    state: tokio::sync::Mutex<State>,
    shared: std::sync::Mutex<Shared>,
    kick_lease: Notify,
    /// Held across each Lease write, so that the successor's Lease is the last one written.
    lease_write: tokio::sync::Mutex<()>,
    /// Local addresses held, for the capture threads (conflict detection).
    held_local: Arc<std::sync::Mutex<HashSet<IpAddr>>>,
    /// Capture threads by interface; dropping the flag's last user stops nothing, setting it does.
    captures: std::sync::Mutex<HashMap<String, Arc<std::sync::atomic::AtomicBool>>>,
    /// Claims from other MACs for addresses held here: (address, claiming MAC, interface).
    conflicts: tokio::sync::mpsc::UnboundedSender<(IpAddr, MacAddr, String)>,
    /// BGP: the BGPPeers and the BIRD task (`--bird-socket` set).
    bgp: Option<(Store<BGPPeer>, crate::bgp::BgpHandle)>,
    /// The notifications this agent's own address changes will cause (no pass for them).
    echoes: std::sync::Mutex<Echoes>,
    /// Services changed since the last pass for them ([`Work::Services`]): their objects, or
    /// the nodes with usable endpoints for them.
    dirty: Arc<std::sync::Mutex<Vec<ServiceKey>>>,
    /// Counts the full lists of the EndpointSlice index (a decision made before one is not
    /// brought up to date, it is made again; a change of some Services' endpoints marks those
    /// Services [`Self::dirty`] instead).
    endpoints_version: std::sync::atomic::AtomicU64,
}

fn reflect<K>(api: Api<K>, config: watcher::Config, queue: WorkQueue<Work>, name: &'static str) -> Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    reflect_filtered(api, config, queue, name, None, Work::Pass, None, std::convert::identity)
}

/// What in a node Lease changes a decision: renewals alone do not (expiry is scheduled from
/// [`Members::next_expiry`] instead), so idle renewals do not cause passes.
fn lease_key(lease: &Lease) -> String {
    let spec = lease.spec.as_ref();
    format!(
        "{:?}|{:?}|{:?}",
        lease.metadata.annotations,
        spec.and_then(|s| s.holder_identity.as_ref()),
        spec.and_then(|s| s.lease_duration_seconds)
    )
}

/// What in a Service the decision reads ([`decide::decide`], `plan`): its pool type and group
/// annotations, its traffic policy and its status. Not the other annotations (the allocator's
/// `purelb.io/announcing-IPv4`/`-IPv6`, which follow every address move, change no decision).
/// Empty for a Service that is not PureLB's (no pool type or no address): creating, changing or
/// deleting one causes no pass.
fn service_key(svc: &CachedService) -> String {
    if svc.pool_kind.is_none() || svc.ingress.is_empty() {
        return String::new();
    }
    format!("{:?}|{:?}|{}|{:?}", svc.pool_kind, svc.allocated_from, svc.local_traffic_policy, svc.ingress)
}

/// Keeps a reflector's cache and queues a pass when an object changes what `key` says of it
/// (every change without a key). An object whose key is empty is irrelevant: its arrival and
/// its deletion cause no pass.
/// `namespace/name` (`name` for cluster-scoped objects).
fn object_id<K: kube::Resource>(o: &K) -> String {
    let name = o.meta().name.as_deref().unwrap_or_default();
    match o.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// The instant since which a watch must have delivered something not to be started again, after
/// renewals resumed following the successful one sent at `last_renewal`: that renewal's send time
/// or, when a renewal failed after it, the end of the last failure.
fn quiet_since(last_renewal: Instant, failed_at: Option<Instant>) -> Instant {
    failed_at.filter(|f| *f > last_renewal).unwrap_or(last_renewal)
}

/// A key as [`reflect_filtered`] remembers it: whether it is empty (the object is irrelevant)
/// and its hash (the key itself, a few hundred bytes per Service, is not kept).
fn remembered(key: &str) -> (bool, u64) {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (key.is_empty(), hasher.finish())
}

#[allow(clippy::too_many_arguments)]
fn reflect_filtered<K, C>(
    api: Api<K>,
    config: watcher::Config,
    queue: WorkQueue<Work>,
    name: &'static str,
    key: Option<fn(&C) -> String>,
    work: Work,
    changed_objects: Option<Arc<std::sync::Mutex<Vec<ServiceKey>>>>,
    map: fn(K) -> C,
) -> Store<C>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    C: kube::Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    C::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let mut seen: HashMap<String, (bool, u64)> = HashMap::new();
    // Names the object for a pass that covers only the changed objects, before queueing it.
    let note = move |o: &C| {
        if let Some(list) = &changed_objects {
            let meta = o.meta();
            let key = ServiceKey::new(
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default(),
            );
            list.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(key);
        }
    };
    crate::watch::spawn_mapped_reflector(api, config, name, map, move |event| match event {
        Event::Apply(o) => {
            // The key once per event: at 1,000 nodes this runs 500 times a second.
            let changed = key.is_none_or(|key| {
                let now = remembered(&key(o));
                match seen.get_mut(&object_id(o)) {
                    Some(last) if *last == now => false,
                    Some(last) => {
                        *last = now;
                        true
                    }
                    None => {
                        let relevant = !now.0;
                        seen.insert(object_id(o), now);
                        relevant
                    }
                }
            });
            if changed {
                note(o);
                queue.add(work.clone());
            }
        }
        Event::Delete(o) => {
            let irrelevant = seen.remove(&object_id(o)).is_some_and(|(empty, _)| empty);
            if !irrelevant {
                note(o);
                queue.add(work.clone());
            }
        }
        Event::InitDone => queue.add(Work::Pass),
        Event::Init => seen.clear(),
        Event::InitApply(o) => {
            if let Some(key) = key {
                seen.insert(object_id(o), remembered(&key(o)));
            }
        }
    })
}

fn watch_endpoints(agent: &Arc<Agent>) {
    let api: Api<EndpointSlice> = Api::all(agent.client.clone());
    let stream = crate::watch::watch_restartable(api, watcher::Config::default());
    let agent = agent.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut log = crate::watch::ErrorLog::default();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    log.ok("endpointslices", &event);
                    metrics::counter!(catalog::ENDPOINTSLICE_SYNC).increment(1);
                    let (changed, done) = {
                        let mut index = agent.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        let changed = index.handle_event(&event, Instant::now());
                        agent.report_staleness(&index);
                        (changed, matches!(event, Event::InitDone))
                    };
                    if done {
                        // A new list: every Service is decided against it.
                        agent.endpoints_version.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        agent.queue.add(Work::Pass);
                    } else {
                        // Only the decisions of the Services whose usable nodes changed read
                        // them: a pass for those PureLB Services, as for a Service change (a
                        // rollout of 1,000 Services' pods costs their decisions, not 1,000
                        // passes over every Service; other Services' endpoints cost none).
                        let ours: Vec<ServiceKey> = changed
                            .into_iter()
                            .filter(|k| {
                                agent
                                    .services
                                    .get(&reflector::ObjectRef::new(&k.name).within(&k.namespace))
                                    .is_some_and(|svc| svc.pool_kind.is_some())
                            })
                            .collect();
                        if !ours.is_empty() {
                            agent.dirty().extend(ours);
                            agent.queue.add(Work::Services);
                        }
                    }
                }
                Err(error) => {
                    metrics::counter!(catalog::ENDPOINTSLICE_SYNC_ERRORS).increment(1);
                    let mut index = agent.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    index.watch_failed(Instant::now());
                    agent.report_staleness(&index);
                    drop(index);
                    log.error("endpointslices", "endpointslices.discovery.k8s.io", &error);
                }
            }
        }
    });
}

/// Runs the agent until `shutdown` resolves, then hands over gracefully: marks its Lease
/// draining, waits (up to the handover timeout) until successors list its local addresses,
/// withdraws everything and deletes its Lease.
///
/// # Errors
///
/// The netlink socket cannot be opened or a watch cache never becomes ready.
pub async fn run(
    client: Client,
    mut settings: Settings,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    if settings.instance.is_empty() {
        settings.instance = format!("{}-{}", settings.node, std::process::id());
    }
    let mgr = AddressManager::new()?;
    let (connection, links, _) = rtnetlink::new_connection()
        .map_err(|e| AgentError::LinkDetails { link: "(netlink socket)".to_owned(), reason: e.to_string() })?;
    tokio::spawn(connection);
    // Subscribe before the first read so no change falls in between.
    let mut address_watch = mgr.watch()?;
    let queue: WorkQueue<Work> = WorkQueue::new("agent");
    let ns = settings.namespace.clone();
    // Services that changed, for a pass that covers those (Work::Services).
    let dirty = Arc::new(std::sync::Mutex::new(Vec::new()));
    let services = reflect_filtered(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        queue.clone(),
        "services",
        Some(service_key),
        Work::Services,
        Some(dirty.clone()),
        CachedService::from,
    );
    let leases = reflect_filtered(
        Api::<Lease>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels(&format!(
            "{}={}",
            contract::LABEL_COMPONENT_AGENT.0,
            contract::LABEL_COMPONENT_AGENT.1
        )),
        queue.clone(),
        "leases",
        Some(lease_key),
        Work::Members,
        None,
        std::convert::identity,
    );
    // The allocator writes the ServiceGroups' status after allocations, the kubelet the Node's
    // status: neither decides anything here (only the specs, the Node's labels, which select
    // the LBNodeAgent, and whether the Node is going away do), so neither causes a pass.
    let groups = reflect_filtered(
        Api::<ServiceGroup>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
        queue.clone(),
        "servicegroups",
        Some(|g: &ServiceGroup| format!("{:?}", g.spec)),
        Work::Pass,
        None,
        std::convert::identity,
    );
    let lbnas = reflect_filtered(
        Api::<LBNodeAgent>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
        queue.clone(),
        "lbnodeagents",
        Some(|a: &LBNodeAgent| format!("{:?}|{:?}", a.metadata.labels, a.spec)),
        Work::Pass,
        None,
        std::convert::identity,
    );
    let nodes = reflect_filtered(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", settings.node)),
        queue.clone(),
        "nodes",
        Some(|n: &Node| format!("{:?}|{:?}", n.metadata.labels, shutdown::node_leaving(n))),
        Work::Pass,
        None,
        std::convert::identity,
    );
    let recorder = crate::events::Publisher::start(
        client.clone(),
        Reporter { controller: contract::MANAGER_AGENT.to_owned(), instance: Some(settings.reporter_instance.clone()) },
        settings.api_timeout,
    );
    let (conflicts, mut conflict_rx) = tokio::sync::mpsc::unbounded_channel();
    let bgp = settings.bgp.clone().map(|bgp| {
        let peers = reflect(
            Api::<BGPPeer>::namespaced(client.clone(), &ns),
            watcher::Config::default(),
            queue.clone(),
            "bgppeers",
        );
        (peers, crate::bgp::manager::start(bgp))
    });
    let agent = Arc::new(Agent {
        client,
        started: Instant::now(),
        settings,
        mgr,
        links,
        services,
        leases,
        groups,
        lbnas,
        nodes,
        endpoints: std::sync::Mutex::new(EndpointIndex::new()),
        queue: queue.clone(),
        recorder,
        transmitter: Arc::new(SocketTransmitter::default()),
        state: tokio::sync::Mutex::new(State::default()),
        shared: std::sync::Mutex::new(Shared::default()),
        kick_lease: Notify::new(),
        lease_write: tokio::sync::Mutex::new(()),
        held_local: Arc::new(std::sync::Mutex::new(HashSet::new())),
        captures: std::sync::Mutex::new(HashMap::new()),
        conflicts,
        bgp,
        echoes: std::sync::Mutex::new(Echoes::default()),
        dirty,
        endpoints_version: std::sync::atomic::AtomicU64::new(0),
    });
    watch_endpoints(&agent);
    for (ready, name) in [
        (agent.services.wait_until_ready().await.is_ok(), "services"),
        (agent.leases.wait_until_ready().await.is_ok(), "leases"),
        (agent.groups.wait_until_ready().await.is_ok(), "servicegroups"),
        (agent.lbnas.wait_until_ready().await.is_ok(), "lbnodeagents"),
        (agent.nodes.wait_until_ready().await.is_ok(), "nodes"),
        (
            match &agent.bgp {
                Some((peers, _)) => peers.wait_until_ready().await.is_ok(),
                None => true,
            },
            "bgppeers",
        ),
    ] {
        if !ready {
            return Err(AgentError::WatchStopped(name));
        }
    }
    // The first configuration, for the first Lease's subnets (errors are reported by the pass).
    let links = agent.mgr.snapshot().await.map(|s| s.links).unwrap_or_default();
    agent.refresh_config(&links);
    let mut tasks = tokio::task::JoinSet::new();
    // The membership Lease.
    let lease_agent = agent.clone();
    tasks.spawn(async move { lease_agent.lease_loop().await });
    // Address changes (drift, interfaces coming and going), but not the echoes of this
    // agent's own changes.
    let watch_agent = agent.clone();
    tasks.spawn(async move {
        loop {
            match address_watch.changed().await {
                Ok(trigger) => {
                    if !watch_agent.echoes().only_echoes(&trigger, Instant::now()) {
                        watch_agent.queue.add(Work::Pass);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "the address watch stopped; relying on periodic passes");
                    return;
                }
            }
        }
    });
    // Another host claiming an address held here.
    let conflict_agent = agent.clone();
    tasks.spawn(async move {
        let mut logged: HashMap<(IpAddr, MacAddr), Instant> = HashMap::new();
        while let Some((ip, mac, ifname)) = conflict_rx.recv().await {
            conflict_agent.on_conflict(ip, mac, &ifname, &mut logged).await;
        }
    });
    // BGP sessions: the Lease annotation and the Node's Events.
    if let Some((_, handle)) = &agent.bgp {
        let bgp_agent = agent.clone();
        let status = handle.status();
        tasks.spawn(async move { bgp_agent.follow_bgp(status).await });
    }
    // Orphan sweep.
    let sweep_queue = queue.clone();
    let sweep = agent.settings.orphan_sweep_interval.max(Duration::from_secs(1));
    tasks.spawn(async move {
        let mut ticker = tokio::time::interval(sweep);
        loop {
            ticker.tick().await;
            sweep_queue.add(Work::Pass);
        }
    });
    // The worker: one at a time (a pass plans every address; see `pass_for`).
    let worker = agent.clone();
    let worker_readiness = readiness.clone();
    tasks.spawn(async move {
        while let Some(claim) = worker.queue.get().await {
            let work = match claim.item() {
                Work::Pass => worker.pass().await,
                Work::Services => worker.services_changed().await,
                Work::Members => worker.members_changed().await,
            };
            match work {
                Ok(done) => {
                    if done {
                        worker_readiness.set_ready(true);
                    }
                    claim.succeeded();
                }
                Err(error) => {
                    let delay = claim.retry_with_backoff();
                    tracing::warn!(%error, ?delay, "pass failed; will retry");
                }
            }
        }
    });
    queue.add(Work::Pass);
    shutdown.await;
    let kept = match agent.shutdown_verdict().await {
        Verdict::Keep(why) => agent.keep_for_successor(&why).await,
        Verdict::HandOver(why) => {
            tracing::info!(%why, "shutting down: handing the addresses over");
            false
        }
    };
    if !kept {
        if let Some((_, bgp)) = &agent.bgp {
            // The routes leave the routers (tagged GRACEFUL_SHUTDOWN first) before any address
            // leaves this node; an in-place restart (kept) leaves BIRD and its routes alone.
            bgp.drain(agent.settings.handover_timeout.max(Duration::from_secs(5))).await;
        }
        agent.hand_over().await;
    }
    readiness.set_ready(false);
    queue.shutdown_and_wait().await;
    tasks.abort_all();
    agent.stop_captures(&HashSet::new());
    if kept {
        agent.stop_bursts().await;
        if let Some((_, bgp)) = &agent.bgp {
            bgp.release();
        }
        return Ok(());
    }
    agent.withdraw_all().await;
    match lease::delete_own(&agent.client, &agent.lease_settings()).await {
        Ok(true) => tracing::info!("deleted this node's Lease"),
        Ok(false) => tracing::info!("this node's Lease names another instance or is gone; left as it is"),
        Err(error) => tracing::warn!(%error, "cannot delete this node's Lease; it expires on its own"),
    }
    Ok(())
}

impl Agent {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn dirty(&self) -> std::sync::MutexGuard<'_, Vec<ServiceKey>> {
        self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn echoes(&self) -> std::sync::MutexGuard<'_, Echoes> {
        self.echoes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Expects the echo of a change at `ifname` (known to `kernel`; a link created in this pass
    /// is not, and its own notification causes a pass anyway).
    fn expect_echo(
        &self,
        kernel: &AddressSnapshot,
        added: bool,
        ifname: &str,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Option<Echo> {
        let index = kernel.link(ifname)?.index;
        let echo = Echo { added, index, ip, prefix_len };
        self.echoes().expect(echo, Instant::now());
        Some(echo)
    }

    fn lease_settings(&self) -> LeaseSettings {
        LeaseSettings {
            namespace: self.settings.namespace.clone(),
            node: self.settings.node.clone(),
            instance: self.settings.instance.clone(),
            duration: self.settings.lease_duration,
            api_timeout: self.settings.api_timeout,
        }
    }

    /// Whether this node's own Lease is current: its last renewal succeeded (send time) less
    /// than 1.5 renew intervals ago (at most the lease duration). Tighter than the lease itself
    /// so that, in an API outage, this node stops claiming before peers' Leases look expired
    /// in its cache (which would otherwise make it claim their addresses).
    fn lease_ok(&self) -> bool {
        let window =
            (self.settings.renew_interval + self.settings.renew_interval / 2).min(self.settings.lease_duration);
        let shared = self.shared();
        shared.renewed_at.is_some_and(|t| t.elapsed() < window)
            && shared.recovering_until.is_none_or(|t| Instant::now() >= t)
    }

    /// Picks the LBNodeAgent for this node; an invalid one is reported and the last good
    /// configuration stays.
    fn refresh_config(&self, links: &[Link]) -> Option<(LBNodeAgent, String)> {
        let labels = self
            .nodes
            .state()
            .into_iter()
            .find(|n| n.name_any() == self.settings.node)
            .map(|n| n.labels().clone())
            .unwrap_or_default();
        let agents = self.lbnas.state();
        let chosen = config::select(&agents, &labels);
        let source = chosen.map(|a| format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any()));
        let spec = chosen.map_or_else(|| crate::api::LBNodeAgentSpec::default().local, |a| a.spec.local.clone());
        let checked = Config::from_spec(source, &spec).map_err(|e| e.to_string()).and_then(|config| {
            config::unmatched_interface(&config, links, &self.settings.node).map_or(Ok(config), Err)
        });
        match checked {
            Ok(config) => {
                let mut shared = self.shared();
                if shared.config != config {
                    tracing::info!(source = ?config.source, "configuration");
                    shared.config = config;
                }
                None
            }
            Err(error) => chosen.map(|a| (a.clone(), error)),
        }
    }

    /// Interfaces that announce local addresses: the default-route interface of each family
    /// (or those matching `localInterface`), then `interfaces`; never the dummy interface.
    /// The announce interfaces (`config::announce_interfaces`), with the default-route links
    /// read from the kernel when the pattern is `default`.
    async fn announce_interfaces(&self, config: &Config, snapshot: &AddressSnapshot) -> Vec<String> {
        let mut default_links = Vec::new();
        if config.local_interface == "default" {
            for family in [Family::V4, Family::V6] {
                match self.mgr.default_interface(family).await {
                    Ok(Some(link)) => default_links.push(link),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, ?family, "cannot read the default route"),
                }
            }
        }
        config::announce_interfaces(config, &snapshot.links, &default_links)
    }

    async fn subnets(&self, config: &Config) -> String {
        let snapshot = match self.mgr.snapshot().await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "cannot read addresses for purelb.io/subnets");
                return String::new();
            }
        };
        let names = self.announce_interfaces(config, &snapshot).await;
        election::format_subnets(&config::announce_subnets(&snapshot.addresses, &names))
    }

    async fn lease_loop(self: Arc<Self>) {
        let settings = self.lease_settings();
        let mut was_healthy = false;
        let mut last_error: Option<String> = None;
        loop {
            let (config, announcing, draining, bgp) = {
                let s = self.shared();
                (s.config.clone(), s.announcing.clone(), s.draining, s.bgp.clone())
            };
            let node_uid =
                self.nodes.state().into_iter().find(|n| n.name_any() == self.settings.node).and_then(|n| n.uid());
            let content = LeaseContent { subnets: self.subnets(&config).await, announcing, draining, node_uid, bgp };
            let guard = self.lease_write.lock().await;
            if self.shared().kept_for_successor {
                // Exiting with the successor's Lease written: no renewal may shorten it.
                drop(guard);
                self.kick_lease.notified().await;
                continue;
            }
            let sent = Instant::now();
            let renewed = lease::renew(&self.client, &settings, &content).await;
            drop(guard);
            match renewed {
                Ok(()) => {
                    // An outage is a gap in the renewals. Not `!self.lease_ok()`: that is also
                    // false while recovering, so every renewal would push the recovery further
                    // and the agent would never claim or drop anything again (found by the soak).
                    let window = (self.settings.renew_interval + self.settings.renew_interval / 2)
                        .min(self.settings.lease_duration);
                    let mut shared = self.shared();
                    // Measured between send times: a renewal answered late but sent on time
                    // is no gap (measured at the answer, every renewal of a slow server looked
                    // like the end of an outage and restarted every watch).
                    if let Some(last) = shared.renewed_at.filter(|t| sent.saturating_duration_since(*t) >= window) {
                        tracing::info!("this node's Lease is renewed again after an outage");
                        shared.recovering_until = Some(sent + self.settings.lease_duration);
                        // A watch whose connection hung through the outage would stay stale
                        // until the client's read timeout: start again every watch that has
                        // delivered nothing since the last renewal before the gap or, when
                        // renewals failed, since the last failure ended (a watch that delivered
                        // after that is connected). Not every watch: a slow server that answers
                        // one renewal late would relist the whole cluster on every agent.
                        crate::watch::restart_quiet_since(quiet_since(last, shared.renew_failed_at));
                    }
                    shared.renewed_at = Some(sent);
                    drop(shared);
                    if last_error.take().is_some() {
                        tracing::info!("this node's Lease is renewed again");
                    }
                }
                Err(error) => {
                    self.shared().renew_failed_at = Some(Instant::now());
                    // One line per distinct problem (not one per renewal), naming the server and
                    // the identity when the server is unreachable or refuses the credentials.
                    let line = match &error {
                        LeaseError::Api { source, .. } => {
                            crate::watch::explain_client_error("renewing this node's Lease", source)
                        }
                        LeaseError::Timeout { .. } => crate::watch::explain_client_error(
                            "renewing this node's Lease",
                            &kube::Error::Service(error.to_string().into()),
                        ),
                        LeaseError::Body { .. } => None,
                    }
                    .unwrap_or_else(|| format!("cannot renew this node's Lease: {error}"));
                    if last_error.as_ref() == Some(&line) {
                        tracing::debug!(%error, "cannot renew this node's Lease");
                    } else {
                        tracing::warn!("{line}");
                        last_error = Some(line);
                    }
                }
            }
            let healthy = self.lease_ok();
            metrics::gauge!(catalog::ELECTION_LEASE_HEALTHY).set(if healthy { 1.0 } else { 0.0 });
            if healthy != was_healthy {
                self.queue.add(Work::Pass);
            }
            if let Some(until) = self.shared().recovering_until {
                let left = until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    self.queue.add_after(Work::Pass, left + Duration::from_millis(10));
                }
            }
            was_healthy = healthy;
            // A fixed cadence from the send time, not an interval after the answer: a slow API
            // (a loaded server, 250 ms per write) would otherwise stretch the gap between
            // renewals to an interval plus the latency, past the 1.5 intervals that count as an
            // outage, and the agent would freeze for a lease duration without any outage (found
            // by the soak on a loaded machine).
            tokio::select! {
                () = tokio::time::sleep_until((sent + self.settings.renew_interval).into()) => {}
                () = self.kick_lease.notified() => {}
            }
        }
    }

    /// Checks again when the first member's Lease expires (20 ms after, so that it has).
    fn schedule_expiry(&self, members: &Members) {
        if let Some(expiry) = members.next_expiry() {
            let millis = expiry.as_millisecond().saturating_sub(Timestamp::now().as_millisecond());
            if let Ok(millis) = u64::try_from(millis) {
                self.queue.add_after(Work::Members, Duration::from_millis(millis + 20));
            }
        }
    }

    /// A node Lease changed or an expiry timer fired: a pass when the members differ from the
    /// last pass's (a Lease expired, a node came, left, started draining or changed subnets),
    /// or when only what they announce changed and a rule of this node waits on that (make
    /// before break, a quiet takeover, a drain); else only the next timer. Renewals move every
    /// expiry on, so at 1,000 nodes this fires about once per renew interval; a pass over every
    /// Service each time was the whole cost of an idle agent. The pass decides again only the
    /// Services with an address in a subnet of a node whose candidacy changed
    /// ([`Members::election_changes`]): at 1,000 nodes on many subnets a node that comes or
    /// goes costs the Services of its subnets, not all 50,000.
    async fn members_changed(&self) -> Result<bool, AgentError> {
        let leases = self.leases.state();
        let members = Members::from_leases(leases.iter().map(AsRef::as_ref), Timestamp::now());
        let mut state = self.state.lock().await;
        let unchanged = state.members.as_ref().is_some_and(|last| {
            last.same_election(&members)
                && (last.same_holding(&members) || !(state.timers.waits_on_holders() || self.shared().draining))
        });
        if unchanged {
            self.schedule_expiry(&members);
            // What the others announce is current for the next comparison.
            state.members = Some(members);
            return Ok(true);
        }
        drop(state);
        // The Services whose addresses the change touches are decided again, not every one.
        self.pass_for(Some(Vec::new())).await
    }

    /// One level-triggered pass over every Service: [`Self::pass_for`] without a scope.
    async fn pass(&self) -> Result<bool, AgentError> {
        self.pass_for(None).await
    }

    /// Services changed (and nothing else, as far as the queue knows): a pass that decides
    /// those Services again and the ones sharing an address with them, not every Service.
    async fn services_changed(&self) -> Result<bool, AgentError> {
        let changed: Vec<ServiceKey> = std::mem::take(&mut *self.dirty());
        if changed.is_empty() {
            return Ok(true);
        }
        let result = self.pass_for(Some(changed)).await;
        if result.is_err() {
            // The changed keys were taken: the retry covers every Service.
            self.queue.add(Work::Pass);
        }
        result
    }

    /// One level-triggered pass: gather one snapshot (the caches, which must all have synced,
    /// EndpointSlices included, and this node's own Lease in them; the kernel's addresses; the
    /// clock), plan with the pure [`plan::plan_decided`], apply its actions. Returns whether it
    /// ran.
    ///
    /// The decision covers every Service. With `changed` (Services that changed since the last
    /// pass) and the rest of its inputs as the last pass saw them (the members' election, the
    /// ServiceGroups, the EndpointSlices), the last decision is brought up to date for those
    /// Services alone ([`decide::Decision::redecide`]), and Events and gauges are revisited for
    /// them alone: the cost of a Service change does not grow with the number of Services
    /// (docs/scale.md, "The tail"). Otherwise every Service is decided.
    async fn pass_for(&self, changed: Option<Vec<ServiceKey>>) -> Result<bool, AgentError> {
        let mut state = self.state.lock().await;
        let own = contract::node_lease_name(&self.settings.node);
        let leases = self.leases.state();
        let own_seen = leases.iter().any(|l| {
            l.name_any() == own
                && l.annotations().get(contract::LEASE_ANNOTATION_INSTANCE) == Some(&self.settings.instance)
        });
        let endpoints_synced = {
            let index = self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.report_staleness(&index);
            index.is_synced()
        };
        if !own_seen || !endpoints_synced {
            // Membership or the endpoints are not known yet: deciding now would drop what this
            // node should keep (an externalTrafficPolicy: Local address looks endpoint-less).
            self.queue.add_after(Work::Pass, Duration::from_millis(200));
            return Ok(false);
        }
        metrics::counter!(catalog::DECISION_PASSES).increment(1);
        let kernel = self.mgr.snapshot().await?;
        if let Some((bad, message)) = self.refresh_config(&kernel.links) {
            if state.config_error.as_ref() != Some(&message) {
                tracing::warn!(%message, "invalid LBNodeAgent; keeping the last good configuration");
                state.config_error = Some(message.clone());
                self.publish(bad.object_ref(&()), vec![(EventType::Warning, reasons::CONFIG_ERROR, message)]);
            }
        } else {
            state.config_error = None;
        }
        self.follow_node();
        let members = Members::from_leases(leases.iter().map(AsRef::as_ref), Timestamp::now());
        self.schedule_expiry(&members);
        state.members = Some(members.clone());
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(catalog::ELECTION_MEMBER_COUNT).set(members.iter().filter(|m| !m.draining).count() as f64);
        let (config, draining, drain_started) = {
            let s = self.shared();
            (s.config.clone(), s.draining, s.drain_started)
        };
        // This node's own Lease must look live in the cache too: otherwise the cache is behind
        // (e.g. right after an API outage) and so are the peers' Leases in it.
        let lease_ok = self.lease_ok() && members.get(&self.settings.node).is_some();
        let ifaces = self.announce_interfaces(&config, &kernel).await;
        let (groups, ranges) = decide::parse_groups(self.groups.state().iter().map(AsRef::as_ref));
        let endpoints_version = self.endpoints_version.load(std::sync::atomic::Ordering::Acquire);
        // The last decision is brought up to date for the changed Services and those whose
        // addresses the membership change touches, when the groups and endpoints are as it saw
        // them and that is at most half the Services (beyond, deciding all costs less).
        let previous = state.decided.take();
        let (last, changed) = match (previous, changed) {
            (Some(last), Some(mut changed)) if last.groups == groups && last.endpoints_version == endpoints_version => {
                changed.extend(last.decision.services_touched_by(&last.members.election_changes(&members)));
                changed.sort();
                changed.dedup();
                if changed.len() <= last.decision.considered.len() / 2 {
                    (Some(last), Some(changed))
                } else {
                    (Some(last), None)
                }
            }
            (previous, _) => (previous, None),
        };
        // Every Service, unless the last decision is brought up to date.
        let scoped = changed.is_some();
        let all = if scoped { Vec::new() } else { self.services.state() };
        let services: Vec<&CachedService> = all.iter().map(AsRef::as_ref).collect();
        let timers = std::mem::take(&mut state.timers);
        // What was held, for the Events of a pass for some Services (a full pass revisits all).
        let held_before: BTreeMap<IpAddr, (Kind, String, Vec<ServiceKey>)> = if scoped {
            timers.held.iter().map(|(ip, h)| (*ip, (h.kind, h.ifname.clone(), h.services.clone()))).collect()
        } else {
            BTreeMap::new()
        };
        let (planned, scope, changes) = {
            let index = self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let snapshot = plan::Snapshot {
                node: &self.settings.node,
                services: &services,
                members: &members,
                endpoints: &index,
                groups: &groups,
                ranges: &ranges,
                kernel: &kernel,
                announce: &ifaces,
                dummy_interface: &config.dummy_interface,
                local_options: config.local_options,
                dummy_options: config.dummy_options,
                marks: self.mgr.mark_support(),
                lease_ok,
                draining,
                drain_started,
                now: Instant::now(),
                timing: self.timing(),
            };
            let (decision, scope, changes) = match (changed, last) {
                (Some(changed), Some(last)) => {
                    let mut decision = last.decision;
                    let lookup =
                        |k: &ServiceKey| self.services.get(&reflector::ObjectRef::new(&k.name).within(&k.namespace));
                    let redecided = decision.redecide(&changed, lookup, &snapshot.inputs());
                    (decision, Some(redecided.services), redecided.winner_changes)
                }
                (_, last) => {
                    // Only the last winners are needed (to count changes): the rest goes before
                    // the new decision is built, not after.
                    let last = last.map(|last| Decision { winners: last.decision.winners, ..Decision::default() });
                    let decision = decide::decide(services.iter().copied(), &snapshot.inputs());
                    let changes = last.map_or(0, |last| decision.winner_changes_since(&last));
                    (decision, None, changes)
                }
            };
            let planned = plan::plan_decided(&snapshot, &timers, decision);
            self.report_staleness(&index);
            (planned, scope, changes)
        };
        drop(services);
        drop(all);
        let plan::Plan { decision, actions, mut failures, orphans, wake_after, timers: next, .. } = planned;
        if changes > 0 {
            metrics::counter!(catalog::ELECTION_WINNER_CHANGES).increment(changes as u64);
        }
        state.export_slice_counts(
            &decision,
            &self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            scope.as_deref(),
        );
        metrics::gauge!(catalog::ORPHANED_IPS).set(f64::from(orphans));
        if let Some(after) = wake_after {
            self.queue.add_after(Work::Pass, after);
        }
        let outcomes = self.apply(&config, &kernel, actions, &mut state.bursts, drain_started).await;
        state.timers = next.after_apply(outcomes, &mut failures);
        let State { timers, bursts, .. } = &mut *state;
        bursts.retain(|ip, burst| {
            let keep = timers.held.contains_key(ip);
            if !keep {
                burst.stop();
            }
            keep
        });
        let local_ifaces: HashSet<String> =
            state.timers.held.values().filter(|h| h.kind == Kind::Local).map(|h| h.ifname.clone()).collect();
        *self.held_local.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            state.timers.held.iter().filter(|(_, h)| h.kind == Kind::Local).map(|(ip, _)| *ip).collect();
        self.stop_captures(&local_ifaces);
        for ifname in &local_ifaces {
            self.start_capture(&kernel, ifname).await;
        }
        // A pass for some Services revisits the Events of those, and of the Services of every
        // address whose holding or failure this pass changed (drift, renewals, interfaces).
        let scope = scope.map(|mut scope| {
            let after = &state.timers.held;
            for (ip, (kind, ifname, services)) in &held_before {
                if after.get(ip).is_none_or(|h| h.kind != *kind || h.ifname != *ifname || h.services != *services) {
                    scope.extend(services.iter().cloned());
                }
            }
            for (ip, h) in after {
                if !held_before.contains_key(ip) {
                    scope.extend(h.services.iter().cloned());
                }
            }
            let failed: Vec<IpAddr> = failures.keys().chain(state.failed.iter()).copied().collect();
            if !failed.is_empty() {
                scope.extend(
                    decision.considered.iter().filter(|(_, ip, _)| failed.contains(ip)).map(|(k, _, _)| k.clone()),
                );
            }
            scope.sort();
            scope.dedup();
            scope
        });
        state.failed = failures.keys().copied().collect();
        self.report(&mut state, &decision, &failures, scope.as_deref());
        self.update_bgp(&config, &mut state);
        let announcing = election::format_announcing(
            &state
                .timers
                .held
                .values()
                .map(|h| HeldAddress { address: h.spec.ip, interface: Some(h.ifname.clone()) })
                .collect::<Vec<_>>(),
        );
        let changed = {
            let mut shared = self.shared();
            let changed = shared.announcing != announcing;
            shared.announcing = announcing;
            changed
        };
        if changed {
            self.kick_lease.notify_one();
        }
        let decided_all = scope.is_none().then_some(decision.considered.len());
        state.decided = Some(Decided { decision, members, groups, endpoints_version });
        drop(state);
        if decided_all.is_some_and(|n| n >= RELEASE_FREED_AFTER) {
            // A full pass at this size freed megabytes that glibc would keep mapped
            // (docs/scale.md, "Agent memory after membership churn").
            memory::release_freed();
        }
        Ok(true)
    }

    /// Hands BIRD the configuration for the current objects (BGP on only) and reports the
    /// BGPPeers and ServiceGroups left out of it, once per problem.
    fn update_bgp(&self, config: &Config, state: &mut State) {
        let Some((peers, handle)) = &self.bgp else { return };
        let Some(bgp) = &self.settings.bgp else { return };
        let node = self.nodes.state().into_iter().find(|n| n.name_any() == self.settings.node);
        let peers = peers.state();
        let groups = self.groups.state();
        let password_dir = bgp.config.parent().unwrap_or(std::path::Path::new("/")).join("passwords");
        let desired = crate::bgp::desired::desired(
            &self.settings.node,
            node.as_deref(),
            &peers.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            &groups.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            &config.dummy_interface,
            password_dir,
            &|path| path.exists(),
        );
        let problems: BTreeMap<(&'static str, String), String> = desired
            .invalid_peers
            .iter()
            .map(|(n, m)| (("BGPPeer", n.clone()), m.clone()))
            .chain(desired.invalid_groups.iter().map(|(n, m)| (("ServiceGroup", n.clone()), m.clone())))
            .collect();
        for ((kind, name), message) in &problems {
            if state.bgp_problems.get(&(kind, name.clone())) == Some(message) {
                continue;
            }
            tracing::warn!(kind, name, %message, "BGP: left out of BIRD's configuration");
            let reference = match *kind {
                "BGPPeer" => peers.iter().find(|p| &p.name_any() == name).map(|p| p.object_ref(&())),
                _ => groups.iter().find(|g| &g.name_any() == name).map(|g| g.object_ref(&())),
            };
            if let Some(reference) = reference {
                self.publish(reference, vec![(EventType::Warning, reasons::CONFIG_ERROR, message.clone())]);
            }
        }
        state.bgp_problems = problems;
        handle.set(desired.config);
    }

    /// Follows BIRD's sessions: the `purelb.io/bgp` Lease annotation (at once) and the
    /// `BGPSessionUp` / `BGPSessionDown` Events on this Node (transitions only; a session that
    /// never came up is reported after 5 s).
    async fn follow_bgp(self: Arc<Self>, mut status: tokio::sync::watch::Receiver<crate::bgp::BgpStatus>) {
        const GRACE: Duration = Duration::from_secs(5);
        let mut transitions = crate::bgp::manager::Transitions::default();
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(self.settings.node.clone()),
            ..Default::default()
        };
        loop {
            let current = status.borrow_and_update().clone();
            let annotation = current.annotation();
            let changed = {
                let mut shared = self.shared();
                let changed = shared.bgp.as_ref() != Some(&annotation);
                shared.bgp = Some(annotation);
                changed
            };
            if changed {
                self.kick_lease.notify_one();
            }
            let mut reference = reference.clone();
            reference.uid =
                self.nodes.state().into_iter().find(|n| n.name_any() == self.settings.node).and_then(|n| n.uid());
            for (peer, up, detail) in transitions.update(&current, Instant::now(), GRACE) {
                let event = if up {
                    tracing::info!(peer, "BGP session established");
                    (
                        EventType::Normal,
                        reasons::BGP_SESSION_UP,
                        format!("BGP session to BGPPeer {peer} is Established"),
                    )
                } else {
                    tracing::warn!(peer, %detail, "BGP session down");
                    (
                        EventType::Warning,
                        reasons::BGP_SESSION_DOWN,
                        format!("BGP session to BGPPeer {peer} is down ({detail})"),
                    )
                };
                self.publish(reference.clone(), vec![event]);
            }
            tokio::select! {
                r = status.changed() => if r.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// `purelb_endpointslice_cache_age_seconds`: how long the EndpointSlice cache may have been
    /// behind (before the first list: since this agent started).
    fn report_staleness(&self, index: &EndpointIndex) {
        let stale = index.staleness(Instant::now()).unwrap_or_else(|| self.started.elapsed());
        metrics::gauge!(catalog::ENDPOINTSLICE_CACHE_AGE).set(stale.as_secs_f64());
    }

    /// The timing settings of [`plan::plan`].
    fn timing(&self) -> plan::Timing {
        plan::Timing {
            lease_duration: self.settings.lease_duration,
            handover_timeout: self.settings.handover_timeout,
            settle_time: self.settings.settle_time,
            quiet_wait: QUIET_WAIT,
            race_wait: RACE_WAIT,
        }
    }

    /// Applies a plan's actions in order: netlink and GARP/NA, nothing else. Returns what did
    /// not go as planned.
    #[allow(clippy::too_many_lines)]
    async fn apply(
        &self,
        config: &Config,
        kernel: &AddressSnapshot,
        actions: Vec<Action>,
        bursts: &mut HashMap<IpAddr, BurstHandle>,
        drain_started: Option<Instant>,
    ) -> Vec<Outcome> {
        let node = &self.settings.node;
        let mut outcomes = Vec::new();
        let mut dummy: Option<Result<(), String>> = None;
        let mut not_added: HashSet<IpAddr> = HashSet::new();
        let mut quiet: Vec<(Address, HeldState, Instant, Instant)> = Vec::new();
        for action in actions {
            match action {
                Action::RemoveFailedDad(address) => {
                    tracing::warn!(ip = %address.ip, link = %address.ifname, "duplicate address detection failed (another host answers for the address, e.g. its previous holder); adding it again without DAD");
                    if let Err(error) = self.mgr.delete_listed(&address, kernel).await {
                        tracing::warn!(ip = %address.ip, %error, "cannot remove the address that failed DAD");
                    }
                }
                Action::EnsureDummy(name) => {
                    dummy = Some(self.mgr.ensure_link(&name).await.map(|_| ()).map_err(|e| e.to_string()));
                }
                Action::Add { spec, kind, why } => {
                    let ip = spec.ip;
                    let ifname = spec.link.to_string();
                    if kind == Kind::Remote
                        && let Some(Err(message)) = &dummy
                    {
                        not_added.insert(ip);
                        outcomes.push(Outcome::AddFailed { ip, message: message.clone() });
                        continue;
                    }
                    let echo = self.expect_echo(kernel, true, &ifname, ip, spec.prefix_len);
                    let added = self.mgr.add_or_replace(&spec).await;
                    if added.is_err()
                        && let Some(echo) = echo
                    {
                        self.echoes().forget(echo);
                    }
                    match added {
                        Ok(_) => match why {
                            AddWhy::Repair => {
                                metrics::counter!(catalog::ADDRESS_DRIFT_REPAIRS).increment(1);
                                tracing::info!(%ip, link = %ifname, "address was removed by someone else; added it back");
                            }
                            AddWhy::New => {
                                tracing::info!(%ip, link = %ifname, prefix_len = spec.prefix_len, kind = kind.as_str(), "added address");
                            }
                            AddWhy::Renew | AddWhy::Flags | AddWhy::NoDad => {}
                        },
                        Err(error) => {
                            tracing::warn!(%ip, link = %ifname, %error, "cannot add address");
                            not_added.insert(ip);
                            outcomes.push(Outcome::AddFailed {
                                ip,
                                message: format!("cannot add {ip} to {ifname} on node {node}: {error}"),
                            });
                        }
                    }
                }
                Action::Announce { ip, ifname } => {
                    if let Some(b) = bursts.remove(&ip) {
                        b.stop();
                    }
                    if not_added.contains(&ip) || config.burst.is_none() {
                        continue;
                    }
                    match self.start_burst(config, kernel, &ifname, ip).await {
                        Some(b) => {
                            bursts.insert(ip, b);
                        }
                        None => outcomes.push(Outcome::AnnounceFailed(ip)),
                    }
                }
                Action::Remove { address, reason, detail, held, stop_announcing, handover } => {
                    let ip = address.ip;
                    if !stop_announcing && not_added.contains(&ip) {
                        // Its new place could not be added: the old one stays (make before break).
                        if let Some(h) = held {
                            outcomes.push(Outcome::StillHeld(h));
                        }
                        continue;
                    }
                    if stop_announcing && let Some(b) = bursts.remove(&ip) {
                        b.stop();
                    }
                    if handover {
                        record_handover(drain_started);
                    }
                    let echo = self.expect_echo(kernel, false, &address.ifname, ip, address.prefix_len);
                    let deleted = self.mgr.delete_listed(&address, kernel).await;
                    if !matches!(deleted, Ok(crate::core::netlink::DeleteOutcome::Removed))
                        && let Some(echo) = echo
                    {
                        self.echoes().forget(echo);
                    }
                    match deleted {
                        Ok(_) if held.is_some() => {
                            tracing::info!(%ip, link = %address.ifname, %reason, %detail, "withdrew address");
                        }
                        Ok(_) => {
                            metrics::counter!(catalog::ORPHANED_IPS_REMOVED).increment(1);
                            tracing::info!(%ip, link = %address.ifname, %reason, %detail, "removed orphaned address (PureLB-owned, not held by this node)");
                        }
                        Err(error) => {
                            tracing::warn!(%ip, link = %address.ifname, %error, "cannot remove address");
                            if let Some(h) = held {
                                outcomes.push(Outcome::StillHeld(h));
                            }
                        }
                    }
                }
                Action::LetGoQuietly { address, held, since, until } => quiet.push((address, held, since, until)),
            }
        }
        // Graceful handovers whose successor holds the address, all at once.
        let results = futures::future::join_all(quiet.iter().map(|(address, held, _, until)| async {
            match Self::wait_quiet(address.ip, *until).await {
                Ok(segments) => Ok(self.let_go_quietly(address, kernel, &held.spec, segments).await),
                Err(open) => Err(open),
            }
        }))
        .await;
        for ((address, held, since, _), result) in quiet.into_iter().zip(results) {
            let ip = address.ip;
            match result {
                Ok(Ok(true)) => {
                    tracing::info!(%ip, link = %address.ifname, waited = ?since.elapsed(), "withdrew address at a moment without open connections; the successor takes over");
                    record_handover(drain_started);
                    if let Some(b) = bursts.remove(&ip) {
                        b.stop();
                    }
                }
                // A connection raced the withdrawal: the address is back until it ends.
                Ok(Ok(false)) => outcomes.push(Outcome::Raced(held)),
                Ok(Err(error)) => {
                    tracing::warn!(%ip, %error, "cannot hand the address over");
                    outcomes.push(Outcome::StillHeld(held));
                }
                Err(open) => {
                    tracing::info!(%ip, open, waited = ?since.elapsed(), "connections to the address stay open; handing it over anyway");
                    record_handover(drain_started);
                    if let Some(b) = bursts.remove(&ip) {
                        b.stop();
                    }
                    match self.mgr.delete_listed(&address, kernel).await {
                        Ok(_) => tracing::info!(%ip, link = %address.ifname, "withdrew address"),
                        Err(error) => {
                            tracing::warn!(%ip, link = %address.ifname, %error, "cannot withdraw address");
                            outcomes.push(Outcome::StillHeld(held));
                        }
                    }
                }
            }
        }
        outcomes
    }
    /// Events and metrics for the transitions of this pass: of every Service (`scope` `None`),
    /// or of the Services in `scope` (the others' notes stay as they are).
    fn report(
        &self,
        state: &mut State,
        decision: &decide::Decision,
        failures: &BTreeMap<IpAddr, String>,
        scope: Option<&[ServiceKey]>,
    ) {
        let mut events: BTreeMap<ServiceKey, Vec<(EventType, &'static str, String)>> = BTreeMap::new();
        state.reports += 1;
        let this_report = state.reports;
        let node = &self.settings.node;
        debug_assert!(scope.is_none_or(<[ServiceKey]>::is_sorted));
        // `scope` is sorted: a search, not a scan, per entry (a membership change may decide
        // thousands of Services again; a scan made this loop quadratic).
        let in_scope = |key: &ServiceKey| scope.is_none_or(|scope| scope.binary_search(key).is_ok());
        let no_endpoint: HashMap<(&ServiceKey, IpAddr), Option<&String>> = decision
            .no_endpoint
            .iter()
            .filter(|n| in_scope(&n.service))
            .map(|n| ((&n.service, n.ip), n.reporter.as_ref()))
            .collect();
        let refused: HashMap<(&ServiceKey, IpAddr), &decide::Refused> =
            decision.refused.iter().filter(|r| in_scope(&r.service)).map(|r| ((&r.service, r.ip), r)).collect();
        for (key, ip, kind) in decision.considered.iter().filter(|(key, _, _)| in_scope(key)) {
            let id = (key, *ip);
            let note = if let Some(h) = state.timers.held.get(ip).filter(|h| h.services.contains(key)) {
                Note::Announcing(h.kind, h.ifname.clone())
            } else if let Some(message) = failures.get(ip) {
                Note::Failed(message.clone())
            } else if let Some(r) = refused.get(&id) {
                if r.reporter.as_deref() == Some(node.as_str()) {
                    Note::Failed(format!(
                        "{ip} is {} and is never put on an interface: give the Service another address",
                        r.why
                    ))
                } else {
                    Note::NotHere
                }
            } else if let Some(reporter) = no_endpoint.get(&id) {
                if reporter.map(String::as_str) == Some(node.as_str()) {
                    let without_node = self
                        .endpoints
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .external_endpoints(key, Family::of(*ip));
                    let why = if without_node > 0 {
                        format!(
                            "; {without_node} of its endpoints have no nodeName, so no node can be chosen for them: set nodeName in the EndpointSlices"
                        )
                    } else {
                        String::new()
                    };
                    Note::Failed(format!(
                        "no node has a usable endpoint for {ip} (externalTrafficPolicy: Local), so nobody announces it{why}"
                    ))
                } else {
                    Note::NotHere
                }
            } else {
                Note::NotHere
            };
            let old = if note == Note::NotHere {
                // Not kept: most Services are not held on most nodes, and a note for each took
                // about 480 bytes per Service on every agent (issue 20). Absent means not here;
                // only leaving `Announcing` or `Failed` is a change to report.
                let notes = state.notes.get_mut(key);
                let old = notes.and_then(|notes| Some((notes.remove(ip)?.0, notes.is_empty())));
                if old.as_ref().is_some_and(|(_, emptied)| *emptied) {
                    state.notes.remove(key);
                }
                old.map(|(note, _)| note)
            } else {
                // Without cloning the key when the Service is known: this loop runs for every
                // Service on every pass.
                let notes = match state.notes.get_mut(key) {
                    Some(notes) => notes,
                    None => state.notes.entry(key.clone()).or_default(),
                };
                notes.insert(*ip, (note.clone(), this_report)).map(|(n, _)| n)
            };
            if old.as_ref() == Some(&note) {
                continue;
            }
            let event = match (&old, &note) {
                (_, Note::Announcing(Kind::Local, iface)) => Some((
                    EventType::Normal,
                    reasons::ANNOUNCING_LOCAL,
                    format!("node {node} announces {ip} on {iface}"),
                )),
                (_, Note::Announcing(Kind::Remote, iface)) => Some((
                    EventType::Normal,
                    reasons::ANNOUNCING_REMOTE,
                    format!("node {node} announces {ip} on {iface} ({} pool)", kind.as_str()),
                )),
                (Some(Note::Announcing(..)), Note::NotHere) => {
                    Some((EventType::Normal, reasons::WITHDRAWN, format!("node {node} withdrew {ip}")))
                }
                (_, Note::Failed(message)) => Some((EventType::Warning, reasons::ANNOUNCEMENT_FAILED, message.clone())),
                _ => None,
            };
            if let Some(e) = event {
                events.entry(key.clone()).or_default().push(e);
            }
        }
        let seen_now = |notes: &mut HashMap<IpAddr, (Note, u64)>| {
            notes.retain(|_, (_, seen)| *seen == this_report);
            !notes.is_empty()
        };
        match scope {
            None => state.notes.retain(|_, notes| seen_now(notes)),
            Some(scope) => {
                for key in scope {
                    if state.notes.get_mut(key).is_some_and(|notes| !seen_now(notes)) {
                        state.notes.remove(key);
                    }
                }
            }
        }
        for (key, list) in events {
            let svc = self.services.get(&reflector::ObjectRef::new(&key.name).within(&key.namespace));
            if let Some(svc) = svc {
                self.publish(svc.object_ref(&()), list);
            }
        }
        // Metrics.
        scoped::replace_gauges(
            catalog::LBNODEAGENT_ANNOUNCED,
            state.timers.held.values().flat_map(|h| {
                h.services.iter().map(|s| {
                    (
                        vec![
                            ("service", s.to_string()),
                            ("ip", h.spec.ip.to_string()),
                            ("interface", h.ifname.clone()),
                        ],
                        1.0,
                    )
                })
            }),
        );
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(catalog::ANNOUNCED_IPS).set(state.timers.held.len() as f64);
    }

    async fn link_info(&self, snapshot: &AddressSnapshot, ifname: &str) -> Result<LinkInfo, AgentError> {
        let details = |reason: String| AgentError::LinkDetails { link: ifname.to_owned(), reason };
        let link = snapshot.link(ifname).ok_or_else(|| details("not found".to_owned()))?;
        let message = self
            .links
            .link()
            .get()
            .match_index(link.index)
            .execute()
            .try_next()
            .await
            .map_err(|e| details(e.to_string()))?
            .ok_or_else(|| details("not found".to_owned()))?;
        let mac = message
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| details("it has no Ethernet address".to_owned()))?;
        let link_local: Option<Ipv6Addr> = snapshot
            .addresses_on(&LinkRef::Index(link.index))
            .find(|a| a.is_link_local() && !a.state.tentative)
            .and_then(|a| match a.ip {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            });
        Ok(LinkInfo { name: ifname.to_owned(), index: link.index, mac: MacAddr(mac), link_local })
    }

    async fn start_burst(
        &self,
        config: &Config,
        snapshot: &AddressSnapshot,
        ifname: &str,
        ip: IpAddr,
    ) -> Option<BurstHandle> {
        let burst = config.burst?;
        match self.link_info(snapshot, ifname).await {
            Ok(link) => Some(spawn_burst(self.transmitter.clone(), link, ip, burst)),
            Err(error) => {
                metrics::counter!(catalog::GARP_ERRORS).increment(1);
                tracing::warn!(%ip, %error, "cannot announce the takeover with gratuitous ARP/NA");
                None
            }
        }
    }

    /// Publishes Events in order without holding up the worker (best effort).
    fn publish(&self, reference: k8s_openapi::api::core::v1::ObjectReference, events: Vec<crate::events::EventSpec>) {
        self.recorder.publish(&reference, events);
    }

    /// Starts a capture thread on `ifname` unless one runs: it reports ARP/NA claims for held
    /// local addresses from other MACs.
    async fn start_capture(&self, snapshot: &AddressSnapshot, ifname: &str) {
        if self.captures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(ifname) {
            return;
        }
        let link = match self.link_info(snapshot, ifname).await {
            Ok(link) => link,
            Err(error) => {
                tracing::warn!(%error, "no conflict detection on this interface");
                return;
            }
        };
        let socket = match open_packet_capture(&link, ETH_P_ALL) {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "no conflict detection on this interface");
                return;
            }
        };
        if let Err(error) = socket.set_read_timeout(Some(Duration::from_millis(250))) {
            tracing::warn!(%error, interface = ifname, "no conflict detection on this interface");
            return;
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.captures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(ifname.to_owned(), stop.clone());
        let held = self.held_local.clone();
        let tx = self.conflicts.clone();
        let name = ifname.to_owned();
        let spawned = std::thread::Builder::new().name(format!("capture-{name}")).spawn(move || {
            use std::io::Read;
            let mut buf = [0_u8; 2048];
            let mut socket = socket;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n = match socket.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, interface = %name, "conflict detection stopped");
                        return;
                    }
                };
                let Some(claim) = buf.get(..n).and_then(parse_claim) else { continue };
                if claim.mac == link.mac {
                    continue;
                }
                let ours = held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&claim.address);
                if ours && tx.send((claim.address, claim.mac, name.clone())).is_err() {
                    return;
                }
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, interface = ifname, "cannot start conflict detection");
            self.captures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(ifname);
        }
    }

    /// Stops the capture threads of interfaces not in `keep`.
    fn stop_captures(&self, keep: &HashSet<String>) {
        self.captures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|name, stop| {
            let keep = keep.contains(name);
            if !keep {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            keep
        });
    }

    /// Another MAC claims `ip`, which this node holds. A node that cannot renew its Lease or
    /// reach the API right now (it may be the one cut off), that is draining, that lost `ip` and
    /// kept it only until the winner holds it, or that no longer wins `ip` on the node Leases
    /// read now gives the address up at once, and claims it again only after one lease
    /// duration (when it still elects itself then); otherwise it keeps it (the other is the
    /// stale one). Every claim counts as a conflict.
    async fn on_conflict(
        &self,
        ip: IpAddr,
        mac: MacAddr,
        ifname: &str,
        logged: &mut HashMap<(IpAddr, MacAddr), Instant>,
    ) {
        metrics::counter!(catalog::ADDRESS_CONFLICTS).increment(1);
        let draining = self.shared().draining;
        // Lost the election and kept only until the winner holds it: this is the winner.
        let losing = self.state.lock().await.timers.losing.contains_key(&ip);
        // Neither a current Lease nor the caches settle it: the cut may be younger than one
        // renewal, the claimer's Lease (a node that just rejoined) may not have reached the
        // cache yet, or this node's watch of the endpoints may be behind. Read the API now and
        // elect again: a node that cannot reach the API is the one cut off, and one that no
        // longer wins yields at once.
        let still_wins =
            if !losing && self.lease_ok() && !draining { self.wins_on_fresh_reads(ip).await } else { false };
        if still_wins {
            let recent = logged.get(&(ip, mac)).is_some_and(|t| t.elapsed() < Duration::from_secs(10));
            if !recent {
                logged.insert((ip, mac), Instant::now());
                tracing::warn!(%ip, %mac, interface = ifname, "another host claims an address this node holds; keeping it (this node's Lease is current)");
            }
            return;
        }
        let mut state = self.state.lock().await;
        let Some(held) = state.timers.held.remove(&ip) else { return };
        if let Some(b) = state.bursts.remove(&ip) {
            b.stop();
        }
        self.held_local.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&ip);
        match self.mgr.delete(held.spec.link.clone(), ip).await {
            Ok(_) => {
                state.timers.yielded.insert(ip, Instant::now());
                tracing::info!(%ip, %mac, interface = ifname, draining, losing, "another host took over the address; gave it up")
            }
            Err(error) => {
                tracing::warn!(%ip, %error, "cannot give up an address another host claims");
                state.timers.held.insert(ip, held);
            }
        }
        drop(state);
        self.queue.add(Work::Pass);
    }

    /// This node's decision over `services` (the cached ones in a pass, fresh reads on a
    /// conflict).
    fn decide<'s>(
        &self,
        services: impl IntoIterator<Item = &'s Service>,
        members: &Members,
        index: &EndpointIndex,
        groups: &HashMap<String, ParsedPools>,
    ) -> decide::Decision {
        decide::decide(services, &Inputs { node: &self.settings.node, members, endpoints: index, groups })
    }

    /// On a conflict: whether this node still wins `ip` on what the API says now (read within
    /// [`FRESH_READ_TIMEOUT`]) instead of the caches: the node Leases, and every Service the
    /// cache has on `ip` with its EndpointSlices. `false` when the API does not answer.
    ///
    /// The claimer decided on its own caches, which may be newer than this node's: a watch that
    /// expired or failed is behind until it has listed again. Keeping the address on a stale
    /// cache would leave two holders until it catches up.
    async fn wins_on_fresh_reads(&self, ip: IpAddr) -> bool {
        let cached: Vec<Arc<CachedService>> =
            self.services.state().into_iter().filter(|svc| svc.ingress.contains(&ip)).collect();
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let read = async {
            futures::try_join!(
                async { leases.list(&Default::default()).await.map(|list| list.items) },
                futures::future::try_join_all(cached.iter().map(|svc| self.read_service(svc))),
            )
        };
        let (leases, services) = match tokio::time::timeout(FRESH_READ_TIMEOUT, read).await {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => {
                tracing::info!(%ip, %error, "the API does not answer while another host claims an address");
                return false;
            }
            Err(_) => {
                tracing::info!(%ip, timeout = ?FRESH_READ_TIMEOUT, "the API does not answer in time while another host claims an address");
                return false;
            }
        };
        let members = Members::from_leases(leases.iter(), Timestamp::now());
        let (groups, _) = decide::parse_groups(self.groups.state().iter().map(AsRef::as_ref));
        let mut index = EndpointIndex::new();
        let now = Instant::now();
        for slice in services.iter().flatten().flat_map(|(_, slices)| slices) {
            index.apply(slice, now);
        }
        let decision = self.decide(services.iter().flatten().map(|(svc, _)| svc), &members, &index, &groups);
        let wins = decision.wanted.contains_key(&ip);
        if !wins {
            let winner = decision.winners.get(&ip).cloned().flatten();
            tracing::info!(%ip, ?winner, "what the API says now elects another node");
        }
        wins
    }

    /// `svc` and its EndpointSlices as the API has them now (`None` when it is gone).
    async fn read_service(&self, svc: &CachedService) -> Result<Option<(Service, Vec<EndpointSlice>)>, kube::Error> {
        let namespace = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let services: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &namespace);
        let selector = kube::api::ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
        let (svc, slices) = futures::try_join!(services.get_opt(&name), slices.list(&selector))?;
        Ok(svc.map(|svc| (svc, slices.items)))
    }

    /// Waits (polling every millisecond, never past `until`) until no TCP connection to `ip`
    /// is open on this node. `Ok` when that happened, with the count of TCP segments received
    /// before the check that found it quiet (see [`connections::segments_received`]); at
    /// `until`, `Err` with the connections still open.
    async fn wait_quiet(ip: IpAddr, until: Instant) -> Result<Option<u64>, usize> {
        loop {
            let segments = connections::segments_received();
            let open = connections::open_to(ip);
            if open == 0 {
                return Ok(segments);
            }
            if Instant::now() >= until {
                return Err(open);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Withdraws a local address at a quiet moment of a graceful handover. The address goes
    /// under a blackhole host route, so that a packet of a connection that raced the withdrawal
    /// is dropped (the client retransmits it) rather than forwarded to the successor (which
    /// would reset it); then, if a connection did race in, the address is put back until it
    /// ends (`Ok(false)`). `Ok(true)`: withdrawn. When no TCP segment at all arrived since
    /// `segments` (read before the check that found the address quiet), nothing can have raced
    /// and the blackhole goes at once; otherwise the socket tables are asked again.
    async fn let_go_quietly(
        &self,
        address: &Address,
        snapshot: &AddressSnapshot,
        spec: &AddressSpec,
        segments: Option<u64>,
    ) -> Result<bool, NetlinkError> {
        let ip = address.ip;
        let blackhole = match self.mgr.set_blackhole(ip, true).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%ip, %error, "handing over without a blackhole route");
                false
            }
        };
        let outcome = async {
            self.mgr.delete_listed(address, snapshot).await?;
            let raced = if segments.is_some() && connections::segments_received() == segments {
                0
            } else {
                connections::open_to(ip)
            };
            if raced > 0 {
                self.mgr.add_or_replace(spec).await?;
            }
            Ok(raced)
        }
        .await;
        if blackhole && let Err(error) = self.mgr.set_blackhole(ip, false).await {
            tracing::warn!(%ip, %error, "cannot remove the handover's blackhole route");
        }
        match outcome? {
            0 => Ok(true),
            raced => {
                tracing::info!(%ip, raced, "a connection raced the withdrawal: address put back until it ends");
                Ok(false)
            }
        }
    }

    /// A node that is going away (cordoned for a drain, excluded from external load balancers,
    /// tainted as shut down or to be removed, being deleted) drains: peers elect without it and
    /// it keeps each local address until its successor holds it; it rejoins when the node is
    /// back (`docs/agent.md`, "Upgrades and node maintenance").
    fn follow_node(&self) {
        let leaving = self
            .nodes
            .state()
            .into_iter()
            .find(|n| n.name_any() == self.settings.node)
            .and_then(|n| shutdown::node_leaving(&n));
        let changed = {
            let mut shared = self.shared();
            let changed = shared.leaving != leaving;
            if changed {
                match &leaving {
                    Some(why) => tracing::info!(%why, "this node is going away: handing local addresses over"),
                    None => tracing::info!("this node is back: taking part in elections again"),
                }
                shared.leaving = leaving;
            }
            shared.draining = shared.drain_started.is_some() || shared.leaving.is_some();
            changed
        };
        if changed {
            self.kick_lease.notify_one();
        }
    }

    /// What the API shows at a SIGTERM, read fresh (each call bounded), and what it means under
    /// `--shutdown-mode` ([`shutdown::judge`]).
    async fn shutdown_verdict(&self) -> Verdict {
        let mode = self.settings.shutdown_mode;
        if mode != ShutdownMode::Auto {
            return shutdown::judge(mode, &Evidence::default());
        }
        let evidence = self.gather_evidence().await;
        shutdown::judge(mode, &evidence)
    }

    async fn gather_evidence(&self) -> Evidence {
        use k8s_openapi::api::{
            apps::v1::{ControllerRevision, DaemonSet},
            core::v1::Pod,
        };
        let mut evidence = Evidence::default();
        if self.settings.pod_name.is_empty() {
            evidence.problem = Some("this agent's Pod is not known (no --pod-name / POD_NAME)".to_owned());
            return evidence;
        }
        let timeout = self.settings.api_timeout.min(Duration::from_secs(2));
        let ns = self.settings.namespace.as_str();
        async fn bounded<T>(
            timeout: Duration,
            what: String,
            call: impl Future<Output = Result<T, kube::Error>>,
        ) -> Result<T, String> {
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(error)) => Err(format!("cannot read {what}: {error}")),
                Err(_) => Err(format!("cannot read {what}: no answer within {timeout:?}")),
            }
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let (pod, node) = futures::join!(
            bounded(timeout, format!("Pod {ns}/{}", self.settings.pod_name), pods.get_opt(&self.settings.pod_name)),
            bounded(timeout, format!("Node {}", self.settings.node), nodes.get_opt(&self.settings.node)),
        );
        let (pod, node) = match (pod, node) {
            (Ok(pod), Ok(node)) => (pod, node),
            (Err(problem), _) | (_, Err(problem)) => {
                evidence.problem = Some(problem);
                return evidence;
            }
        };
        evidence.node = node;
        let owner = pod
            .as_ref()
            .and_then(|p| p.metadata.owner_references.as_ref())
            .and_then(|o| o.iter().find(|o| o.controller == Some(true) && o.kind == "DaemonSet"))
            .map(|o| o.name.clone());
        evidence.pod = pod;
        if let Some(owner) = owner {
            let sets: Api<DaemonSet> = Api::namespaced(self.client.clone(), ns);
            let revisions: Api<ControllerRevision> = Api::namespaced(self.client.clone(), ns);
            let ds = match bounded(timeout, format!("DaemonSet {ns}/{owner}"), sets.get_opt(&owner)).await {
                Ok(ds) => ds,
                Err(problem) => {
                    evidence.problem = Some(problem);
                    return evidence;
                }
            };
            if let Some(labels) =
                ds.as_ref().and_then(|d| d.spec.as_ref()).and_then(|s| s.selector.match_labels.as_ref())
            {
                let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let params = kube::api::ListParams::default().labels(&selector.join(","));
                match bounded(
                    timeout,
                    format!("the ControllerRevisions of DaemonSet {ns}/{owner}"),
                    revisions.list(&params),
                )
                .await
                {
                    Ok(list) => evidence.revisions = list.items,
                    Err(problem) => {
                        evidence.problem = Some(problem);
                        return evidence;
                    }
                }
            }
            evidence.daemonset = ds;
        }
        evidence
    }

    /// Replaced in place: writes the Lease one last time, valid for `--successor-timeout`, and
    /// keeps every address in the kernel for the new agent on this node. Returns `false` (hand
    /// over instead) when that write fails: peers would otherwise take the addresses over at
    /// the Lease's expiry while this node still holds them.
    async fn keep_for_successor(&self, why: &str) -> bool {
        let guard = self.lease_write.lock().await;
        let (config, announcing, bgp) = {
            let mut shared = self.shared();
            shared.kept_for_successor = true;
            (shared.config.clone(), shared.announcing.clone(), shared.bgp.clone())
        };
        let node_uid =
            self.nodes.state().into_iter().find(|n| n.name_any() == self.settings.node).and_then(|n| n.uid());
        let content = LeaseContent { subnets: self.subnets(&config).await, announcing, draining: false, node_uid, bgp };
        let settings = LeaseSettings { duration: self.settings.successor_timeout, ..self.lease_settings() };
        let written = lease::renew(&self.client, &settings, &content).await;
        drop(guard);
        match written {
            Ok(()) => {
                tracing::info!(%why, successor_timeout = ?self.settings.successor_timeout, "shutting down: keeping the addresses and the Lease for the successor on this node");
                true
            }
            Err(error) => {
                tracing::warn!(%why, %error, "cannot write the Lease for the successor; handing the addresses over instead");
                self.shared().kept_for_successor = false;
                self.kick_lease.notify_one();
                false
            }
        }
    }

    /// Stops the GARP/NA bursts of held addresses (the addresses stay).
    async fn stop_bursts(&self) {
        let state = self.state.lock().await;
        for burst in state.bursts.values() {
            burst.stop();
        }
        tracing::info!(kept = state.timers.held.len(), "exiting with the addresses in place");
    }

    /// Graceful handover: mark the Lease draining and keep passing until no local address is
    /// left or the handover timeout passes.
    async fn hand_over(&self) {
        let started = Instant::now();
        {
            let mut shared = self.shared();
            shared.draining = true;
            shared.drain_started = Some(started);
        }
        self.kick_lease.notify_one();
        tracing::info!(timeout = ?self.settings.handover_timeout, "draining: handing local addresses over");
        loop {
            let local_left = self.state.lock().await.timers.held.values().filter(|h| h.kind == Kind::Local).count();
            if local_left == 0 {
                tracing::info!(elapsed = ?started.elapsed(), "handover complete");
                return;
            }
            if started.elapsed() > self.settings.handover_timeout + Duration::from_millis(200) {
                tracing::warn!(local_left, "handover timed out; withdrawing anyway");
                return;
            }
            self.queue.add(Work::Pass);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Removes every address this node holds (at exit).
    async fn withdraw_all(&self) {
        let mut state = self.state.lock().await;
        let held = std::mem::take(&mut state.timers.held);
        for (_, burst) in state.bursts.drain() {
            burst.stop();
        }
        let mut withdrawn = BTreeSet::new();
        for (ip, h) in held {
            match self.mgr.delete(h.spec.link.clone(), ip).await {
                Ok(_) => {
                    withdrawn.insert(ip);
                }
                Err(error) => tracing::warn!(%ip, %error, "cannot withdraw address at exit"),
            }
        }
        tracing::info!(count = withdrawn.len(), "withdrew every address at exit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_judged_from_the_last_renewal_or_the_end_of_the_last_failure_after_it() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(quiet_since(t0, None), t0);
        assert_eq!(quiet_since(t0, Some(later)), later);
        // A failure before the last successful renewal belongs to an earlier outage.
        assert_eq!(quiet_since(later, Some(t0)), later);
    }

    fn cached(value: serde_json::Value) -> CachedService {
        CachedService::from(serde_json::from_value::<Service>(value).unwrap())
    }

    #[test]
    fn a_service_causes_a_pass_only_when_what_the_decision_reads_changes() {
        let base = serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7",
                "annotations": {"purelb.io/pool-type": "local", "purelb.io/allocated-from": "default"}},
            "spec": {"externalTrafficPolicy": "Local"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ipMode": "VIP"}]}}
        });
        let key = service_key(&cached(base.clone()));
        assert!(!key.is_empty());
        let with = |pointer: &str, value: serde_json::Value| {
            let mut changed = base.clone();
            *changed.pointer_mut(pointer).unwrap() = value;
            service_key(&cached(changed))
        };
        // The allocator's announcing annotations, a new resourceVersion, the ipMode: no pass.
        assert_eq!(with("/metadata/resourceVersion", "8".into()), key);
        assert_eq!(
            with(
                "/metadata/annotations",
                serde_json::json!({"purelb.io/pool-type": "local",
                "purelb.io/allocated-from": "default", "purelb.io/announcing-IPv4": "n1,eth0"})
            ),
            key
        );
        assert_eq!(with("/status/loadBalancer/ingress/0/ipMode", "Proxy".into()), key);
        // The address, the group, the pool type, the traffic policy: a pass.
        assert_ne!(with("/status/loadBalancer/ingress/0/ip", "192.0.2.11".into()), key);
        assert_ne!(with("/metadata/annotations/purelb.io~1allocated-from", "other".into()), key);
        assert_ne!(with("/metadata/annotations/purelb.io~1pool-type", "remote".into()), key);
        assert_ne!(with("/spec/externalTrafficPolicy", "Cluster".into()), key);
        // Not PureLB's, or no address yet: irrelevant (empty).
        assert_eq!(with("/metadata/annotations/purelb.io~1pool-type", "other".into()), "");
        assert_eq!(with("/status/loadBalancer/ingress", serde_json::json!([])), "");
    }

    #[test]
    fn a_remembered_key_tells_empty_from_relevant_and_a_change_from_none() {
        assert!(remembered("").0);
        assert!(!remembered("a|b").0);
        assert_eq!(remembered("a|b"), remembered("a|b"));
        assert_ne!(remembered("a|b"), remembered("a|c"));
    }
}
