//! Every PureLB metric (`api.md` §4): its name, kind and help text. Controllers record
//! through these constants so that names cannot drift from the contract, and
//! [`describe`] gives each one its `# HELP` line.

/// Which process is describing its metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// `purelb allocator`.
    Allocator,
    /// `purelb agent`.
    Agent,
}

/// Kind of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter.
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram.
    Histogram,
}

/// One metric of the catalog.
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    /// Full name, with the `purelb_` prefix.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Components that export it (empty: both).
    pub components: &'static [Component],
}

macro_rules! catalog {
    ($( $const:ident = $name:literal, $kind:ident, [$($comp:ident),*], $help:literal; )*) => {
        $(
            #[doc = $help]
            pub const $const: &str = $name;
        )*
        /// Every metric PureLB exports.
        pub const ALL: &[MetricDef] = &[
            $( MetricDef { name: $name, kind: Kind::$kind, help: $help, components: &[$(Component::$comp),*] }, )*
        ];
    };
}

catalog! {
    BUILD_INFO = "purelb_build_info", Gauge, [], "Always 1; the version label says which PureLB build runs.";
    WORKQUEUE_DEPTH = "purelb_workqueue_depth", Gauge, [], "Items waiting in the work queue.";
    WORKQUEUE_ADDS = "purelb_workqueue_adds_total", Counter, [], "Items added to the work queue.";
    WORKQUEUE_RETRIES = "purelb_workqueue_retries_total", Counter, [], "Items re-queued with backoff after a failure.";
    WORKQUEUE_WORK_DURATION = "purelb_workqueue_work_duration_seconds", Histogram, [], "Time spent processing one work item.";
    DECISION_PASSES = "purelb_decision_passes_total", Counter, [Agent], "Decision passes the agent ran (each brings the decision up to date against the kernel: for the Services that changed or whose addresses a membership change touches, or for every Service); Lease renewals that change nothing cause none.";
    WATCH_EVENTS = "purelb_watch_events_total", Counter, [], "Objects changed or deleted as the watch of each cached resource reported them (label watch), relists not counted: what the API server sends this process.";
    ADDRESS_POOL_SIZE = "purelb_address_pool_size", Gauge, [Allocator], "Addresses in the pool (ServiceGroup) per family.";
    ADDRESS_POOL_IN_USE = "purelb_address_pool_addresses_in_use", Gauge, [Allocator], "Addresses of the pool held by Services, per family.";
    ADDRESS_POOL_REJECTED = "purelb_address_pool_allocation_rejected_total", Counter, [Allocator], "Allocation requests the pool could not satisfy, by reason.";
    ALLOCATOR_IS_LEADER = "purelb_allocator_is_leader", Gauge, [Allocator], "1 while this allocator replica holds the leader Lease and writes, else 0.";
    K8S_CLIENT_UPDATES = "purelb_k8s_client_updates_total", Counter, [Allocator], "Writes to the Kubernetes API.";
    K8S_CLIENT_UPDATE_ERRORS = "purelb_k8s_client_update_errors_total", Counter, [Allocator], "Writes to the Kubernetes API that failed.";
    NETBOX_REQUESTS = "purelb_netbox_requests_total", Counter, [Allocator], "Requests to NetBox, by HTTP method and status code (timeout or error when there was no answer).";
    NETBOX_REQUEST_DURATION = "purelb_netbox_request_duration_seconds", Histogram, [Allocator], "Time NetBox took to answer one request, by HTTP method.";
    LBNODEAGENT_ANNOUNCED = "purelb_lbnodeagent_announced", Gauge, [Agent], "1 while this node holds the address for the Service on the interface.";
    ANNOUNCED_IPS = "purelb_announced_ips_total", Gauge, [Agent], "Addresses this node holds now.";
    ORPHANED_IPS = "purelb_orphaned_ips_total", Gauge, [Agent], "PureLB-owned addresses found at the last sweep that this node should not hold.";
    ORPHANED_IPS_REMOVED = "purelb_orphaned_ips_removed_total", Counter, [Agent], "Orphaned addresses removed.";
    GARP_SENT = "purelb_garp_sent_total", Counter, [Agent], "Gratuitous ARP (IPv4) and unsolicited NA (IPv6) packets sent.";
    GARP_ERRORS = "purelb_garp_errors_total", Counter, [Agent], "Gratuitous ARP / unsolicited NA packets that could not be sent.";
    ELECTION_LEASE_HEALTHY = "purelb_election_lease_healthy", Gauge, [Agent], "1 while this node's Lease is renewed in time, else 0.";
    ELECTION_MEMBER_COUNT = "purelb_election_member_count", Gauge, [Agent], "Live nodes taking part in the election.";
    ELECTION_WINNER_CHANGES = "purelb_election_winner_changes_total", Counter, [Agent], "Times the elected holder of a local address changed.";
    ENDPOINTSLICE_SYNC = "purelb_endpointslice_sync_total", Counter, [Agent], "EndpointSlice events applied to the endpoint index.";
    ENDPOINTSLICE_SYNC_ERRORS = "purelb_endpointslice_sync_errors_total", Counter, [Agent], "EndpointSlice watch errors.";
    ENDPOINTSLICE_COUNT = "purelb_endpointslice_count", Gauge, [Agent], "EndpointSlices of a Service this node evaluates.";
    ENDPOINTSLICE_ENDPOINTS_WITHOUT_NODE = "purelb_endpointslice_endpoints_without_node", Gauge, [Agent], "Endpoints without nodeName of the Services this node evaluates (they make no node usable for externalTrafficPolicy: Local).";
    ENDPOINTSLICE_CACHE_AGE = "purelb_endpointslice_cache_age_seconds", Gauge, [Agent], "Seconds since the EndpointSlice watch was last known in sync: 0 while it is (listed, and no watch error since), growing before the first list and while the watch fails.";
    ADDRESS_DRIFT_REPAIRS = "purelb_address_drift_repairs_total", Counter, [Agent], "Held addresses removed by someone else and added back.";
    ADDRESS_CONFLICTS = "purelb_address_conflicts_total", Counter, [Agent], "ARP replies or NAs from another MAC for an address this node holds.";
    HANDOVER_DURATION = "purelb_handover_duration_seconds", Histogram, [Agent], "Time from the start of a graceful handover until the successor holds the address.";
    BGP_SESSION_UP = "purelb_bgp_session_up", Gauge, [Agent], "1 while this node's BGP session to the BGPPeer is Established, else 0 (BGP on only).";
    BGP_ADVERTISED_ROUTES = "purelb_bgp_advertised_routes", Gauge, [Agent], "Routes this node's BIRD exports to the BGPPeer (BGP on only).";
    BGP_CONFIG_RELOADS = "purelb_bgp_config_reloads_total", Counter, [Agent], "BIRD configurations the agent wrote and BIRD loaded.";
    BGP_CONFIG_ERRORS = "purelb_bgp_config_errors_total", Counter, [Agent], "BIRD configurations BIRD refused or could not be given (the last good one stays).";
}

/// Families whose label values name objects that can go away (Services, addresses,
/// interfaces, pools): kept in [`super::scoped`], so that a gone object's series goes too.
pub const SCOPED: &[&str] = &[
    LBNODEAGENT_ANNOUNCED,
    ENDPOINTSLICE_COUNT,
    ADDRESS_POOL_SIZE,
    ADDRESS_POOL_IN_USE,
    ADDRESS_POOL_REJECTED,
    BGP_SESSION_UP,
    BGP_ADVERTISED_ROUTES,
];

/// The counter series of `component` whose label values are all known at start: they are
/// exported at 0 from the first scrape, so that `rate()` and `increase()` see their first event
/// (`api.md` §4). Series with labels known later start at 0 when the label becomes known:
/// `address_pool_allocation_rejected_total` per pool and reason when the pool is read, the
/// work-queue counters when the queue is made; `netbox_requests_total` (method and HTTP code)
/// only exists per answer seen.
#[must_use]
pub fn zero_series(component: Component) -> Vec<(&'static str, Option<(&'static str, &'static str)>)> {
    match component {
        Component::Allocator => vec![(K8S_CLIENT_UPDATES, None), (K8S_CLIENT_UPDATE_ERRORS, None)],
        Component::Agent => vec![
            (ORPHANED_IPS_REMOVED, None),
            (GARP_SENT, Some(("family", "IPv4"))),
            (GARP_SENT, Some(("family", "IPv6"))),
            (GARP_ERRORS, None),
            (ELECTION_WINNER_CHANGES, None),
            (ENDPOINTSLICE_SYNC, None),
            (ENDPOINTSLICE_SYNC_ERRORS, None),
            (ADDRESS_DRIFT_REPAIRS, None),
            (ADDRESS_CONFLICTS, None),
            (BGP_CONFIG_RELOADS, None),
            (BGP_CONFIG_ERRORS, None),
            (DECISION_PASSES, None),
        ],
    }
}

/// Gives every metric of `component` (and the common ones) its help text, sets
/// `purelb_build_info{version}` to 1 and exports the [`zero_series`] at 0.
pub fn describe(component: Component) {
    for (name, label) in zero_series(component) {
        match label {
            Some((key, value)) => metrics::counter!(name, key => value).increment(0),
            None => metrics::counter!(name).increment(0),
        }
    }
    // Unlabelled histograms exist (with empty buckets) before their first observation.
    if component == Component::Agent {
        let _ = metrics::histogram!(HANDOVER_DURATION);
    }
    for def in ALL.iter().filter(|d| d.components.is_empty() || d.components.contains(&component)) {
        match def.kind {
            Kind::Counter => metrics::describe_counter!(def.name, def.help),
            Kind::Gauge => metrics::describe_gauge!(def.name, def.help),
            Kind::Histogram => metrics::describe_histogram!(def.name, def.help),
        }
    }
    metrics::gauge!(BUILD_INFO, "version" => crate::VERSION).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_starts_at_zero_or_says_why_not() {
        // Labelled by what exists later; `WATCH_EVENTS` is registered at 0 when its watch starts.
        let later = [ADDRESS_POOL_REJECTED, NETBOX_REQUESTS, WORKQUEUE_ADDS, WORKQUEUE_RETRIES, WATCH_EVENTS];
        for component in [Component::Allocator, Component::Agent] {
            let zero: Vec<&str> = zero_series(component).into_iter().map(|(n, _)| n).collect();
            for def in ALL.iter().filter(|d| d.kind == Kind::Counter) {
                if def.components.is_empty() || def.components.contains(&component) {
                    assert!(zero.contains(&def.name) || later.contains(&def.name), "{} {component:?}", def.name);
                }
            }
        }
    }

    #[test]
    fn names_follow_the_contract() {
        let mut seen = std::collections::HashSet::new();
        for def in ALL {
            assert!(def.name.starts_with("purelb_"), "{}", def.name);
            assert!(seen.insert(def.name), "duplicate {}", def.name);
            assert!(!def.help.is_empty());
            if def.kind == Kind::Counter {
                assert!(def.name.ends_with("_total"), "{}", def.name);
            }
        }
    }
}
