//! The soak's oracle: which lab node must hold which Service address, computed from the raw
//! cluster objects by a deliberately simple implementation written from the documents, not
//! from the product (issue 15, part 2). It shares no code with the agent's decision, election
//! and endpoint modules; the test `the_oracle_does_not_use_the_products_decision_code` reads
//! this file and fails if it names them. A proptest (`oracle::tests`) keeps the two agreeing
//! on random worlds.
//!
//! The rules, and where they are written:
//!
//! - **Which Services**: those with addresses in `status.loadBalancer.ingress` and the pool type
//!   the allocator wrote, `purelb.io/pool-type: local|remote` (`api.md` §2; `docs/agent.md`).
//! - **Live nodes** (`api.md` §3): the Lease `purelb-node-<node>` with `holderIdentity` = node and
//!   `renewTime + leaseDurationSeconds` in the future. `purelb.io/subnets` lists the node's
//!   subnets (comma-separated CIDRs). `purelb.io/draining: "true"`: peers elect as if the node
//!   were gone.
//! - **Local addresses** (`api.md` §1, §3): one node, the candidate with the lowest SHA-256 of
//!   `<node>#<address in canonical text>` (IPv4-mapped IPv6 written as IPv4, as Go prints it:
//!   `docs/design.md`); candidates are live, non-draining nodes with a subnet containing the
//!   address. With `externalTrafficPolicy: Local`, only candidates with a usable endpoint, and
//!   nobody when none has one (`docs/agent.md`, `docs/troubleshooting.md`).
//! - **Shared local addresses** (`docs/agent.md`, "A shared local address is elected once"):
//!   without a `Local` Service, the hash winner; with some, the winner among candidates with a
//!   usable endpoint for every `Local` Service, else for at least one; else, when a `Cluster`
//!   Service shares it, the hash winner; else nobody.
//! - **Remote addresses** (`api.md` §1, `docs/agent.md`): every node, on the dummy interface;
//!   with `externalTrafficPolicy: Local` only nodes with a usable endpoint. An address several
//!   Services use is held while any of them needs it.
//! - **A local and a remote Service sharing one address**: local wins, one holder
//!   (`docs/agent.md`, "Shared addresses").
//! - **Usable endpoint** (Kubernetes' EndpointSlice API and kube-proxy's rules for
//!   `externalTrafficPolicy: Local`; `docs/design.md` for duplicates): slices belong to the
//!   Service named by their `kubernetes.io/service-name` label in the Service's namespace, whoever
//!   manages them; a slice counts only for the family of its `addressType` (`IPv4`, `IPv6`; never
//!   `FQDN`); an endpoint is its first address on its `nodeName` (none or empty: on no node);
//!   absent `ready` and `serving` mean true, absent `terminating` false; a node is usable with a
//!   ready endpoint or, failing that, one that is serving while terminating; an endpoint (address
//!   on a node) listed by several slices counts only as its worst listing.
//!
//! Entry point: [`expectation`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use purelb::k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::Service,
        discovery::v1::{EndpointConditions, EndpointSlice},
    },
    jiff::{SignedDuration, Timestamp},
};
use sha2::{Digest, Sha256};

/// How an address is announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// On the LAN interface of the one elected node (`purelb.io/pool-type: local`).
    Local,
    /// On the dummy interface of every eligible node (`purelb.io/pool-type: remote`).
    Remote,
}

impl Kind {
    /// `local` or `remote`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
        }
    }
}

/// Who should hold one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Local (one elected node, LAN interface) or remote (every eligible node, dummy interface).
    pub kind: Kind,
    /// The lab nodes that should hold it (empty: nobody, e.g. no usable endpoint or no live
    /// candidate, or the winner is not a lab node).
    pub nodes: BTreeSet<String>,
}

/// Who should hold every address PureLB handles, by address.
pub type Expectation = BTreeMap<IpAddr, Expected>;

/// The cluster objects the expectation is computed from.
#[derive(Clone, Copy, Debug)]
pub struct World<'a> {
    /// Every Service.
    pub services: &'a [Service],
    /// Every Lease of the install namespace.
    pub leases: &'a [Lease],
    /// Every EndpointSlice.
    pub slices: &'a [EndpointSlice],
    /// The lab's nodes.
    pub nodes: &'a [String],
    /// Wall-clock time (for Lease expiry).
    pub now: Timestamp,
}

/// The pool type the allocator wrote on a Service (`purelb.io/pool-type`), if any.
#[must_use]
pub fn pool_kind(svc: &Service) -> Option<Kind> {
    let value = svc.metadata.annotations.as_ref()?.get("purelb.io/pool-type")?;
    match value.trim() {
        "local" => Some(Kind::Local),
        "remote" => Some(Kind::Remote),
        _ => None,
    }
}

/// The addresses in `status.loadBalancer.ingress[].ip` (entries without an address skipped).
#[must_use]
pub fn ingress_addresses(svc: &Service) -> Vec<IpAddr> {
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.trim().parse().ok()).collect()
}

/// One Service using an address.
struct User<'a> {
    svc: &'a Service,
    kind: Kind,
    traffic_policy_local: bool,
}

/// Who should hold what.
#[must_use]
pub fn expectation(world: &World<'_>) -> Expectation {
    let live = live_nodes(world.leases, world.now);
    let mut users: BTreeMap<IpAddr, Vec<User<'_>>> = BTreeMap::new();
    for svc in world.services {
        let Some(kind) = pool_kind(svc) else { continue };
        let traffic_policy_local =
            svc.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local");
        for ip in ingress_addresses(svc) {
            users.entry(ip).or_default().push(User { svc, kind, traffic_policy_local });
        }
    }
    let mut expected = Expectation::new();
    for (ip, users) in users {
        let usable = |user: &User<'_>, node: &str| has_usable_endpoint(world.slices, user.svc, ip, node);
        let local: Vec<&User<'_>> = users.iter().filter(|u| u.kind == Kind::Local).collect();
        let (kind, nodes) = if local.is_empty() {
            // Remote: every node that one of the Services needs.
            let nodes = world
                .nodes
                .iter()
                .filter(|node| users.iter().any(|u| !u.traffic_policy_local || usable(u, node)))
                .cloned()
                .collect();
            (Kind::Remote, nodes)
        } else {
            // Local (a remote Service sharing the address changes nothing: local wins).
            let candidates: Vec<&str> = live
                .iter()
                .filter(|(_, n)| !n.draining && n.subnets.iter().any(|s| s.contains(ip)))
                .map(|(name, _)| name.as_str())
                .collect();
            let policy_local: Vec<&User<'_>> = local.iter().copied().filter(|u| u.traffic_policy_local).collect();
            let winner = if policy_local.is_empty() {
                lowest_hash(candidates.iter().copied(), ip)
            } else {
                let for_all = candidates.iter().copied().filter(|n| policy_local.iter().all(|u| usable(u, n)));
                let for_any = candidates.iter().copied().filter(|n| policy_local.iter().any(|u| usable(u, n)));
                let cluster_shares = local.iter().any(|u| !u.traffic_policy_local);
                lowest_hash(for_all, ip)
                    .or_else(|| lowest_hash(for_any, ip))
                    .or_else(|| if cluster_shares { lowest_hash(candidates.iter().copied(), ip) } else { None })
            };
            let nodes = winner.filter(|w| world.nodes.iter().any(|n| n == w)).map(str::to_owned).into_iter().collect();
            (Kind::Local, nodes)
        };
        expected.insert(ip, Expected { kind, nodes });
    }
    expected
}

/// The candidate with the lowest SHA-256 of `<node>#<address>`.
fn lowest_hash<'n>(candidates: impl Iterator<Item = &'n str>, ip: IpAddr) -> Option<&'n str> {
    // Canonical text: RFC 5952 for IPv6 (Rust's `Display`), IPv4-mapped IPv6 as IPv4.
    let text = ip.to_canonical().to_string();
    candidates.min_by_key(|node| {
        let key: [u8; 32] = Sha256::digest(format!("{node}#{text}")).into();
        (key, *node)
    })
}

/// A live node, from its Lease.
struct LiveNode {
    subnets: Vec<Cidr>,
    draining: bool,
    expires: Timestamp,
}

/// The live nodes by name.
fn live_nodes(leases: &[Lease], now: Timestamp) -> BTreeMap<String, LiveNode> {
    let mut live: BTreeMap<String, LiveNode> = BTreeMap::new();
    for lease in leases {
        let Some(node) = lease.metadata.name.as_deref().and_then(|n| n.strip_prefix("purelb-node-")) else { continue };
        let Some(spec) = &lease.spec else { continue };
        if node.is_empty() || spec.holder_identity.as_deref() != Some(node) {
            continue;
        }
        let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else { continue };
        // Past the end of time is still in the future.
        let expires = renewed.0.checked_add(SignedDuration::from_secs(i64::from(seconds))).unwrap_or(Timestamp::MAX);
        if expires <= now {
            continue;
        }
        let annotation = |key: &str| lease.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str);
        let subnets = annotation("purelb.io/subnets").unwrap_or_default().split(',').filter_map(Cidr::parse).collect();
        let draining = annotation("purelb.io/draining").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        // One Lease per node; should there be two, the one that lives longer counts.
        if live.get(node).is_none_or(|other| other.expires < expires) {
            live.insert(node.to_owned(), LiveNode { subnets, draining, expires });
        }
    }
    live
}

/// A subnet, `address/prefix`.
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = text.trim().split_once('/')?;
        let network: IpAddr = address.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then_some(Self { network, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        // Both as 128-bit numbers with the address left-aligned, so the prefix counts from the top.
        let left_aligned = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (false, u128::from(u32::from(v4)) << 96),
            IpAddr::V6(v6) => (true, u128::from(v6)),
        };
        let (net_v6, net) = left_aligned(self.network);
        let (ip_v6, ip) = left_aligned(ip.to_canonical());
        let differing = net ^ ip;
        net_v6 == ip_v6 && (self.prefix == 0 || differing >> (128 - u32::from(self.prefix)) == 0)
    }
}

/// How far one listing says an endpoint can take traffic, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Readiness {
    NotServing,
    ServingTerminating,
    Ready,
}

fn readiness(conditions: Option<&EndpointConditions>) -> Readiness {
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    if ready {
        Readiness::Ready
    } else if serving && terminating {
        Readiness::ServingTerminating
    } else {
        Readiness::NotServing
    }
}

/// Whether `node` has a usable endpoint of `svc` in the family of `ip`.
fn has_usable_endpoint(slices: &[EndpointSlice], svc: &Service, ip: IpAddr, node: &str) -> bool {
    let namespace = svc.metadata.namespace.as_deref().unwrap_or_default();
    let Some(name) = svc.metadata.name.as_deref() else { return false };
    let address_type = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    // Every listing of an endpoint (its address) on `node`, judged by the worst.
    let mut worst: BTreeMap<IpAddr, Readiness> = BTreeMap::new();
    for slice in slices {
        let label = slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"));
        let ours = slice.metadata.namespace.as_deref().unwrap_or_default() == namespace
            && label.is_some_and(|l| l == name)
            && slice.address_type == address_type;
        if !ours {
            continue;
        }
        for endpoint in &slice.endpoints {
            if endpoint.node_name.as_deref() != Some(node) {
                continue;
            }
            let Some(address) = endpoint.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
            if address.is_ipv4() != ip.is_ipv4() {
                continue;
            }
            let this = readiness(endpoint.conditions.as_ref());
            worst.entry(address).and_modify(|w| *w = (*w).min(this)).or_insert(this);
        }
    }
    worst.values().any(|r| *r >= Readiness::ServingTerminating)
}

#[cfg(test)]
mod tests;
