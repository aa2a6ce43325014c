//! EndpointSlice index: which nodes have a usable endpoint for a Service, per address family.
//!
//! This module owns the agent's answer to "does node N have a usable endpoint for Service S in
//! family F", which `externalTrafficPolicy: Local` Services need for election, and the
//! EndpointSlice numbers the agent exports as metrics. [`EndpointIndex`] is fed the watch
//! events of EndpointSlices and keeps the answer up to date incrementally: a change costs
//! the size of the slice that changed, never the size of the Service or of the cluster.
//!
//! Entry points:
//! - feed: [`EndpointIndex::handle_event`] (the `kube_runtime` watcher events), or
//!   [`EndpointIndex::apply`], [`EndpointIndex::delete`] and [`EndpointIndex::replace_all`];
//!   each returns the Services whose answer changed, to trigger their reconciles;
//! - ask: [`EndpointIndex::has_usable_endpoint`], [`EndpointIndex::usable_nodes`],
//!   [`EndpointIndex::node_endpoints`], [`EndpointIndex::external_endpoints`];
//! - metrics: [`EndpointIndex::slice_counts`] (`purelb_endpointslice_count{service}`),
//!   [`EndpointIndex::staleness`] (`purelb_endpointslice_cache_age_seconds`).
//!
//! The rules:
//! - slices are grouped by namespace and the [`SERVICE_NAME_LABEL`] label, whoever manages
//!   them (the built-in controller, a mesh, hand-made); slices without the label are ignored
//!   and only counted ([`EndpointIndex::unlabelled_slices`]);
//! - a slice answers only for the family of its `addressType` (`IPv4`, `IPv6`); `FQDN` slices
//!   count as slices of their Service but never give a node an endpoint;
//! - an endpoint is its first address (as kube-proxy reads it) on its `nodeName`; addresses that
//!   do not parse or are of the wrong family are skipped; endpoints without a `nodeName` are
//!   external: counted, but they make no node usable;
//! - absent `ready` and `serving` mean true, absent `terminating` means false (as the API says);
//! - node N is usable when one of its endpoints is ready; when none is, an endpoint that is
//!   serving and terminating keeps N usable (graceful termination, as kube-proxy does for
//!   `externalTrafficPolicy: Local`);
//! - an endpoint listed by several slices (different port sets, or in transit between slices
//!   during a rollout) is only as good as its worst listing: ready only if every listing says
//!   ready, serving-and-terminating only if every listing says at least that. An address listed
//!   under two different nodes (an address reused after its pod moved) is two endpoints, each
//!   judged on its own node's listings.
//!
//! The index is pure: no client, no IO, and time is passed in by the caller.

use std::{
    borrow::Borrow,
    collections::{BTreeSet, HashMap, HashSet, hash_map::Entry},
    fmt,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use kube::runtime::watcher;

use crate::core::ipam::Family;

/// The label that ties an EndpointSlice to its Service (`kubernetes.io/service-name`).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

impl ServiceKey {
    /// The Service `namespace/name`.
    #[must_use]
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    /// The key of a Service object.
    #[must_use]
    pub fn of_service(svc: &k8s_openapi::api::core::v1::Service) -> Self {
        Self::new(
            svc.metadata.namespace.as_deref().unwrap_or_default(),
            svc.metadata.name.as_deref().unwrap_or_default(),
        )
    }

    /// The Service a slice belongs to: the slice's namespace and its [`SERVICE_NAME_LABEL`];
    /// `None` when the label is missing or empty.
    #[must_use]
    pub fn of_slice(slice: &EndpointSlice) -> Option<Self> {
        let name = service_label(slice)?;
        Some(Self::new(slice_namespace(slice), name))
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The endpoints one node has for one Service and family, counted after merging every listing
/// of the same address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeEndpoints {
    /// Endpoints that every listing says are ready.
    pub ready: usize,
    /// Endpoints not ready, but that every listing says are at least serving and terminating.
    pub serving_terminating: usize,
}

impl NodeEndpoints {
    /// True when the node can take traffic for the Service: an endpoint is ready, or, failing
    /// that, one is still serving while it terminates.
    #[must_use]
    pub fn is_usable(self) -> bool {
        self.ready > 0 || self.serving_terminating > 0
    }
}

/// EndpointSlices indexed by Service, with the per-node answer kept up to date incrementally.
///
/// Feed it every watch event; ask it per Service and family. See the module documentation for
/// the rules.
#[derive(Debug, Default)]
pub struct EndpointIndex {
    /// What each slice contributed, kept so it can be subtracted when the slice changes.
    slices: HashMap<SliceKey, IndexedSlice>,
    /// The aggregated answer per Service (the key shared with the slices' contributions).
    services: HashMap<Arc<ServiceKey>, ServiceEndpoints>,
    /// Every node name held, once (listings and tallies share it).
    node_names: NodeNames,
    /// Slices held without a Service label.
    unlabelled_slices: usize,
    /// Slices listed since the watcher's last `Init`, installed at `InitDone`.
    resync_buffer: Option<HashMap<SliceKey, IndexedSlice>>,
    /// True once a full list has been installed.
    synced: bool,
    /// When the last event was handled.
    last_event_at: Option<Instant>,
    /// Since when the watch fails (the first error after the last event), if it does.
    failing_since: Option<Instant>,
    /// The last watch error.
    last_error_at: Option<Instant>,
}

/// A watch that has reported no error for this long since its last one is watching again: a
/// failing watch is retried at least every 5 s (`crate::watch::WATCH_BACKOFF_MAX` plus jitter),
/// and a re-established watch on a quiet cluster delivers no event to say so.
pub const WATCH_RECOVERED_AFTER: Duration = Duration::from_secs(15);

impl EndpointIndex {
    /// An empty index, not yet synced.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles one event of a `kube_runtime` watcher on EndpointSlices at time `now`.
    ///
    /// `Apply` and `Delete` take effect at once. `Init` starts a fresh list, `InitApply`
    /// collects into it without changing any answer, and `InitDone` replaces everything with the
    /// list (slices not listed are deleted), as a reflector store does. Returns the Services
    /// whose usable nodes changed, in any family.
    pub fn handle_event(&mut self, event: &watcher::Event<EndpointSlice>, now: Instant) -> BTreeSet<ServiceKey> {
        self.failing_since = None;
        match event {
            watcher::Event::Apply(slice) => self.apply(slice, now),
            watcher::Event::Delete(slice) => self.delete(slice, now),
            watcher::Event::Init => {
                self.last_event_at = Some(now);
                self.resync_buffer = Some(HashMap::new());
                BTreeSet::new()
            }
            watcher::Event::InitApply(slice) => {
                self.last_event_at = Some(now);
                if let Some(key) = SliceKey::of(slice) {
                    let parsed = IndexedSlice::parse(slice, &mut self.node_names);
                    self.resync_buffer.get_or_insert_with(HashMap::new).insert(key, parsed);
                }
                BTreeSet::new()
            }
            watcher::Event::InitDone => {
                let listed = self.resync_buffer.take().unwrap_or_default();
                self.install_full_list(listed, now)
            }
        }
    }

    /// Adds or updates one slice at time `now`. Returns the Services whose usable nodes changed.
    ///
    /// Costs the size of this slice (and of its previous version), whatever the size of the
    /// Service. Re-applying an identical slice changes nothing.
    pub fn apply(&mut self, slice: &EndpointSlice, now: Instant) -> BTreeSet<ServiceKey> {
        self.last_event_at = Some(now);
        let Some(key) = SliceKey::of(slice) else {
            return BTreeSet::new();
        };
        let mut tracker = ChangeTracker::default();
        let parsed = IndexedSlice::parse(slice, &mut self.node_names);
        self.put_slice(key, Some(parsed), &mut tracker);
        tracker.changed_services(&self.services)
    }

    /// Removes one slice (found by its namespace and name) at time `now`. Returns the Services
    /// whose usable nodes changed.
    pub fn delete(&mut self, slice: &EndpointSlice, now: Instant) -> BTreeSet<ServiceKey> {
        self.last_event_at = Some(now);
        let Some(key) = SliceKey::of(slice) else {
            return BTreeSet::new();
        };
        let mut tracker = ChangeTracker::default();
        self.put_slice(key, None, &mut tracker);
        tracker.changed_services(&self.services)
    }

    /// Replaces the whole content with `slices` (a full list) at time `now`: slices not listed
    /// are deleted, the others applied. Marks the index synced. Returns the Services whose usable
    /// nodes differ from before the call (a slice that moved between names is no change).
    pub fn replace_all<'a>(
        &mut self,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        now: Instant,
    ) -> BTreeSet<ServiceKey> {
        let names = &mut self.node_names;
        let listed = slices
            .into_iter()
            .filter_map(|slice| SliceKey::of(slice).map(|key| (key, IndexedSlice::parse(slice, names))))
            .collect();
        self.install_full_list(listed, now)
    }

    /// True when node `node` has a usable endpoint for `service` in `family`.
    #[must_use]
    pub fn has_usable_endpoint(&self, service: &ServiceKey, family: Family, node: &str) -> bool {
        self.family_endpoints(service, family).is_some_and(|endpoints| endpoints.is_usable(node))
    }

    /// The endpoints node `node` has for `service` in `family` (zero when none or unknown).
    #[must_use]
    pub fn node_endpoints(&self, service: &ServiceKey, family: Family, node: &str) -> NodeEndpoints {
        self.family_endpoints(service, family)
            .and_then(|endpoints| endpoints.nodes.get(node))
            .map(NodeTally::endpoints)
            .unwrap_or_default()
    }

    /// The nodes with a usable endpoint for `service` in `family`, sorted (empty when the
    /// Service is unknown). Costs the number of nodes with endpoints of the Service.
    #[must_use]
    pub fn usable_nodes(&self, service: &ServiceKey, family: Family) -> BTreeSet<&str> {
        self.family_endpoints(service, family)
            .map(|endpoints| {
                endpoints
                    .nodes
                    .iter()
                    .filter(|(_, tally)| tally.endpoints().is_usable())
                    .map(|(node, _)| node.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many endpoint listings of `service` in `family` have no `nodeName` (external
    /// endpoints, ignored for node health).
    #[must_use]
    pub fn external_endpoints(&self, service: &ServiceKey, family: Family) -> usize {
        self.family_endpoints(service, family).map_or(0, |endpoints| count(endpoints.external_listings))
    }

    /// How many slices carry `service`'s label, of any address type and any manager.
    #[must_use]
    pub fn slice_count(&self, service: &ServiceKey) -> usize {
        self.services.get(service).map_or(0, |endpoints| count(endpoints.slices))
    }

    /// Every Service that has at least one slice, with its number of slices, in no particular
    /// order.
    pub fn slice_counts(&self) -> impl Iterator<Item = (&ServiceKey, usize)> {
        self.services.iter().map(|(service, endpoints)| (&**service, count(endpoints.slices)))
    }

    /// How many slices are held in total, with or without a Service label.
    #[must_use]
    pub fn slice_total(&self) -> usize {
        self.slices.len()
    }

    /// How many slices are ignored because they have no [`SERVICE_NAME_LABEL`].
    #[must_use]
    pub fn unlabelled_slices(&self) -> usize {
        self.unlabelled_slices
    }

    /// True once a full list has been installed (`InitDone` or [`Self::replace_all`]). Before
    /// that, a missing endpoint may only mean "not listed yet".
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// When the last event was handled, if any.
    #[must_use]
    pub fn last_event_at(&self) -> Option<Instant> {
        self.last_event_at
    }

    /// Records an error of the watch at `now` (the cache may be falling behind from then on).
    pub fn watch_failed(&mut self, now: Instant) {
        let recovered = self.last_error_at.is_some_and(|at| now.saturating_duration_since(at) >= WATCH_RECOVERED_AFTER);
        if recovered {
            self.failing_since = None;
        }
        self.failing_since.get_or_insert(now);
        self.last_error_at = Some(now);
    }

    /// How stale the index may be at `now` (`purelb_endpointslice_cache_age_seconds`): zero
    /// while the watch is known in sync — listed, and no error since the last event (or none for
    /// [`WATCH_RECOVERED_AFTER`]: a quiet cluster sends no events, and that is not staleness);
    /// while the watch fails, the time since it first failed. `None` before the first full list.
    #[must_use]
    pub fn staleness(&self, now: Instant) -> Option<Duration> {
        if !self.synced {
            return None;
        }
        match (self.failing_since, self.last_error_at) {
            (Some(since), Some(last)) if now.saturating_duration_since(last) < WATCH_RECOVERED_AFTER => {
                Some(now.saturating_duration_since(since))
            }
            _ => Some(Duration::ZERO),
        }
    }

    fn family_endpoints(&self, service: &ServiceKey, family: Family) -> Option<&FamilyEndpoints> {
        self.services.get(service).and_then(|endpoints| endpoints.family(family))
    }

    fn install_full_list(&mut self, listed: HashMap<SliceKey, IndexedSlice>, now: Instant) -> BTreeSet<ServiceKey> {
        self.last_event_at = Some(now);
        self.synced = true;
        let mut tracker = ChangeTracker::default();
        let gone: Vec<SliceKey> = self.slices.keys().filter(|key| !listed.contains_key(*key)).cloned().collect();
        for key in gone {
            self.put_slice(key, None, &mut tracker);
        }
        for (key, slice) in listed {
            self.put_slice(key, Some(slice), &mut tracker);
        }
        let changed = tracker.changed_services(&self.services);
        // After the tracker has let go of the names it noted.
        self.node_names.collect_garbage();
        changed
    }

    /// Sets slice `key` to `new` (`None`: deleted), subtracting what its previous version
    /// contributed and adding what the new one does.
    fn put_slice(&mut self, key: SliceKey, mut new: Option<IndexedSlice>, tracker: &mut ChangeTracker) {
        let old = self.slices.remove(&key);
        if old == new {
            if let Some(unchanged) = old {
                self.slices.insert(key, unchanged);
            }
            return;
        }
        match old {
            Some(IndexedSlice::Labelled(contribution)) => self.withdraw(&contribution, tracker),
            Some(IndexedSlice::Unlabelled) => self.unlabelled_slices = self.unlabelled_slices.saturating_sub(1),
            None => {}
        }
        match &mut new {
            Some(IndexedSlice::Labelled(contribution)) => self.contribute(contribution, tracker),
            Some(IndexedSlice::Unlabelled) => self.unlabelled_slices += 1,
            None => {}
        }
        if let Some(new) = new {
            self.slices.insert(key, new);
        }
    }

    fn withdraw(&mut self, contribution: &SliceContribution, tracker: &mut ChangeTracker) {
        let Some(service) = self.services.get_mut(&contribution.service) else {
            return;
        };
        service.count_slice(contribution, Delta::Remove, tracker.flips_of(&contribution.service));
        if service.slices == 0 {
            self.services.remove(&*contribution.service);
        }
        self.node_names.collect_garbage_when_grown();
    }

    /// Counts `contribution` for its Service, sharing the Service's key with it.
    fn contribute(&mut self, contribution: &mut SliceContribution, tracker: &mut ChangeTracker) {
        if let Some((key, _)) = self.services.get_key_value(&*contribution.service) {
            contribution.service = Arc::clone(key);
        }
        let service = self.services.entry(Arc::clone(&contribution.service)).or_default();
        service.count_slice(contribution, Delta::Add, tracker.flips_of(&contribution.service));
    }
}

/// The nodes with a usable endpoint for `service` in `family`, recomputed from scratch from
/// `slices` (the whole current set).
///
/// The straightforward reference the incremental [`EndpointIndex`] is checked and benchmarked
/// against; costs every endpoint of every slice. Not for production use.
#[doc(hidden)]
#[must_use]
pub fn usable_nodes_by_rescan<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    service: &ServiceKey,
    family: Family,
) -> BTreeSet<String> {
    let mut worst_listing: HashMap<(IpAddr, &str), Readiness> = HashMap::new();
    for slice in slices {
        let of_service = slice_namespace(slice) == service.namespace
            && service_label(slice).is_some_and(|name| name == service.name);
        if !of_service || family_of_address_type(&slice.address_type) != Some(family) {
            continue;
        }
        for endpoint in &slice.endpoints {
            let (Some(address), Some(node)) = (endpoint_address(endpoint, family), endpoint_node(endpoint)) else {
                continue;
            };
            let readiness = Readiness::of(endpoint.conditions.as_ref());
            worst_listing
                .entry((address, node))
                .and_modify(|worst| *worst = (*worst).min(readiness))
                .or_insert(readiness);
        }
    }
    worst_listing
        .into_iter()
        .filter(|(_, readiness)| *readiness >= Readiness::ServingTerminating)
        .map(|((_, node), _)| node.to_owned())
        .collect()
}

/// A slice, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SliceKey {
    namespace: String,
    name: String,
}

impl SliceKey {
    fn of(slice: &EndpointSlice) -> Option<Self> {
        let name = slice.metadata.name.as_deref().filter(|name| !name.is_empty())?;
        Some(Self { namespace: slice_namespace(slice).to_owned(), name: name.to_owned() })
    }
}

/// What the index keeps of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
enum IndexedSlice {
    /// No Service label: counted, otherwise ignored.
    Unlabelled,
    /// Counted for its Service.
    Labelled(SliceContribution),
}

impl IndexedSlice {
    fn parse(slice: &EndpointSlice, names: &mut NodeNames) -> Self {
        let Some(service) = ServiceKey::of_slice(slice) else {
            return Self::Unlabelled;
        };
        let family = family_of_address_type(&slice.address_type);
        let listings = family.map(|family| parse_listings(&slice.endpoints, family, names)).unwrap_or_default();
        Self::Labelled(SliceContribution { service: Arc::new(service), family, listings })
    }
}

/// What one labelled slice adds to its Service.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SliceContribution {
    service: Arc<ServiceKey>,
    /// `None` for address types that never count (`FQDN`).
    family: Option<Family>,
    listings: Box<[Listing]>,
}

/// One endpoint as one slice lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Listing {
    address: IpAddr,
    /// `None`: an external endpoint.
    node: Option<NodeName>,
    readiness: Readiness,
}

/// A node's name, held once by the index and shared by every listing and tally of the node: a
/// thin pointer (8 bytes) where a `String` per listing took 24 and an allocation (at 500,000
/// endpoints the index was most of the agent's memory, issue 20).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct NodeName(Arc<String>);

impl NodeName {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The node names the index holds, each once.
#[derive(Debug, Default)]
struct NodeNames {
    names: HashSet<NodeName>,
    /// How many were held after the last collection.
    live: usize,
}

impl NodeNames {
    fn intern(&mut self, name: &str) -> NodeName {
        if let Some(known) = self.names.get(name) {
            return known.clone();
        }
        let new = NodeName(Arc::new(name.to_owned()));
        self.names.insert(new.clone());
        new
    }

    /// Forgets the names nothing else holds any more (nodes gone from every slice).
    fn collect_garbage(&mut self) {
        self.names.retain(|name| Arc::strong_count(&name.0) > 1);
        self.live = self.names.len();
    }

    /// [`Self::collect_garbage`] once the names have doubled since the last collection, so that
    /// node churn does not grow the set without bound and the cost stays amortised.
    fn collect_garbage_when_grown(&mut self) {
        if self.names.len() > 2 * self.live + 64 {
            self.collect_garbage();
        }
    }
}

/// A deliberately wrong rule for `scripts/injected-bugs.sh` (issue 15): endpoints that serve
/// while terminating do not keep a node usable. Only with `--cfg purelb_bug="ignore_terminating"`;
/// the soak's oracle must catch it.
const IGNORE_TERMINATING: bool = cfg!(purelb_bug = "ignore_terminating");

/// How far a listing says an endpoint can take traffic, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Readiness {
    NotServing,
    ServingTerminating,
    Ready,
}

impl Readiness {
    /// Absent `ready` and `serving` mean true, absent `terminating` means false.
    fn of(conditions: Option<&EndpointConditions>) -> Self {
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        if ready {
            Self::Ready
        } else if serving && terminating && !IGNORE_TERMINATING {
            Self::ServingTerminating
        } else {
            Self::NotServing
        }
    }
}

fn slice_namespace(slice: &EndpointSlice) -> &str {
    slice.metadata.namespace.as_deref().unwrap_or_default()
}

fn service_label(slice: &EndpointSlice) -> Option<&str> {
    slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL).map(String::as_str).filter(|name| !name.is_empty())
}

fn family_of_address_type(address_type: &str) -> Option<Family> {
    match address_type {
        "IPv4" => Some(Family::V4),
        "IPv6" => Some(Family::V6),
        _ => None,
    }
}

/// The endpoint's first address (the only one kube-proxy reads), if it is an address of `family`.
fn endpoint_address(endpoint: &Endpoint, family: Family) -> Option<IpAddr> {
    let address: IpAddr = endpoint.addresses.first()?.parse().ok()?;
    (Family::of(address) == family).then_some(address)
}

/// The endpoint's node; `None` (external) when `nodeName` is absent or empty.
fn endpoint_node(endpoint: &Endpoint) -> Option<&str> {
    endpoint.node_name.as_deref().filter(|node| !node.is_empty())
}

fn parse_listings(endpoints: &[Endpoint], family: Family, names: &mut NodeNames) -> Box<[Listing]> {
    endpoints
        .iter()
        .filter_map(|endpoint| {
            let address = endpoint_address(endpoint, family)?;
            let node = endpoint_node(endpoint).map(|node| names.intern(node));
            Some(Listing { address, node, readiness: Readiness::of(endpoint.conditions.as_ref()) })
        })
        .collect()
}

/// A count kept as `u32` (half the memory of `usize` in the per-endpoint tallies), as `usize`.
fn count(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Whether a contribution is being added or subtracted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delta {
    Add,
    Remove,
}

impl Delta {
    fn apply(self, count: &mut u32) {
        match self {
            Self::Add => *count = count.saturating_add(1),
            Self::Remove => *count = count.saturating_sub(1),
        }
    }
}

/// Per Service: the nodes whose usability flipped during one operation, with their usability
/// before it, so that an operation reports only net changes.
type NodeFlips = HashMap<(Family, NodeName), bool>;

#[derive(Debug, Default)]
struct ChangeTracker {
    flips: HashMap<ServiceKey, NodeFlips>,
}

impl ChangeTracker {
    fn flips_of(&mut self, service: &ServiceKey) -> &mut NodeFlips {
        self.flips.entry(service.clone()).or_default()
    }

    fn changed_services(self, services: &HashMap<Arc<ServiceKey>, ServiceEndpoints>) -> BTreeSet<ServiceKey> {
        self.flips
            .into_iter()
            .filter(|(service, flips)| {
                let endpoints = services.get(service);
                flips.iter().any(|((family, node), was_usable)| {
                    let is_usable = endpoints
                        .and_then(|e| e.family(*family))
                        .is_some_and(|endpoints| endpoints.is_usable(node.as_str()));
                    is_usable != *was_usable
                })
            })
            .map(|(service, _)| service)
            .collect()
    }
}

/// Everything the index knows about one Service.
#[derive(Debug, Default)]
struct ServiceEndpoints {
    /// Slices carrying the Service's label, of any address type.
    slices: u32,
    /// `None` while the family has nothing (most Services are of one family).
    ipv4: Option<Box<FamilyEndpoints>>,
    ipv6: Option<Box<FamilyEndpoints>>,
}

impl ServiceEndpoints {
    fn family(&self, family: Family) -> Option<&FamilyEndpoints> {
        match family {
            Family::V4 => self.ipv4.as_deref(),
            Family::V6 => self.ipv6.as_deref(),
        }
    }

    fn family_slot(&mut self, family: Family) -> &mut Option<Box<FamilyEndpoints>> {
        match family {
            Family::V4 => &mut self.ipv4,
            Family::V6 => &mut self.ipv6,
        }
    }

    fn count_slice(&mut self, contribution: &SliceContribution, delta: Delta, flips: &mut NodeFlips) {
        delta.apply(&mut self.slices);
        let Some(family) = contribution.family else {
            return;
        };
        let slot = self.family_slot(family);
        let endpoints = slot.get_or_insert_with(Box::default);
        for listing in &contribution.listings {
            endpoints.count_listing(family, listing, delta, flips);
        }
        if endpoints.is_empty() {
            *slot = None;
        }
    }
}

/// One Service in one family: every endpoint's merged listings, and per node how many of its
/// endpoints are ready or serving-terminating.
#[derive(Debug, Default)]
struct FamilyEndpoints {
    endpoints: HashMap<(IpAddr, NodeName), ListingTally>,
    nodes: HashMap<NodeName, NodeTally>,
    external_listings: u32,
}

impl FamilyEndpoints {
    fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.nodes.is_empty() && self.external_listings == 0
    }

    fn is_usable(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|tally| tally.endpoints().is_usable())
    }

    fn count_listing(&mut self, family: Family, listing: &Listing, delta: Delta, flips: &mut NodeFlips) {
        let Some(node) = &listing.node else {
            delta.apply(&mut self.external_listings);
            return;
        };
        let (before, after) = match self.endpoints.entry((listing.address, node.clone())) {
            Entry::Occupied(mut entry) => {
                let tally = entry.get_mut();
                let before = tally.readiness();
                tally.count(listing.readiness, delta);
                let after = tally.readiness();
                if tally.listings == 0 {
                    entry.remove();
                }
                (before, after)
            }
            Entry::Vacant(entry) => {
                if delta == Delta::Remove {
                    return;
                }
                let mut tally = ListingTally::default();
                tally.count(listing.readiness, delta);
                let after = tally.readiness();
                entry.insert(tally);
                (None, after)
            }
        };
        if before != after {
            self.recount_node(family, node, before, after, flips);
        }
    }

    /// Moves one endpoint of `node` from merged readiness `before` to `after` (`None`: absent).
    fn recount_node(
        &mut self,
        family: Family,
        node: &NodeName,
        before: Option<Readiness>,
        after: Option<Readiness>,
        flips: &mut NodeFlips,
    ) {
        let tally = self.nodes.entry(node.clone()).or_default();
        let was_usable = tally.endpoints().is_usable();
        tally.count(before, Delta::Remove);
        tally.count(after, Delta::Add);
        let is_usable = tally.endpoints().is_usable();
        if tally.present == 0 {
            self.nodes.remove(node.as_str());
        }
        if was_usable != is_usable {
            flips.entry((family, node.clone())).or_insert(was_usable);
        }
    }
}

/// All listings of one endpoint (address on a node), merged.
#[derive(Clone, Copy, Debug, Default)]
struct ListingTally {
    listings: u32,
    /// Listings that say at least serving-and-terminating (ready included).
    at_least_serving_terminating: u32,
    ready: u32,
}

impl ListingTally {
    fn count(&mut self, readiness: Readiness, delta: Delta) {
        delta.apply(&mut self.listings);
        if readiness >= Readiness::ServingTerminating {
            delta.apply(&mut self.at_least_serving_terminating);
        }
        if readiness == Readiness::Ready {
            delta.apply(&mut self.ready);
        }
    }

    /// The worst listing's readiness; `None` when nothing lists the endpoint.
    fn readiness(self) -> Option<Readiness> {
        if self.listings == 0 {
            None
        } else if self.ready == self.listings {
            Some(Readiness::Ready)
        } else if self.at_least_serving_terminating == self.listings {
            Some(Readiness::ServingTerminating)
        } else {
            Some(Readiness::NotServing)
        }
    }
}

/// One node's endpoints for one Service and family.
#[derive(Clone, Copy, Debug, Default)]
struct NodeTally {
    /// Endpoints listed on the node, whatever their readiness.
    present: u32,
    ready: u32,
    serving_terminating: u32,
}

impl NodeTally {
    fn count(&mut self, readiness: Option<Readiness>, delta: Delta) {
        let Some(readiness) = readiness else {
            return;
        };
        delta.apply(&mut self.present);
        match readiness {
            Readiness::Ready => delta.apply(&mut self.ready),
            Readiness::ServingTerminating => delta.apply(&mut self.serving_terminating),
            Readiness::NotServing => {}
        }
    }

    fn endpoints(&self) -> NodeEndpoints {
        NodeEndpoints { ready: count(self.ready), serving_terminating: count(self.serving_terminating) }
    }
}

#[cfg(test)]
mod tests;
