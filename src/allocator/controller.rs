//! The allocator's IO: watch caches for Services, ServiceGroups and the agents' Leases, a work
//! queue, one worker that turns the caches into decisions ([`super::table::Allocator`]) and
//! writes the results (Service status and annotations, ServiceGroup status, Events, metrics).
//! Only the leader writes; every replica keeps its caches warm. Entry point: [`run`].
//!
//! Level-triggered: each pass compares what the table says a Service should show with what the
//! cached object shows and writes only the difference. Deleted Services are found by
//! comparing the table with the cache (a sweep), not by trusting delete events alone.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Service},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        events::{EventType, Reporter},
        reflector::{self, Store},
        watcher::{self, Event},
    },
};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    conditions,
    groups::GroupSet,
    request::{ServiceKey, ServiceRequest},
    table::{Allocator, Decision, Failure, Holding},
};
use crate::{
    api::{
        PoolType, ServiceGroup,
        contract::{self, reasons},
    },
    core::{election, ipam::Family, queue::WorkQueue},
    telemetry::{Readiness, catalog, scoped},
};

/// What the worker does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// Decide one Service.
    Service(ServiceKey),
    /// ServiceGroups changed: rebuild the groups, re-decide everything.
    Groups,
    /// Agents' announcements changed for these addresses.
    Announcers,
    /// Release what deleted Services held.
    Sweep,
    /// Write one ServiceGroup's status (coalesced: queued with a short delay).
    GroupStatus(String),
    /// Validate one BGPPeer and write its status.
    PeerStatus(String),
}

/// Workers deciding and writing in parallel (decisions are serialised by the table's lock;
/// the queue never hands one Service to two workers). Each waits on two writes per Service:
/// 16 keep a 2-core API server busier than 8 did in a 50,000-Service burst (64–75 % of the
/// single-client write rate in Services per second against 45–63 %, BENCHMARKS.md).
const WORKERS: usize = 16;
/// Delay that coalesces ServiceGroup status writes after allocations.
const GROUP_STATUS_DELAY: Duration = Duration::from_millis(300);

/// Settings of the allocator.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Install namespace (ServiceGroups, Leases).
    pub namespace: String,
    /// `spec.loadBalancerClass` handled.
    pub lb_class: String,
    /// Handle Services without a class.
    pub default_announcer: bool,
    /// Pod name, for Event `reportingInstance`.
    pub instance: String,
    /// Timeout of every API call.
    pub api_timeout: Duration,
}

/// Who may write: the leader election's view, consulted right before every write
/// ([`crate::leader::Leadership`]: a guard per write, bounded by the Lease's deadline, and the
/// takeover fence).
#[derive(Clone, Debug)]
pub struct WriteGate {
    leadership: crate::leader::Leadership,
}

impl WriteGate {
    /// A gate that is always open (`--leader-elect=false`).
    #[must_use]
    pub fn always() -> Self {
        Self::from(crate::leader::Leadership::always())
    }

    /// Whether this replica may start a write now.
    #[must_use]
    pub fn may_write(&self) -> bool {
        self.leadership.is_leader()
    }

    fn guard(&self) -> Option<crate::leader::WriteGuard> {
        self.leadership.guard()
    }

    fn fenced_until(&self) -> Option<tokio::time::Instant> {
        self.leadership.fenced_until()
    }

    fn changes(&self) -> watch::Receiver<bool> {
        self.leadership.subscribe()
    }
}

impl From<crate::leader::Leadership> for WriteGate {
    /// Writes are allowed exactly while the leader election says so.
    fn from(leadership: crate::leader::Leadership) -> Self {
        Self { leadership }
    }
}

/// Errors of the allocator's IO.
#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    /// A write failed.
    #[error("cannot {action} {object}: {source}")]
    Write { action: &'static str, object: String, source: kube::Error },
    /// A write timed out.
    #[error("{action} {object} timed out after {timeout:?}")]
    Timeout { action: &'static str, object: String, timeout: Duration },
    /// Leadership was lost before a write.
    #[error("not the leader any more; {object} was not written")]
    NotLeader { object: String },
    /// The object changed since the cache showed it (409 Conflict on the resourceVersion
    /// precondition): nothing was written; the work is done again on the newer version.
    #[error("{object} changed since it was read; recomputing from the newer version")]
    Stale { object: String },
    /// A watch cache stopped.
    #[error("the {0} watch stopped")]
    WatchStopped(&'static str),
}

mod netbox;

struct Worker {
    client: Client,
    settings: Settings,
    services: Store<Service>,
    groups: Store<ServiceGroup>,
    leases: Store<Lease>,
    /// BGPPeers of the install namespace (validated, status written; not waited for: a
    /// cluster without the BGPPeer CRD allocates as before).
    peers: Store<crate::api::BGPPeer>,
    queue: WorkQueue<Work>,
    gate: WriteGate,
    recorder: crate::events::Publisher,
    ip_mode: bool,
    state: std::sync::Mutex<State>,
    /// NetBox groups: clients, releases, checks of adopted addresses.
    netbox: netbox::Link,
}

/// What the workers share and change; the lock is never held across an await.
#[derive(Default)]
struct State {
    table: Allocator,
    /// Services whose last pass failed (retried when capacity may have changed).
    failed: HashSet<ServiceKey>,
    /// Last message of each transition-only Event per object, to publish on change only.
    last_note: HashMap<(String, &'static str), String>,
    /// Holders per address, from the node Leases.
    holders: HashMap<IpAddr, Vec<(String, String)>>,
    /// The live members of the election (for the `purelb.io/Announced` condition).
    members: election::Members,
    /// The table has been rebuilt since this replica took the lead.
    ready: bool,
}

/// A watch cache of `api` that keeps each object as `keep` makes it and queues `map`'s work for
/// each change.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    queue: WorkQueue<Work>,
    keep: fn(K) -> K,
    map: fn(&K) -> Option<Work>,
    name: &'static str,
) -> Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    crate::watch::spawn_mapped_reflector(api, config, name, keep, move |event| match event {
        Event::Apply(o) | Event::Delete(o) | Event::InitApply(o) => {
            if let Some(work) = map(o) {
                queue.add(work);
            }
        }
        Event::InitDone => queue.add(Work::Sweep),
        Event::Init => {}
    })
}

/// `externalTrafficPolicy: Local` on a routed address whose group aggregates it into a wider
/// prefix: every node holding any address of that prefix advertises all of it, so routers also
/// send this Service's traffic to nodes without a local endpoint.
fn wide_aggregation_warning(groups: &super::groups::GroupSet, holding: &super::table::Holding) -> Option<String> {
    let group = groups.valid.get(&holding.group)?;
    if group.pool_type == PoolType::Local {
        return None;
    }
    holding.addresses.iter().find_map(|ip| {
        let family = Family::of(*ip);
        let aggregation = match &group.netbox {
            Some(n) => crate::core::ipam::parse_aggregation("spec.netbox.aggregation", n.aggregation.as_deref(), family, family.bits()).ok()?,
            None => group.pools.all().find(|r| r.range.contains(*ip))?.aggregation,
        };
        (aggregation < family.bits()).then(|| {
            format!(
                "externalTrafficPolicy: Local with {ip}/{aggregation} (ServiceGroup {} aggregation): every node holding an address of that prefix advertises all of it, so traffic also reaches nodes without a local endpoint; use aggregation /{} for Local Services",
                group.name,
                family.bits()
            )
        })
    })
}

/// Runs the allocator until `shutdown` resolves, with the default NetBox settings.
///
/// # Errors
///
/// A watch cache that never becomes ready.
pub async fn run(
    client: Client,
    settings: Settings,
    gate: WriteGate,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AllocatorError> {
    run_with_netbox(client, settings, super::netbox::NetboxSettings::default(), gate, readiness, shutdown).await
}

/// Runs the allocator until `shutdown` resolves; netbox groups use `netbox`.
///
/// # Errors
///
/// A watch cache that never becomes ready.
pub async fn run_with_netbox(
    client: Client,
    settings: Settings,
    netbox: super::netbox::NetboxSettings,
    gate: WriteGate,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AllocatorError> {
    let queue: WorkQueue<Work> = WorkQueue::new("allocator");
    let services = reflect(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        queue.clone(),
        super::request::cached,
        |s| Some(Work::Service(ServiceKey::of_service(s))),
        "services",
    );
    let groups = reflect(
        Api::<ServiceGroup>::all(client.clone()),
        watcher::Config::default(),
        queue.clone(),
        std::convert::identity,
        |_| Some(Work::Groups),
        "servicegroups",
    );
    let leases = reflect(
        Api::<Lease>::namespaced(client.clone(), &settings.namespace),
        watcher::Config::default().labels(&format!(
            "{}={}",
            contract::LABEL_COMPONENT_AGENT.0,
            contract::LABEL_COMPONENT_AGENT.1
        )),
        queue.clone(),
        std::convert::identity,
        |_| Some(Work::Announcers),
        "leases",
    );
    let peers = reflect(
        Api::<crate::api::BGPPeer>::namespaced(client.clone(), &settings.namespace),
        watcher::Config::default(),
        queue.clone(),
        std::convert::identity,
        |p| Some(Work::PeerStatus(p.name_any())),
        "bgppeers",
    );
    for (ready, name) in [
        (services.wait_until_ready().await.is_ok(), "services"),
        (groups.wait_until_ready().await.is_ok(), "servicegroups"),
        (leases.wait_until_ready().await.is_ok(), "leases"),
    ] {
        if !ready {
            return Err(AllocatorError::WatchStopped(name));
        }
    }
    let ip_mode = match client.apiserver_version().await {
        Ok(info) => {
            info.major.parse::<u32>().is_ok_and(|m| m > 1)
                // LoadBalancerIPMode is on by default from 1.30; a 1.29 server (alpha, off by
                // default) drops the field, and asking for it again would rewrite the status on
                // every reconcile.
                || info.minor.trim_end_matches('+').parse::<u32>().is_ok_and(|m| m >= 30)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the API server version; not setting ipMode");
            false
        }
    };
    let recorder = crate::events::Publisher::start(
        client.clone(),
        Reporter { controller: contract::MANAGER_ALLOCATOR.to_owned(), instance: Some(settings.instance.clone()) },
        settings.api_timeout,
    );
    let netbox = netbox::Link::new(client.clone(), &settings.namespace, netbox);
    let worker = Arc::new(Worker {
        client,
        settings,
        services,
        groups,
        leases,
        peers,
        queue: queue.clone(),
        gate: gate.clone(),
        recorder,
        ip_mode,
        state: std::sync::Mutex::new(State::default()),
        netbox,
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(worker.clone().netbox_release_loop());
    let mut leading = false;
    for _ in 0..WORKERS {
        let worker = worker.clone();
        tasks.spawn(async move {
            while let Some(claim) = worker.queue.get().await {
                if !worker.gate.may_write() {
                    // A standby drops work: taking the lead rebuilds and queues everything.
                    claim.done();
                    continue;
                }
                if !worker.lock().ready {
                    // The lead was just taken and the table is being rebuilt: come back after.
                    worker.queue.add_after(claim.item().clone(), Duration::from_millis(50));
                    claim.done();
                    continue;
                }
                match worker.process(claim.item().clone()).await {
                    Ok(()) => claim.succeeded(),
                    Err(error @ AllocatorError::Stale { .. }) => {
                        // Optimistic concurrency: the watch brings the newer version at once.
                        let delay = claim.retry_with_backoff();
                        tracing::debug!(%error, ?delay, "will retry");
                    }
                    Err(error) => {
                        let delay = claim.retry_with_backoff();
                        tracing::warn!(%error, ?delay, "will retry");
                    }
                }
            }
        });
    }
    let ticker_queue = queue.clone();
    tasks.spawn(async move {
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        loop {
            sweep.tick().await;
            ticker_queue.add(Work::Sweep);
        }
    });
    readiness.set_ready(true);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut changes = gate.changes();
    loop {
        if !leading && gate.may_write() {
            if let Some(until) = gate.fenced_until() {
                // Taken over from a leader that stopped renewing: its last writes may still
                // land. Decide nothing (the table is rebuilt from the caches) before then.
                tracing::info!(wait = ?until.saturating_duration_since(tokio::time::Instant::now()), "leading after a takeover: waiting out the old leader's write window before allocating");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep_until(until) => {}
                }
                continue;
            }
            // Before allocating anything: rebuild the table from the cluster.
            worker.rebuild();
            leading = true;
            metrics::gauge!(catalog::ALLOCATOR_IS_LEADER).set(1.0);
            tracing::info!(services = worker.services.state().len(), "leading: allocation table rebuilt");
        }
        tokio::select! {
            () = &mut shutdown => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                if !*changes.borrow() && leading {
                    leading = false;
                    worker.lock().ready = false;
                    metrics::gauge!(catalog::ALLOCATOR_IS_LEADER).set(0.0);
                    tracing::info!("standing by: not the leader");
                }
            }
        }
    }
    worker.lock().ready = false;
    worker.netbox.releases.shutdown();
    queue.shutdown_and_wait().await;
    tasks.abort_all();
    Ok(())
}

/// What a leader's patch writes.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// The object (merge patch).
    Object,
    /// A custom resource's status (merge patch: CRDs take no strategic merge patches).
    Status,
    /// A Service's status (strategic merge patch: its conditions merge by `type`).
    ServiceStatus,
}

/// Writes and Events a decision calls for, computed under the lock and carried out after it.
#[derive(Default)]
struct Plan {
    ensure: Option<Holding>,
    clear: bool,
    events: Vec<(EventType, &'static str, String)>,
    failure: Option<Failure>,
    group_status: Vec<String>,
    retry_failed: bool,
    announcing: [Option<String>; 2],
    /// The Service's conditions (`api.md` §9); empty when PureLB does not handle it.
    conditions: Vec<conditions::Wanted>,
}

impl Worker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn request(&self, svc: &Service) -> ServiceRequest {
        ServiceRequest::from_service(svc, &self.settings.lb_class, self.settings.default_announcer)
    }

    /// Rebuilds the table from the caches (oldest Services first, so the older one keeps an
    /// address two Services claim) and queues every Service.
    fn rebuild(&self) {
        let mut table =
            Allocator::new(GroupSet::build(self.groups.state().iter().map(AsRef::as_ref), &self.settings.namespace));
        let mut services = self.services.state();
        services.sort_by_key(|s| super::request::age_key(s));
        for svc in &services {
            let req = self.request(svc);
            if let Err(failure) = table.adopt(&req) {
                tracing::warn!(service = %req.key, message = %failure.message, "cannot keep the address this Service shows; it will get another");
            }
        }
        {
            let mut state = self.lock();
            *state = State { table, ready: true, ..State::default() };
        }
        // Adopted NetBox addresses are checked against NetBox again.
        self.netbox.forget_checks();
        self.refresh_holders();
        for svc in &services {
            self.queue.add(Work::Service(ServiceKey::of_service(svc)));
        }
        self.queue.add(Work::Groups);
        for peer in self.peers.state() {
            self.queue.add(Work::PeerStatus(peer.name_any()));
        }
    }

    async fn process(&self, work: Work) -> Result<(), AllocatorError> {
        let result = self.process_work(work).await;
        // Give back to NetBox what this work released from netbox groups.
        self.netbox_flush();
        result
    }

    async fn process_work(&self, work: Work) -> Result<(), AllocatorError> {
        match work {
            Work::Service(key) => self.service(&key).await,
            Work::Groups => self.groups_changed().await,
            Work::GroupStatus(name) => self.write_group_status(&name).await,
            Work::PeerStatus(name) => self.write_peer_status(&name).await,
            Work::Announcers => {
                for key in self.refresh_holders() {
                    self.queue.add(Work::Service(key));
                }
                Ok(())
            }
            Work::Sweep => {
                let existing: HashSet<ServiceKey> =
                    self.services.state().iter().map(|s| ServiceKey::of_service(s)).collect();
                let gone = {
                    let mut state = self.lock();
                    let gone = state.table.forget_missing(&existing);
                    if !gone.is_empty() {
                        retry_failed(&mut state, &self.queue);
                    }
                    gone
                };
                for (key, holding) in gone {
                    tracing::info!(service = %key, addresses = %join(&holding.addresses), "released: the Service is gone");
                    self.pool_metrics(&holding.group);
                    self.queue.add_after(Work::GroupStatus(holding.group.clone()), GROUP_STATUS_DELAY);
                }
                Ok(())
            }
        }
    }

    /// Re-reads `purelb.io/announcing` from the node Leases that are live; returns the Services
    /// whose announcers changed. A Lease that expires produces no event, so this runs again
    /// when the next live Lease would expire: a dead node leaves the annotations within its
    /// lease duration (and the queue's delay).
    fn refresh_holders(&self) -> Vec<ServiceKey> {
        let mut holders: HashMap<IpAddr, Vec<(String, String)>> = HashMap::new();
        let leases = self.leases.state();
        let now = jiff::Timestamp::now();
        let live = election::Members::from_leases(leases.iter().map(AsRef::as_ref), now);
        if let Some(expiry) = live.next_expiry()
            && let Ok(wait) = std::time::Duration::try_from(expiry.duration_since(now))
        {
            self.queue.add_after(Work::Announcers, wait + std::time::Duration::from_millis(100));
        }
        for lease in leases {
            let name = lease.name_any();
            let Some(node) = name.strip_prefix(contract::NODE_LEASE_PREFIX) else { continue };
            if live.get(node).is_none() {
                continue;
            }
            let value = lease.annotations().get(contract::LEASE_ANNOTATION_ANNOUNCING).cloned().unwrap_or_default();
            for held in election::parse_announcing(&value) {
                holders
                    .entry(held.address)
                    .or_default()
                    .push((node.to_owned(), held.interface.clone().unwrap_or_default()));
            }
        }
        for list in holders.values_mut() {
            list.sort();
        }
        let mut state = self.lock();
        let mut changed: HashSet<IpAddr> =
            holders.iter().filter(|(ip, list)| state.holders.get(*ip) != Some(*list)).map(|(ip, _)| *ip).collect();
        changed.extend(state.holders.keys().filter(|ip| !holders.contains_key(*ip)));
        state.holders = holders;
        // Who may announce changed (a node came, went, drains or has other subnets): every
        // Service's Announced condition may have another reason.
        let shape = |m: &election::Members| -> Vec<(String, Vec<crate::core::ipam::Subnet>, bool)> {
            m.iter().map(|m| (m.node.clone(), m.subnets.clone(), m.draining)).collect()
        };
        let members_changed = shape(&state.members) != shape(&live);
        state.members = live;
        if members_changed {
            return state.table.holders().map(|(k, _)| k.clone()).collect();
        }
        changed.into_iter().flat_map(|ip| state.table.users_of(ip)).collect()
    }

    async fn groups_changed(&self) -> Result<(), AllocatorError> {
        let set = GroupSet::build(self.groups.state().iter().map(AsRef::as_ref), &self.settings.namespace);
        let names: Vec<String> = set.valid.keys().chain(set.invalid.keys()).cloned().collect();
        self.lock().table.set_groups(set);
        // The series of deleted groups go (unknown groups' rejections count under pool="").
        for family in [catalog::ADDRESS_POOL_SIZE, catalog::ADDRESS_POOL_IN_USE, catalog::ADDRESS_POOL_REJECTED] {
            scoped::retain(family, |labels| labels[0].1.is_empty() || names.contains(&labels[0].1));
        }
        for svc in self.services.state() {
            self.queue.add(Work::Service(ServiceKey::of_service(&svc)));
        }
        for name in names {
            self.pool_metrics(&name);
            self.write_group_status(&name).await?;
        }
        Ok(())
    }

    /// Decides under the lock what to write for one Service.
    fn plan(&self, svc: &Service, req: &ServiceRequest) -> Plan {
        let mut plan = Plan::default();
        let key = req.key.to_string();
        let mut state = self.lock();
        let note = |state: &mut State, plan: &mut Plan, t: EventType, reason: &'static str, msg: String| {
            if state.last_note.get(&(key.clone(), reason)) != Some(&msg) {
                state.last_note.insert((key.clone(), reason), msg.clone());
                plan.events.push((t, reason, msg));
            }
        };
        if req.deprecated_lb_ip && req.handled {
            note(
                &mut state,
                &mut plan,
                EventType::Warning,
                reasons::DEPRECATION_WARNING,
                "spec.loadBalancerIP is deprecated: use the purelb.io/addresses annotation instead".to_owned(),
            );
        }
        for error in req.errors.iter().filter(|e| matches!(e, super::request::RequestError::SharingKey { .. })) {
            note(&mut state, &mut plan, EventType::Warning, reasons::CONFIGURATION_WARNING, error.to_string());
        }
        let decision = state.table.decide(req, &self.settings.namespace);
        if req.local_traffic
            && let Decision::Keep { holding, .. } | Decision::Changed { holding, .. } = &decision
            && let Some(w) = wide_aggregation_warning(state.table.groups(), holding)
        {
            note(&mut state, &mut plan, EventType::Warning, reasons::CONFIGURATION_WARNING, w);
        }
        match decision {
            Decision::NotHandled => plan.clear = req.allocated_by_us,
            Decision::Released(holding) => {
                plan.clear = true;
                plan.retry_failed = true;
                plan.group_status.push(holding.group.clone());
                plan.events.push((
                    EventType::Normal,
                    reasons::ADDRESS_RELEASED,
                    format!("released {} back to ServiceGroup {}", join(&holding.addresses), holding.group),
                ));
            }
            Decision::Keep { holding, warnings } => {
                state.failed.remove(&req.key);
                for w in warnings {
                    note(&mut state, &mut plan, EventType::Warning, reasons::CONFIGURATION_WARNING, w);
                }
                plan.ensure = Some(holding);
            }
            Decision::Changed { holding, assigned, released } => {
                state.failed.remove(&req.key);
                state.last_note.remove(&(key.clone(), reasons::ALLOCATION_FAILED));
                if !released.is_empty() {
                    plan.retry_failed = true;
                    plan.events.push((
                        EventType::Normal,
                        reasons::ADDRESS_RELEASED,
                        format!("released {} back to its ServiceGroup", join(&released)),
                    ));
                }
                plan.events.push((
                    EventType::Normal,
                    reasons::ADDRESS_ASSIGNED,
                    format!("assigned {} from ServiceGroup {}", join(&assigned), holding.group),
                ));
                plan.group_status.push(holding.group.clone());
                plan.ensure = Some(holding);
            }
            Decision::Failed { failure, kept } => {
                state.failed.insert(req.key.clone());
                let msg = match &kept {
                    Some(h) => format!("{}; the Service keeps {}", failure.message, join(&h.addresses)),
                    None => failure.message.clone(),
                };
                note(&mut state, &mut plan, EventType::Warning, reasons::ALLOCATION_FAILED, msg);
                plan.failure = Some(failure);
                plan.ensure = kept;
            }
        }
        if plan.retry_failed {
            retry_failed(&mut state, &self.queue);
            state.failed.remove(&req.key);
        }
        if let Some(h) = &plan.ensure {
            plan.announcing =
                [announcing_value(&state.holders, h, Family::V4), announcing_value(&state.holders, h, Family::V6)];
        }
        if req.handled && !plan.clear {
            let allocated = conditions::allocated(plan.ensure.as_ref(), plan.failure.as_ref());
            let announced = match &plan.ensure {
                Some(h) => conditions::announced(h, &state.members, req.local_traffic),
                None => conditions::Wanted {
                    kind: conditions::ANNOUNCED,
                    status: false,
                    reason: conditions::reason::PENDING,
                    message: "the Service has no address yet (see the purelb.io/Allocated condition)".to_owned(),
                },
            };
            plan.conditions = vec![allocated, announced];
        }
        let _ = svc;
        plan
    }

    async fn service(&self, key: &ServiceKey) -> Result<(), AllocatorError> {
        let object = self.services.get(&reflector::ObjectRef::new(&key.name).within(&key.namespace));
        let Some(svc) = object else {
            let released = {
                let mut state = self.lock();
                state.failed.remove(key);
                let released = state.table.forget(key);
                // Also when it held nothing any more: what it gave up last may be freed only now.
                retry_failed(&mut state, &self.queue);
                released
            };
            if let Some(holding) = released {
                tracing::info!(service = %key, addresses = %join(&holding.addresses), "released: the Service is gone");
                self.pool_metrics(&holding.group);
                self.queue.add_after(Work::GroupStatus(holding.group), GROUP_STATUS_DELAY);
            }
            return Ok(());
        };
        let req = self.request(&svc);
        let reserved = self.netbox_reserve(&req).await;
        let plan = self.plan(&svc, &req);
        self.netbox_settle(&svc, &req, reserved, plan.failure.as_ref()).await;
        if let Some(failure) = &plan.failure {
            // Only pools that exist get a series of their own: a Service can name any group.
            let pool = failure.group.clone().filter(|g| self.lock().table.groups().contains(g)).unwrap_or_default();
            scoped::increment(
                catalog::ADDRESS_POOL_REJECTED,
                vec![("pool", pool), ("reason", failure.reason.label().to_owned())],
                1,
            );
        }
        for group in &plan.group_status {
            self.pool_metrics(group);
            self.queue.add_after(Work::GroupStatus(group.clone()), GROUP_STATUS_DELAY);
        }
        let result = match (&plan.ensure, plan.clear) {
            (Some(holding), _) => self.ensure_service(&svc, holding, &plan.announcing, &plan.conditions).await,
            (None, true) => self.clear_service(&svc).await,
            (None, false) => self.write_status(&svc, svc.resource_version(), None, &plan.conditions).await,
        };
        if result.is_ok() {
            // The status no longer shows what the Service gave up: only now may others get it.
            let mut state = self.lock();
            if state.table.confirm_released(key) {
                retry_failed(&mut state, &self.queue);
            }
        }
        self.publish_in_background(svc.object_ref(&()), plan.events);
        result
    }

    /// Makes the Service show `holding`: annotations and status, written only where they differ.
    async fn ensure_service(
        &self,
        svc: &Service,
        holding: &Holding,
        announcing: &[Option<String>; 2],
        wanted: &[conditions::Wanted],
    ) -> Result<(), AllocatorError> {
        let pool_type = match holding.pool_type {
            PoolType::Local => "local",
            PoolType::Remote | PoolType::Netbox => "remote",
        };
        let mut want: BTreeMap<&str, Option<String>> = BTreeMap::new();
        want.insert(contract::ANNOTATION_ALLOCATED_BY, Some(contract::ALLOCATED_BY_VALUE.to_owned()));
        want.insert(contract::ANNOTATION_ALLOCATED_FROM, Some(holding.group.clone()));
        want.insert(contract::ANNOTATION_POOL_TYPE, Some(pool_type.to_owned()));
        want.insert(contract::ANNOTATION_ANNOUNCING_IPV4, announcing[0].clone());
        want.insert(contract::ANNOTATION_ANNOUNCING_IPV6, announcing[1].clone());
        let have = svc.annotations();
        let patch: serde_json::Map<String, Value> = want
            .iter()
            .filter(|(k, v)| have.get(**k) != v.as_ref())
            .map(|(k, v)| ((*k).to_owned(), v.clone().map_or(Value::Null, Value::String)))
            .collect();
        let ingress: Vec<Value> = holding
            .addresses
            .iter()
            .map(|ip| {
                if self.ip_mode {
                    json!({"ip": ip.to_string(), "ipMode": "VIP"})
                } else {
                    json!({"ip": ip.to_string()})
                }
            })
            .collect();
        let current = serde_json::to_value(
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.clone())
                .unwrap_or_default(),
        )
        .unwrap_or(Value::Null);
        let status_differs = current != Value::Array(ingress.clone());
        // One after the other: each write is conditional on the resourceVersion it was computed
        // from, and the first changes it.
        let mut version = svc.resource_version();
        // The agents read an address's kind and group from the annotations, the address from
        // the status: two writes, so a watcher sees every revision between them. When the
        // group (or the pool type) changes with the addresses, the old addresses go first, so
        // that no revision pairs them with the new group: a local address under
        // `pool-type: remote` was put on every node's dummy interface by the soak (docs/design.md,
        // "Allocator").
        let regrouped = [contract::ANNOTATION_ALLOCATED_FROM, contract::ANNOTATION_POOL_TYPE]
            .iter()
            .any(|k| patch.contains_key(*k) && have.contains_key(*k));
        if regrouped && status_differs && current.as_array().is_some_and(|a| !a.is_empty()) {
            let body = json!({"status": {"loadBalancer": {"ingress": null}}});
            version = Some(self.write(svc, version, true, body).await?);
        }
        if !patch.is_empty() {
            version = Some(self.write(svc, version, false, json!({"metadata": {"annotations": patch}})).await?);
        }
        self.write_status(svc, version, status_differs.then_some(ingress), wanted).await
    }

    /// Writes the Service's status where it differs: the ingress list (`Some`: replaced) and the
    /// conditions that changed, in one strategic merge patch (conditions merge by `type`, so
    /// other controllers' conditions stay; the ingress list is atomic).
    async fn write_status(
        &self,
        svc: &Service,
        version: Option<String>,
        ingress: Option<Vec<Value>>,
        wanted: &[conditions::Wanted],
    ) -> Result<(), AllocatorError> {
        let existing = svc.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
        let now = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now());
        let changed = conditions::changes(existing, wanted, svc.metadata.generation, &now.to_string());
        let mut status = serde_json::Map::new();
        if let Some(ingress) = ingress {
            status.insert("loadBalancer".to_owned(), json!({"ingress": ingress}));
        }
        if !changed.is_empty() {
            status.insert("conditions".to_owned(), Value::Array(changed));
        }
        if !status.is_empty() {
            self.write(svc, version, true, json!({"status": status})).await?;
        }
        Ok(())
    }

    /// Removes what PureLB wrote on a Service it no longer handles.
    async fn clear_service(&self, svc: &Service) -> Result<(), AllocatorError> {
        let have = svc.annotations();
        let ours = [
            contract::ANNOTATION_ALLOCATED_BY,
            contract::ANNOTATION_ALLOCATED_FROM,
            contract::ANNOTATION_POOL_TYPE,
            contract::ANNOTATION_ANNOUNCING_IPV4,
            contract::ANNOTATION_ANNOUNCING_IPV6,
        ];
        let patch: serde_json::Map<String, Value> =
            ours.iter().filter(|k| have.contains_key(**k)).map(|k| ((*k).to_owned(), Value::Null)).collect();
        let had_ours =
            have.get(contract::ANNOTATION_ALLOCATED_BY).map(String::as_str) == Some(contract::ALLOCATED_BY_VALUE);
        let mut version = svc.resource_version();
        if !patch.is_empty() {
            version = Some(self.write(svc, version, false, json!({"metadata": {"annotations": patch}})).await?);
        }
        let has_ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .is_some_and(|i| !i.is_empty());
        let existing = svc.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
        let removals = conditions::removals(existing);
        let mut status = serde_json::Map::new();
        if had_ours && has_ingress {
            status.insert("loadBalancer".to_owned(), json!({"ingress": null}));
        }
        if !removals.is_empty() {
            status.insert("conditions".to_owned(), Value::Array(removals));
        }
        if !status.is_empty() {
            self.write(svc, version, true, json!({"status": status})).await?;
        }
        Ok(())
    }

    /// Patches a Service (its status with `status`) as the leader: only with a write guard,
    /// conditional on `version` (the resourceVersion the patch was computed from: a write based
    /// on a stale read fails with 409 and is recomputed), within the client timeout and the
    /// Lease's deadline. Returns the new resourceVersion.
    async fn write(
        &self,
        svc: &Service,
        version: Option<String>,
        status: bool,
        mut body: Value,
    ) -> Result<String, AllocatorError> {
        let key = ServiceKey::of_service(svc);
        let object = format!("Service {key}{}", if status { " status" } else { "" });
        if let Some(version) = version {
            body["metadata"]["resourceVersion"] = Value::String(version);
        }
        // Only the new resourceVersion is read from the answer: decoding it as metadata skips
        // building the whole Service again (the watch brings it anyway).
        let api: Api<PartialObjectMeta<Service>> = Api::namespaced(self.client.clone(), &key.namespace);
        let action = if status { "update the status of" } else { "update the annotations of" };
        // A Service's status is written with a strategic merge patch: its conditions merge by
        // `type` (a merge patch would replace the whole list, other controllers' entries too).
        let target = if status { Target::ServiceStatus } else { Target::Object };
        let written = self.guarded_patch(&api, &key.name, target, &body, action, object).await?;
        Ok(written.resource_version().unwrap_or_default())
    }

    /// One merge patch by the leader: refused without a [`crate::leader::WriteGuard`]; the
    /// client timeout is the API timeout or the time left until the Lease's deadline, whichever
    /// is shorter (a paused or cut-off leader's write cannot outlive its lease).
    async fn guarded_patch<K>(
        &self,
        api: &Api<K>,
        name: &str,
        target: Target,
        body: &Value,
        action: &'static str,
        object: String,
    ) -> Result<K, AllocatorError>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let Some(guard) = self.gate.guard() else { return Err(AllocatorError::NotLeader { object }) };
        let timeout = guard.deadline().map_or(self.settings.api_timeout, |d| {
            self.settings.api_timeout.min(d.saturating_duration_since(tokio::time::Instant::now()))
        });
        if timeout.is_zero() {
            return Err(AllocatorError::NotLeader { object });
        }
        let pp = PatchParams { field_manager: Some(contract::MANAGER_ALLOCATOR.to_owned()), ..PatchParams::default() };
        let call = async {
            match target {
                Target::Object => api.patch(name, &pp, &Patch::Merge(body)).await,
                Target::Status => api.patch_status(name, &pp, &Patch::Merge(body)).await,
                Target::ServiceStatus => api.patch_status(name, &pp, &Patch::Strategic(body)).await,
            }
        };
        metrics::counter!(catalog::K8S_CLIENT_UPDATES).increment(1);
        let result = tokio::time::timeout(timeout, call).await;
        drop(guard);
        match result {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => Err(AllocatorError::Stale { object }),
            Ok(Err(source)) => {
                metrics::counter!(catalog::K8S_CLIENT_UPDATE_ERRORS).increment(1);
                Err(AllocatorError::Write { action, object, source })
            }
            Err(_) => {
                metrics::counter!(catalog::K8S_CLIENT_UPDATE_ERRORS).increment(1);
                Err(AllocatorError::Timeout { action, object, timeout })
            }
        }
    }

    /// Publishes Events, in order, without holding up the worker (only while leading).
    fn publish_in_background(
        &self,
        reference: k8s_openapi::api::core::v1::ObjectReference,
        events: Vec<crate::events::EventSpec>,
    ) {
        if self.gate.may_write() {
            self.recorder.publish(&reference, events);
        }
    }

    fn pool_metrics(&self, group: &str) {
        let stats = {
            let state = self.lock();
            if !state.table.groups().contains(group) {
                return;
            }
            state.table.stats(group)
        };
        // Every rejection reason of a known pool exists at 0 (rate() sees the first one).
        for reason in super::table::FailReason::ALL {
            scoped::increment(
                catalog::ADDRESS_POOL_REJECTED,
                vec![("pool", group.to_owned()), ("reason", reason.label().to_owned())],
                0,
            );
        }
        for (family, size) in &stats.size {
            scoped::set_gauge(
                catalog::ADDRESS_POOL_SIZE,
                vec![("pool", group.to_owned()), ("family", family.name().to_owned())],
                count_f64(*size),
            );
        }
        for (family, n) in &stats.allocated {
            #[allow(clippy::cast_precision_loss)]
            scoped::set_gauge(
                catalog::ADDRESS_POOL_IN_USE,
                vec![("pool", group.to_owned()), ("family", family.name().to_owned())],
                *n as f64,
            );
        }
    }

    /// Validates a BGPPeer (the checks the agents apply before BIRD sees it) and writes its
    /// `Ready` condition when it differs from what the cache shows; an `Invalid` Warning Event
    /// on a new problem.
    async fn write_peer_status(&self, name: &str) -> Result<(), AllocatorError> {
        let ns = self.settings.namespace.clone();
        let Some(peer) = self.peers.get(&reflector::ObjectRef::new(name).within(&ns)) else { return Ok(()) };
        let generation = peer.metadata.generation;
        let (ready, reason, message) = match crate::bgp::PeerConfig::from_spec(name, &peer.spec) {
            Ok(p) => (
                "True",
                "Valid",
                format!(
                    "{} session to {} (AS {}) from AS {}{}",
                    if p.is_ibgp() { "iBGP" } else { "eBGP" },
                    p.peer_address,
                    p.peer_asn,
                    p.local_asn,
                    if p.bfd.is_some() { ", BFD" } else { "" }
                ),
            ),
            Err(message) => ("False", "Invalid", message),
        };
        let old = peer.status.clone().unwrap_or_default();
        let transition = match old.conditions.iter().find(|c| c.type_ == "Ready") {
            Some(c) if c.status == ready && c.reason == reason && c.message == message => {
                c.last_transition_time.clone()
            }
            _ => Time(jiff::Timestamp::now()),
        };
        let status = crate::api::BGPPeerStatus {
            conditions: vec![Condition {
                type_: "Ready".to_owned(),
                status: ready.to_owned(),
                reason: reason.to_owned(),
                message: message.clone(),
                last_transition_time: transition,
                observed_generation: generation,
            }],
            observed_generation: generation,
        };
        let note = {
            let mut state = self.lock();
            let key = (format!("bgpp/{name}"), reasons::INVALID);
            let new = ready == "False" && state.last_note.get(&key) != Some(&message);
            if new {
                state.last_note.insert(key, message.clone());
            }
            new
        };
        if note {
            self.publish_in_background(peer.object_ref(&()), vec![(EventType::Warning, reasons::INVALID, message)]);
        }
        if status == old {
            return Ok(());
        }
        let api: Api<PartialObjectMeta<crate::api::BGPPeer>> = Api::namespaced(self.client.clone(), &ns);
        let mut body = json!({"status": status});
        if let Some(version) = peer.resource_version() {
            body["metadata"] = json!({"resourceVersion": version});
        }
        let object = format!("BGPPeer {ns}/{name} status");
        self.guarded_patch(&api, name, Target::Status, &body, "update the status of", object).await.map(|_| ())
    }

    /// Writes a ServiceGroup's status when it differs from what the cache shows.
    async fn write_group_status(&self, name: &str) -> Result<(), AllocatorError> {
        let ns = self.settings.namespace.clone();
        let Some(group) = self.groups.get(&reflector::ObjectRef::new(name).within(&ns)) else { return Ok(()) };
        let (status, invalid_note, skipped_note) = {
            let mut state = self.lock();
            let groups = state.table.groups();
            let skipped_note = groups.valid.get(name).filter(|g| !g.pools.skipped.is_empty()).map(|g| {
                let list: Vec<String> = g.pools.skipped.iter().map(ToString::to_string).collect();
                format!("these addresses are never handed out and are skipped: {}", list.join("; "))
            });
            let (ready, reason, message, pool_type, generation) = if let Some(g) = groups.valid.get(name) {
                // Written ranges (a range with skipped addresses is parsed as its usable parts).
                let ranges: std::collections::BTreeSet<&str> = g.pools.all().map(|r| r.field.as_str()).collect();
                let ranges = ranges.len();
                (
                    "True",
                    "Valid",
                    match &g.netbox {
                        Some(n) => format!("addresses from NetBox at {}, tenant {}", n.url, n.tenant),
                        None => format!("{ranges} address ranges"),
                    },
                    Some(g.pool_type.as_str().to_owned()),
                    g.generation,
                )
            } else if let Some(bad) = groups.invalid.get(name) {
                (
                    "False",
                    "Invalid",
                    bad.message.clone(),
                    group.spec.pool_type().map(|p| p.as_str().to_owned()),
                    bad.generation,
                )
            } else {
                return Ok(());
            };
            let stats = state.table.stats(name);
            let old = group.status.clone().unwrap_or_default();
            let transition = match old.conditions.iter().find(|c| c.type_ == "Ready") {
                Some(c) if c.status == ready && c.reason == reason && c.message == message => {
                    c.last_transition_time.clone()
                }
                _ => Time(jiff::Timestamp::now()),
            };
            let invalid_note = (ready == "False"
                && state.last_note.get(&(format!("sg/{name}"), reasons::INVALID)) != Some(&message))
            .then(|| message.clone());
            if let Some(m) = &invalid_note {
                state.last_note.insert((format!("sg/{name}"), reasons::INVALID), m.clone());
            }
            // AddressesSkipped on transitions only (a new or changed list).
            let skipped_note = skipped_note
                .filter(|m| state.last_note.get(&(format!("sg/{name}"), reasons::ADDRESSES_SKIPPED)) != Some(m));
            if let Some(m) = &skipped_note {
                state.last_note.insert((format!("sg/{name}"), reasons::ADDRESSES_SKIPPED), m.clone());
            }
            let zero = (pool_type.as_deref() != Some(PoolType::Netbox.as_str())).then(|| "0".to_owned());
            let mut status = crate::api::ServiceGroupStatus {
                conditions: vec![Condition {
                    type_: "Ready".to_owned(),
                    status: ready.to_owned(),
                    reason: reason.to_owned(),
                    message,
                    last_transition_time: transition,
                    observed_generation: generation,
                }],
                pool_type,
                allocated_ipv4: stats.allocated.get(&Family::V4).copied().or(Some(0)),
                allocated_ipv6: stats.allocated.get(&Family::V6).copied().or(Some(0)),
                // A netbox group's availability is unknown until NetBox was asked: absent.
                available_ipv4: stats.available.get(&Family::V4).map(ToString::to_string).or_else(|| zero.clone()),
                available_ipv6: stats.available.get(&Family::V6).map(ToString::to_string).or(zero),
                addresses_outside_pools: Some(stats.outside),
                observed_generation: generation,
            };
            if ready == "False" {
                status.allocated_ipv4 = old.allocated_ipv4.or(Some(0));
                status.allocated_ipv6 = old.allocated_ipv6.or(Some(0));
            }
            ((status != old).then_some(status), invalid_note, skipped_note)
        };
        if let Some(message) = invalid_note {
            self.publish_in_background(group.object_ref(&()), vec![(EventType::Warning, reasons::INVALID, message)]);
        }
        if let Some(message) = skipped_note {
            self.publish_in_background(
                group.object_ref(&()),
                vec![(EventType::Warning, reasons::ADDRESSES_SKIPPED, message)],
            );
        }
        let Some(status) = status else { return Ok(()) };
        let api: Api<PartialObjectMeta<ServiceGroup>> = Api::namespaced(self.client.clone(), &ns);
        let mut body = json!({"status": status});
        if let Some(version) = group.resource_version() {
            body["metadata"] = json!({"resourceVersion": version});
        }
        let object = format!("ServiceGroup {ns}/{name} status");
        self.guarded_patch(&api, name, Target::Status, &body, "update the status of", object).await.map(|_| ())
    }
}

/// Queues every Service whose last pass failed: capacity may have changed.
fn retry_failed(state: &mut State, queue: &WorkQueue<Work>) {
    for key in state.failed.drain() {
        queue.add(Work::Service(key));
    }
}

fn announcing_value(
    holders: &HashMap<IpAddr, Vec<(String, String)>>,
    holding: &Holding,
    family: Family,
) -> Option<String> {
    let ip = holding.addresses.iter().find(|ip| Family::of(**ip) == family)?;
    let list = holders.get(ip)?;
    Some(list.iter().map(|(node, iface)| format!("{node},{iface}")).collect::<Vec<_>>().join(" "))
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn count_f64(c: crate::core::ipam::AddressCount) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    c.to_u128().map_or(f64::MAX, |n| n as f64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::api::ServiceGroup;

    fn group(name: &str, spec: Value) -> ServiceGroup {
        let mut g: ServiceGroup = serde_json::from_value(json!({
            "apiVersion": "purelb.io/v2", "kind": "ServiceGroup",
            "metadata": {"name": name, "namespace": "purelb-system"}, "spec": spec
        }))
        .unwrap();
        g.metadata.generation = Some(1);
        g
    }

    fn holding(group: &str, pool_type: PoolType, ip: &str) -> super::super::table::Holding {
        super::super::table::Holding {
            group: group.to_owned(),
            pool_type,
            addresses: vec![ip.parse().unwrap()],
            sharing_key: None,
            ports: BTreeSet::new(),
        }
    }

    /// `externalTrafficPolicy: Local` with a routed address aggregated into a wider prefix is
    /// warned about (every node would advertise the prefix); host routes and local groups are not.
    #[test]
    fn local_traffic_with_a_wide_aggregation_is_warned_about() {
        let groups = [
            group("wide", json!({"remote": {"v4pool": {"pool": "203.0.113.0/28", "subnet": "203.0.113.0/24"}}})),
            group(
                "host",
                json!({"remote": {"v6pool": {"pool": "2001:db8:5::/124", "subnet": "2001:db8:5::/64", "aggregation": "/128"}}}),
            ),
            group("lan", json!({"local": {"v4pool": {"pool": "192.0.2.240/28", "subnet": "192.0.2.0/24"}}})),
        ];
        let set = super::super::groups::GroupSet::build(groups.iter(), "purelb-system");
        let w = wide_aggregation_warning(&set, &holding("wide", PoolType::Remote, "203.0.113.3")).unwrap();
        assert!(w.contains("203.0.113.3/24") && w.contains("ServiceGroup wide") && w.contains("/32"), "{w}");
        assert_eq!(wide_aggregation_warning(&set, &holding("host", PoolType::Remote, "2001:db8:5::3")), None);
        assert_eq!(wide_aggregation_warning(&set, &holding("lan", PoolType::Local, "192.0.2.241")), None);
        assert_eq!(wide_aggregation_warning(&set, &holding("gone", PoolType::Remote, "203.0.113.3")), None);
    }
}
