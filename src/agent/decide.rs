//! The agent's pure decisions: which addresses this node must hold, from snapshots of the
//! Services, the member table (node Leases), the ServiceGroups and the endpoint index. No IO,
//! no clock; the controller ([`super::controller`]) applies the result to the kernel.
//!
//! Entry point: [`decide`]. Rules (`api.md` §3, issue 6):
//!
//! - only Services with `status.loadBalancer.ingress` and `purelb.io/pool-type` (written by the
//!   allocator) are considered;
//! - `local`: the election winner among live, non-draining candidates whose subnets contain the
//!   address holds it; with `externalTrafficPolicy: Local` only candidates with a usable local
//!   endpoint, and nobody when none has one ([`Decision::no_endpoint`]);
//! - `remote`: every node holds it (with `externalTrafficPolicy: Local`: only nodes with a usable
//!   local endpoint) on the dummy interface with the group's aggregation prefix;
//! - an address several Services use is held while any of them needs it.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    ops::Deref,
};

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use crate::{
    api::{NetboxSpec, ServiceGroup, contract},
    core::{
        election::{ElectionChanges, Members, Winner},
        endpoints::{EndpointIndex, ServiceKey},
        ipam::{AddressRange, Family, ParsedPools, ParsedRange, Subnet, parse_aggregation, parse_pool_spec},
    },
};

/// How an address is announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// On the LAN interface of the one elected node.
    Local,
    /// On the dummy interface of every eligible node.
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

/// An address this node must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The address.
    pub ip: IpAddr,
    /// How it is announced.
    pub kind: Kind,
    /// The Services that need it (sorted).
    pub services: Vec<ServiceKey>,
    /// `skipIPv6DAD` of the group (local only).
    pub nodad: bool,
    /// Prefix length on the dummy interface (remote only): the range's aggregation, else the
    /// family's full length when the group cannot be read.
    pub aggregation: u8,
}

/// A local address nobody announces because no candidate has a usable endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoEndpoint {
    /// The Service.
    pub service: ServiceKey,
    /// The address.
    pub ip: IpAddr,
    /// The node that would win without the endpoint rule (it reports the Warning, so that one
    /// node, not all, publishes it).
    pub reporter: Option<String>,
}

/// An address in a Service's status that no node may put on an interface: special-purpose, or
/// the network or broadcast address of its local pool's IPv4 subnet (defence in depth: the
/// allocator never hands these out, but someone else may write the status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The Service.
    pub service: ServiceKey,
    /// The address.
    pub ip: IpAddr,
    /// What the address is.
    pub why: String,
    /// The node that reports the Warning (the hash winner), so that one node publishes it.
    pub reporter: Option<String>,
}

/// What this node must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Addresses that must never be announced (for Events).
    pub refused: Vec<Refused>,
    /// By address.
    pub wanted: BTreeMap<IpAddr, Wanted>,
    /// Local addresses of `externalTrafficPolicy: Local` Services without any usable endpoint.
    pub no_endpoint: Vec<NoEndpoint>,
    /// Every (Service, address, kind) that is PureLB's, held here or not (for Events).
    pub considered: Vec<(ServiceKey, IpAddr, Kind)>,
    /// The elected node of every local address (for `purelb_election_winner_changes_total`).
    pub winners: BTreeMap<IpAddr, Option<String>>,
}

/// The inputs of [`decide`] besides the Services.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// This node.
    pub node: &'a str,
    /// Members from the node Leases.
    pub members: &'a Members,
    /// EndpointSlice index.
    pub endpoints: &'a EndpointIndex,
    /// Valid ServiceGroups of the install namespace, by name.
    pub groups: &'a HashMap<String, ParsedPools>,
}

/// The pool type the allocator recorded on a Service, if it is one of ours.
#[must_use]
pub fn pool_kind(svc: &Service) -> Option<Kind> {
    let annotations = svc.metadata.annotations.as_ref()?;
    match annotations.get(contract::ANNOTATION_POOL_TYPE).map(|s| s.trim()) {
        Some("local") => Some(Kind::Local),
        Some("remote") => Some(Kind::Remote),
        _ => None,
    }
}

/// The addresses in `status.loadBalancer.ingress` (entries without a parsable `ip` skipped).
#[must_use]
pub fn ingress_addresses(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|list| list.iter().filter_map(|i| i.ip.as_deref()?.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// What the decision reads of a Service: implemented by the API object and by the agent's
/// cached summary of it (`agent::cached::CachedService`, a fifth of the memory).
pub trait ServiceFacts {
    /// `namespace/name`.
    fn key(&self) -> ServiceKey;
    /// The pool type the allocator recorded ([`pool_kind`]).
    fn pool_kind(&self) -> Option<Kind>;
    /// The addresses of the status ([`ingress_addresses`]).
    fn ingress_addresses(&self) -> Vec<IpAddr>;
    /// `spec.externalTrafficPolicy: Local`.
    fn local_traffic_policy(&self) -> bool;
    /// `purelb.io/allocated-from`.
    fn allocated_from(&self) -> Option<&str>;
}

impl ServiceFacts for Service {
    fn key(&self) -> ServiceKey {
        ServiceKey::of_service(self)
    }

    fn pool_kind(&self) -> Option<Kind> {
        pool_kind(self)
    }

    fn ingress_addresses(&self) -> Vec<IpAddr> {
        ingress_addresses(self)
    }

    fn local_traffic_policy(&self) -> bool {
        traffic_policy_local(self)
    }

    fn allocated_from(&self) -> Option<&str> {
        self.metadata.annotations.as_ref()?.get(contract::ANNOTATION_ALLOCATED_FROM).map(String::as_str)
    }
}

/// The valid `local` and `remote` ServiceGroups by name (the groups [`Inputs::groups`] wants),
/// and every range of them (the pool ranges of the ownership rule on kernels without address
/// marks). Invalid groups and `netbox` groups are left out.
#[must_use]
pub fn parse_groups<'a>(
    groups: impl IntoIterator<Item = &'a ServiceGroup>,
) -> (HashMap<String, ParsedPools>, Vec<AddressRange>) {
    let mut parsed_groups = HashMap::new();
    let mut ranges = Vec::new();
    for g in groups {
        let parsed = match (&g.spec.local, &g.spec.remote, &g.spec.netbox) {
            (Some(spec), None, None) => parse_pool_spec("spec.local", spec),
            (None, Some(spec), None) => parse_pool_spec("spec.remote", spec),
            (None, None, Some(netbox)) => {
                // Not in `ranges`: a netbox group's addresses are not known in advance, and the
                // ranges decide ownership on kernels without address marks.
                if let Some(parsed) = netbox_pools(netbox) {
                    parsed_groups.insert(g.name_any(), parsed);
                }
                continue;
            }
            _ => continue,
        };
        if let Ok(parsed) = parsed {
            ranges.extend(parsed.all().map(|r| r.range));
            parsed_groups.insert(g.name_any(), parsed);
        }
    }
    (parsed_groups, ranges)
}

/// A netbox group as the agent needs it: one range per family covering every address, with
/// the group's `aggregation` (default: a host route, /32 or /128, since the prefix NetBox
/// records is not known to the agent). `None` when the aggregation is invalid (the allocator
/// reports that on the ServiceGroup).
pub(crate) fn netbox_pools(netbox: &NetboxSpec) -> Option<ParsedPools> {
    let whole = |family: Family| -> Option<ParsedRange> {
        let (network, text) = match family {
            Family::V4 => (IpAddr::from([0u8; 4]), "0.0.0.0/0"),
            Family::V6 => (IpAddr::from([0u16; 8]), "::/0"),
        };
        let subnet = Subnet::new(network, 0);
        let aggregation =
            parse_aggregation("spec.netbox.aggregation", netbox.aggregation.as_deref(), family, family.bits()).ok()?;
        Some(ParsedRange {
            field: "spec.netbox".to_owned(),
            text: text.to_owned(),
            range: subnet.range(),
            subnet,
            aggregation,
        })
    };
    Some(ParsedPools { v4: vec![whole(Family::V4)?], v6: vec![whole(Family::V6)?], ..ParsedPools::default() })
}

/// Who holds a local address (the elected node's name itself goes to [`Decision::winners`]).
enum LocalChoice {
    /// A node; `true` when it is this one.
    Node(bool),
    /// Nobody: every Service of the address has `externalTrafficPolicy: Local` and no candidate
    /// has a usable endpoint; the node that would win without that rule reports it.
    NoEndpoint(Option<String>),
    /// No candidate at all.
    Nobody,
}

/// Elects the holder of a local address from all the local Services that use it (`sharers`,
/// each with whether it has `externalTrafficPolicy: Local`). Without a `Local` Service: the
/// hash winner. With some: the winner among candidates with a usable endpoint for every `Local`
/// Service, else for at least one of them; else, when a `Cluster` Service shares the address,
/// the hash winner (it serves from any node), else nobody. Returns the elected node too.
fn local_choice<'k>(
    ip: IpAddr,
    sharers: impl Iterator<Item = (&'k ServiceKey, bool)> + Clone,
    inputs: &Inputs<'_>,
) -> (LocalChoice, Option<String>) {
    let elected = |node: String| {
        let mine = node == inputs.node;
        (LocalChoice::Node(mine), Some(node))
    };
    let mut local = sharers.clone().filter(|(_, l)| *l).map(|(k, _)| k).peekable();
    if local.peek().is_none() {
        return inputs.members.winner(ip).map_or((LocalChoice::Nobody, None), |n| elected(n.to_owned()));
    }
    let family = Family::of(ip);
    let all = |node: &str| local.clone().all(|k| inputs.endpoints.has_usable_endpoint(k, family, node));
    if let Winner::Preferred(node) = inputs.members.winner_preferring(ip, all) {
        return elected(node);
    }
    let any = |node: &str| local.clone().any(|k| inputs.endpoints.has_usable_endpoint(k, family, node));
    match inputs.members.winner_preferring(ip, any) {
        Winner::Preferred(node) => elected(node),
        Winner::Fallback(node) if sharers.clone().any(|(_, l)| !l) => elected(node),
        Winner::Fallback(node) => (LocalChoice::NoEndpoint(Some(node)), None),
        Winner::None => (LocalChoice::Nobody, None),
    }
}

fn traffic_policy_local(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local")
}

/// A Service of ours (a pool type and at least one address) as [`decide`] reads it.
struct Ours<'s> {
    kind: Kind,
    key: ServiceKey,
    local_policy: bool,
    /// `purelb.io/allocated-from`.
    group: Option<&'s str>,
    ips: Vec<IpAddr>,
}

/// Decides what `inputs.node` must hold.
///
/// Its temporary memory is a few dozen bytes per Service besides the decision it returns (no
/// copy of a Service's key but the one `considered` keeps, no map per address): a full pass
/// over 50,000 Services must not grow the agent by its own size (docs/scale.md).
#[must_use]
pub fn decide<'s, S: ServiceFacts + 's>(services: impl IntoIterator<Item = &'s S>, inputs: &Inputs<'_>) -> Decision {
    let mut decision = Decision::default();
    // What each Service of ours says, read once (a pass covers every Service, so this loop is
    // the pass's cost per Service: docs/scale.md).
    let ours: Vec<Ours<'s>> = services
        .into_iter()
        .filter_map(|svc| {
            let kind = svc.pool_kind()?;
            let ips = svc.ingress_addresses();
            (!ips.is_empty()).then(|| Ours {
                kind,
                key: svc.key(),
                local_policy: svc.local_traffic_policy(),
                group: svc.allocated_from(),
                ips,
            })
        })
        .collect();
    // Every (address, Service) of a local Service, sorted by address, so that the address is
    // elected once from all its local Services, whatever the Services sharing it say (one
    // holder, never one per Service). A remote Service sharing it changes nothing (local wins,
    // docs/agent.md).
    let mut local_uses: Vec<(IpAddr, usize)> = ours
        .iter()
        .enumerate()
        .filter(|(_, o)| o.kind == Kind::Local)
        .flat_map(|(i, o)| o.ips.iter().map(move |ip| (*ip, i)))
        .collect();
    local_uses.sort_unstable();
    // The choice for a local address, made at its first use: at the position of its first
    // entry in `local_uses`.
    let mut choices: Vec<Option<LocalChoice>> = Vec::new();
    choices.resize_with(local_uses.len(), || None);
    decision.considered.reserve_exact(ours.iter().map(|o| o.ips.len()).sum());
    for Ours { kind, key, local_policy, group, ips } in &ours {
        let (kind, local_policy) = (*kind, *local_policy);
        let group = group.and_then(|name| inputs.groups.get(name));
        for &ip in ips {
            decision.considered.push((key.clone(), ip, kind));
            let refusal = crate::core::ipam::special::special_purpose(ip)
                .map(str::to_owned)
                .or_else(|| group.and_then(|g| g.skipped_reason(ip)).map(str::to_owned));
            if let Some(why) = refusal {
                let reporter = inputs.members.winner(ip).map(str::to_owned);
                decision.refused.push(Refused { service: key.clone(), ip, why, reporter });
                continue;
            }
            let family = Family::of(ip);
            let usable = |node: &str| inputs.endpoints.has_usable_endpoint(key, family, node);
            let first = local_uses.partition_point(|(a, _)| *a < ip);
            let uses = first..first + local_uses[first..].partition_point(|(a, _)| *a == ip);
            // An address a local Service uses is local for every Service on it (one holder).
            let kind = if uses.is_empty() { kind } else { Kind::Local };
            let mine = match kind {
                Kind::Local => {
                    let choice = choices[first].get_or_insert_with(|| {
                        let sharers =
                            local_uses[uses.clone()].iter().map(|&(_, i)| (&ours[i].key, ours[i].local_policy));
                        let (choice, elected) = local_choice(ip, sharers, inputs);
                        if let Some(node) = elected {
                            decision.winners.insert(ip, Some(node));
                        }
                        choice
                    });
                    match choice {
                        LocalChoice::Node(mine) => *mine,
                        LocalChoice::NoEndpoint(reporter) => {
                            if local_policy {
                                decision.no_endpoint.push(NoEndpoint {
                                    service: key.clone(),
                                    ip,
                                    reporter: reporter.clone(),
                                });
                            }
                            false
                        }
                        LocalChoice::Nobody => false,
                    }
                }
                Kind::Remote => !local_policy || usable(inputs.node),
            };
            if !mine {
                continue;
            }
            let range = group.and_then(|g| g.family(family).iter().find(|r| r.range.contains(ip)));
            let nodad = group.is_some_and(|g| g.skip_ipv6_dad);
            let aggregation = range.map_or(family.bits(), |r| r.aggregation);
            let entry = decision.wanted.entry(ip).or_insert_with(|| Wanted {
                ip,
                kind,
                services: Vec::new(),
                nodad,
                aggregation,
            });
            entry.services.push(key.clone());
            entry.services.sort();
            entry.services.dedup();
        }
    }
    decision
}

/// What [`Decision::redecide`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redecided {
    /// The Services decided again (sorted): the changed ones and those sharing an address with
    /// them, also transitively.
    pub services: Vec<ServiceKey>,
    /// Local addresses decided again whose elected node changed
    /// (`purelb_election_winner_changes_total`).
    pub winner_changes: usize,
}

impl Decision {
    /// Decides again after the Services `changed` changed (created, edited or deleted: their
    /// objects now, `None` when gone, come from `lookup`), nothing else having changed since
    /// this decision was made with the same `inputs` — or only the members' election, and then
    /// `changed` includes [`Self::services_touched_by`] those changes. Equal to [`decide`] over
    /// every Service (up to the order of the lists), at the cost of the Services that share an
    /// address with the changed ones instead of every Service (docs/scale.md, "The tail").
    pub fn redecide<S: Deref<Target = V>, V: ServiceFacts>(
        &mut self,
        changed: &[ServiceKey],
        lookup: impl Fn(&ServiceKey) -> Option<S>,
        inputs: &Inputs<'_>,
    ) -> Redecided {
        // The changed Services, as they are now (only PureLB's count).
        let now_ours = |key: &ServiceKey| -> Vec<IpAddr> {
            lookup(key).filter(|svc| svc.pool_kind().is_some()).map(|svc| svc.ingress_addresses()).unwrap_or_default()
        };
        // Every Service that shares an address with one decided again, until none is added:
        // an address is decided from all its Services at once. Sorted lists searched by
        // bisection: one or two comparisons per entry of `considered` for a Service change (a
        // hash of every key cost a millisecond per pass at 5,000 Services), a few more for the
        // thousands a membership change may bring.
        let mut services: Vec<ServiceKey> = changed.to_vec();
        services.sort();
        services.dedup();
        let mut frontier: Vec<ServiceKey> = services.clone();
        let mut ips: Vec<IpAddr> = Vec::new();
        while !frontier.is_empty() {
            let mut new_ips: Vec<IpAddr> = self
                .considered
                .iter()
                .filter(|(k, _, _)| frontier.binary_search(k).is_ok())
                .map(|(_, ip, _)| *ip)
                .collect();
            for key in &frontier {
                new_ips.extend(now_ours(key));
            }
            new_ips.sort();
            new_ips.dedup();
            new_ips.retain(|ip| ips.binary_search(ip).is_err());
            if new_ips.is_empty() {
                break;
            }
            frontier = self
                .considered
                .iter()
                .filter(|(k, ip, _)| new_ips.binary_search(ip).is_ok() && services.binary_search(k).is_err())
                .map(|(k, _, _)| k.clone())
                .collect();
            frontier.sort();
            frontier.dedup();
            ips.extend(new_ips);
            ips.sort();
            services.extend(frontier.iter().cloned());
            services.sort();
        }
        let objects: Vec<S> = services.iter().filter_map(&lookup).collect();
        let part = decide(objects.iter().map(Deref::deref), inputs);
        let winner_changes = part.winner_changes_since(self);
        let decided = |k: &ServiceKey| services.binary_search(k).is_ok();
        self.considered.retain(|(k, _, _)| !decided(k));
        self.considered.extend(part.considered);
        self.refused.retain(|r| !decided(&r.service));
        self.refused.extend(part.refused);
        self.no_endpoint.retain(|n| !decided(&n.service));
        self.no_endpoint.extend(part.no_endpoint);
        // Every Service of these addresses was decided again: their entries are replaced.
        self.wanted.retain(|ip, _| ips.binary_search(ip).is_err());
        self.wanted.extend(part.wanted);
        self.winners.retain(|ip, _| ips.binary_search(ip).is_err());
        self.winners.extend(part.winners);
        Redecided { services, winner_changes }
    }

    /// The Services with an address whose election `changes` may have changed (to decide
    /// again with [`Self::redecide`] after a membership change), sorted.
    #[must_use]
    pub fn services_touched_by(&self, changes: &ElectionChanges) -> Vec<ServiceKey> {
        if changes.is_empty() {
            return Vec::new();
        }
        let mut keys: Vec<ServiceKey> =
            self.considered.iter().filter(|(_, ip, _)| changes.touches(*ip)).map(|(k, _, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The local addresses whose elected node differs from `earlier`'s (addresses elected in
    /// only one of them do not count).
    #[must_use]
    pub fn winner_changes_since(&self, earlier: &Self) -> usize {
        self.winners.iter().filter(|(ip, w)| earlier.winners.get(*ip).is_some_and(|old| old != *w)).count()
    }
}

#[cfg(test)]
mod tests;
