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
};

use k8s_openapi::api::core::v1::Service;

use crate::{
    api::contract,
    core::{
        election::{Members, Winner},
        endpoints::{EndpointIndex, ServiceKey},
        ipam::{Family, ParsedPools},
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

/// What this node must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
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

fn traffic_policy_local(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local")
}

/// Decides what `inputs.node` must hold.
#[must_use]
pub fn decide<'s>(services: impl IntoIterator<Item = &'s Service>, inputs: &Inputs<'_>) -> Decision {
    let mut decision = Decision::default();
    for svc in services {
        let Some(kind) = pool_kind(svc) else { continue };
        let key = ServiceKey::of_service(svc);
        let local_policy = traffic_policy_local(svc);
        let group = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(contract::ANNOTATION_ALLOCATED_FROM))
            .and_then(|name| inputs.groups.get(name));
        for ip in ingress_addresses(svc) {
            decision.considered.push((key.clone(), ip, kind));
            let family = Family::of(ip);
            let usable = |node: &str| inputs.endpoints.has_usable_endpoint(&key, family, node);
            let mine = match kind {
                Kind::Local if local_policy => match inputs.members.winner_preferring(ip, usable) {
                    Winner::Preferred(node) => {
                        let mine = node == inputs.node;
                        decision.winners.insert(ip, Some(node));
                        mine
                    }
                    Winner::Fallback(node) => {
                        decision.no_endpoint.push(NoEndpoint { service: key.clone(), ip, reporter: Some(node) });
                        false
                    }
                    Winner::None => false,
                },
                Kind::Local => inputs.members.winner(ip) == Some(inputs.node),
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
            // Shared address used by a local and a remote Service: local wins (one holder).
            if kind == Kind::Local && entry.kind == Kind::Remote {
                entry.kind = Kind::Local;
                entry.nodad = nodad;
            }
            entry.services.push(key.clone());
            entry.services.sort();
            entry.services.dedup();
        }
    }
    decision
}

#[cfg(test)]
mod tests;
