//! `purelb explain service NAMESPACE/NAME`: how the Service's addresses were chosen and, per
//! address, who must announce it and why, next to who does (the agents' Leases).
//!
//! Nothing here re-implements a rule: the group and addresses come from the allocation table
//! rebuilt as the allocator rebuilds it ([`super::model`]), and the nodes that must hold each
//! address from [`crate::agent::decide::decide`], run for every live node with the same inputs
//! an agent has (the Services, the members from the Leases, the EndpointSlices, the groups).
//! What the report adds is the per-node detail (live, subnet, endpoint, hash rank) and the
//! comparison with the actual holders: a difference is a finding.

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr, time::Instant};

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use serde::Serialize;

use super::{
    model::{Handling, Model},
    output::table,
    snapshot::Snapshot,
};
use crate::{
    agent::decide::{self, Inputs, Kind},
    allocator::{
        request::{ServiceKey, ServiceRequest},
        table::{Decision, Holding},
    },
    api::contract,
    core::{
        election::{self, election_key},
        endpoints::EndpointIndex,
        ipam::Family,
    },
};

/// One node's part in the election of one address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeDetail {
    /// The node.
    pub node: String,
    /// Its Lease is live.
    pub live: bool,
    /// It is handing its addresses over.
    pub draining: bool,
    /// One of its subnets contains the address (local addresses only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_match: Option<bool>,
    /// It has a ready (or serving) endpoint of the Service (`externalTrafficPolicy: Local`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usable_endpoint: Option<bool>,
    /// It may be elected: live, not draining, subnet match.
    pub candidate: bool,
    /// Its place among the candidates by election hash (1 = lowest hash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// The first 8 hex digits of SHA-256(`node#address`).
    pub hash: String,
}

/// One address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressDetail {
    /// The address.
    pub address: String,
    /// `local` (one elected node) or `remote` (every eligible node, routed).
    pub kind: String,
    /// The ServiceGroup range it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    /// Every node with a Lease.
    pub nodes: Vec<NodeDetail>,
    /// The nodes that must hold it, by the agents' rules.
    pub predicted: Vec<String>,
    /// Why those.
    pub rule: String,
    /// The nodes that say they hold it (`node` or `node (interface)`).
    pub held_by: Vec<String>,
    /// Routed addresses: the predicted holders with an Established BGP session.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub advertised_by: Vec<String>,
    /// Predicted and actual holders are the same nodes.
    pub agrees: bool,
}

/// How the Service got its addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// The ServiceGroup.
    pub group: String,
    /// `local`, `remote`, `netbox`.
    pub pool_type: String,
    /// Why that group.
    pub why: String,
    /// The sharing key (`purelb.io/allow-shared-ip`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sharing_key: Option<String>,
    /// Other Services on the same addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
    /// This Service's protocol/port pairs (they must not collide with the sharers').
    pub ports: Vec<String>,
}

/// The whole explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// `namespace/name`.
    pub service: String,
    /// PureLB handles it.
    pub handled: bool,
    /// Why it is (not) handled.
    pub handling: String,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: String,
    /// How the addresses were chosen (absent without addresses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    /// What the allocator would do with the Service now.
    pub allocator: String,
    /// Per address.
    pub addresses: Vec<AddressDetail>,
    /// Disagreements and problems (empty: none).
    pub findings: Vec<String>,
}

/// Why `explain` cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// Not `namespace/name`.
    #[error("{0:?} is not NAMESPACE/NAME (for example: purelb explain service default/web)")]
    BadName(String),
    /// No such LoadBalancer Service.
    #[error("Service {0} not found, or it is not of type LoadBalancer")]
    NotFound(String),
}

/// Parses `NAMESPACE/NAME`.
///
/// # Errors
///
/// Not of that shape.
pub fn parse_key(text: &str) -> Result<ServiceKey, ExplainError> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(ServiceKey::new(ns, name)),
        _ => Err(ExplainError::BadName(text.to_owned())),
    }
}

/// The Services whose endpoints matter for `key`'s addresses: itself and every Service using
/// one of its addresses (an address shared by `Local` Services is elected on all of them).
#[must_use]
pub fn sharers(snapshot: &Snapshot, key: &ServiceKey) -> Vec<ServiceKey> {
    let Some(svc) = snapshot.services.iter().find(|s| ServiceKey::of_service(s) == *key) else { return Vec::new() };
    let mine: BTreeSet<IpAddr> = decide::ingress_addresses(svc).into_iter().collect();
    let mut out: Vec<ServiceKey> = snapshot
        .services
        .iter()
        .filter(|s| decide::ingress_addresses(s).iter().any(|ip| mine.contains(ip)))
        .map(ServiceKey::of_service)
        .collect();
    out.sort();
    out.dedup();
    out
}

fn handling_text(req: &ServiceRequest, svc: &Service, handling: &Handling) -> String {
    let class = svc.spec.as_ref().and_then(|s| s.load_balancer_class.clone());
    match (req.handled, class) {
        (true, Some(c)) => format!("yes: spec.loadBalancerClass is {c}"),
        (true, None) => {
            "yes: no spec.loadBalancerClass, and the allocator handles Services without one (--default-announcer)"
                .to_owned()
        }
        (false, Some(c)) => format!("no: spec.loadBalancerClass is {c}, not {}", handling.lb_class),
        (false, None) => {
            "no: no spec.loadBalancerClass and the allocator runs with --default-announcer=false".to_owned()
        }
    }
}

fn why_group(req: &ServiceRequest, model: &Model, holding: &Holding) -> String {
    if !req.pinned.is_empty() {
        let pins: Vec<String> = req.pinned.iter().map(ToString::to_string).collect();
        let source = if req.deprecated_lb_ip { "spec.loadBalancerIP" } else { "the purelb.io/addresses annotation" };
        return format!("{} pinned by {source} lie(s) in its ranges", pins.join(", "));
    }
    if let Some(name) = &req.group {
        return format!("named by the purelb.io/service-group annotation ({name})");
    }
    let ns = &req.key.namespace;
    match model.groups.default_for(ns) {
        Some(g) if g.name == holding.group && g.lists(ns) && g.namespace_default => {
            format!("it lists namespace {ns} in spec.namespaces and sets namespaceDefault")
        }
        Some(g) if g.name == holding.group && g.lists(ns) => format!("it lists namespace {ns} in spec.namespaces"),
        Some(g) if g.name == holding.group => {
            format!("it is the group named \"default\", used by namespaces no group lists (namespace {ns})")
        }
        _ => "the Service had it already: a Service keeps its group until it asks for another".to_owned(),
    }
}

fn hex8(bytes: &[u8; 32]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Explains `key` from `snapshot` (whose slices should be those of [`sharers`]).
///
/// # Errors
///
/// The Service is not in the snapshot.
pub fn explain(snapshot: &Snapshot, handling: &Handling, key: &ServiceKey) -> Result<Explanation, ExplainError> {
    let svc = snapshot
        .services
        .iter()
        .find(|s| ServiceKey::of_service(s) == *key)
        .ok_or_else(|| ExplainError::NotFound(key.to_string()))?;
    let model = Model::build(snapshot, handling);
    let req = model.requests.get(key).cloned().ok_or_else(|| ExplainError::NotFound(key.to_string()))?;
    let mut findings: Vec<String> = req.errors.iter().map(ToString::to_string).collect();
    if let Some(why) = model.unadoptable.get(key) {
        findings.push(format!("the allocator cannot keep the address this Service shows: {why}"));
    }
    let holding = model.table.holding(key).cloned();
    let mut table = model.table.clone();
    let allocator = match table.decide(&req, &snapshot.namespace) {
        Decision::NotHandled => "leaves it alone (not handled, holds nothing)".to_owned(),
        Decision::Released(h) => {
            findings
                .push(format!("the allocator will release {} (the Service is no longer handled)", join(&h.addresses)));
            "releases its addresses".to_owned()
        }
        Decision::Keep { warnings, .. } => {
            findings.extend(warnings);
            "keeps its addresses".to_owned()
        }
        Decision::Changed { assigned, released, .. } => {
            if released.is_empty() {
                format!("assigns {} (not written yet)", join(&assigned))
            } else {
                findings.push(format!(
                    "the allocator would replace {} by {}: the Service's annotations or the ServiceGroups changed",
                    join(&released),
                    join(&assigned)
                ));
                format!("replaces {} by {}", join(&released), join(&assigned))
            }
        }
        Decision::Failed { failure, kept } => {
            findings.push(format!("allocation fails: {}", failure.message));
            match kept {
                Some(h) => {
                    format!("keeps {} but cannot do what the Service asks: {}", join(&h.addresses), failure.message)
                }
                None => format!("cannot allocate: {}", failure.message),
            }
        }
    };
    let allocation = holding.as_ref().map(|h| {
        let mut shared_with: Vec<String> = h
            .addresses
            .iter()
            .flat_map(|ip| model.table.users_of(*ip))
            .filter(|k| k != key)
            .map(|k| k.to_string())
            .collect();
        shared_with.sort();
        shared_with.dedup();
        Allocation {
            group: h.group.clone(),
            pool_type: h.pool_type.as_str().to_owned(),
            why: why_group(&req, &model, h),
            sharing_key: h.sharing_key.clone(),
            shared_with,
            ports: h.ports.iter().map(|(p, n)| format!("{p}/{n}")).collect(),
        }
    });

    // The agents' decision, for every node with a live Lease.
    let (groups, _) = decide::parse_groups(&snapshot.groups);
    let mut endpoints = EndpointIndex::new();
    let now = Instant::now();
    for slice in &snapshot.slices {
        endpoints.apply(slice, now);
    }
    let live: Vec<String> = model.members.iter().map(|m| m.node.clone()).collect();
    let decisions: Vec<(String, decide::Decision)> = live
        .iter()
        .map(|node| {
            let inputs = Inputs { node, members: &model.members, endpoints: &endpoints, groups: &groups };
            (node.clone(), decide::decide(&snapshot.services, &inputs))
        })
        .collect();
    let local_policy = svc.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local");
    let kind = decide::pool_kind(svc);
    let lease_nodes: BTreeSet<String> = snapshot
        .leases
        .iter()
        .filter_map(|l| l.name_any().strip_prefix(contract::NODE_LEASE_PREFIX).map(str::to_owned))
        .collect();
    let bgp_up: BTreeSet<String> = snapshot
        .leases
        .iter()
        .filter(|l| {
            l.annotations().get(contract::LEASE_ANNOTATION_BGP).is_some_and(|v| {
                v.split(',').any(|e| e.split_once('=').is_some_and(|(_, s)| s.trim() == "Established"))
            })
        })
        .filter_map(|l| l.name_any().strip_prefix(contract::NODE_LEASE_PREFIX).map(str::to_owned))
        .collect();

    let mut addresses = Vec::new();
    for ip in decide::ingress_addresses(svc) {
        let family = Family::of(ip);
        // An address a local Service uses is local for every Service on it.
        let effective = decisions
            .iter()
            .find_map(|(_, d)| d.wanted.get(&ip).map(|w| w.kind))
            .or_else(|| decisions.first().and_then(|(_, d)| d.winners.contains_key(&ip).then_some(Kind::Local)))
            .or(kind);
        let local = effective == Some(Kind::Local);
        let mut candidates: Vec<(String, [u8; 32])> =
            model.members.candidates(ip).map(|m| (m.node.clone(), election_key(&m.node, ip))).collect();
        candidates.sort_by_key(|c| c.1);
        let mut nodes = Vec::new();
        for node in &lease_nodes {
            let member = model.members.get(node);
            let candidate = member.is_some_and(|m| m.is_candidate_for(ip));
            nodes.push(NodeDetail {
                node: node.clone(),
                live: member.is_some(),
                draining: member.is_some_and(|m| m.draining),
                subnet_match: local
                    .then(|| member.is_some_and(|m| m.subnets.iter().any(|s| s.contains(ip.to_canonical())))),
                usable_endpoint: local_policy.then(|| endpoints.has_usable_endpoint(key, family, node)),
                candidate: if local { candidate } else { member.is_some_and(|m| !m.draining) },
                rank: local.then(|| candidates.iter().position(|(n, _)| n == node).map(|p| p + 1)).flatten(),
                hash: hex8(&election_key(node, ip)),
            });
        }
        let predicted: Vec<String> =
            decisions.iter().filter(|(_, d)| d.wanted.contains_key(&ip)).map(|(n, _)| n.clone()).collect();
        let refused = decisions.first().and_then(|(_, d)| d.refused.iter().find(|r| r.ip == ip).map(|r| r.why.clone()));
        let rule = if let Some(why) = refused {
            findings.push(format!("{ip} is {why}: no node may announce it"));
            format!("nobody: {ip} is {why}")
        } else if local {
            let no_endpoint = decisions.first().is_some_and(|(_, d)| d.no_endpoint.iter().any(|n| n.ip == ip));
            match predicted.as_slice() {
                [] if candidates.is_empty() => {
                    "nobody: no live, non-draining node has a subnet containing it".to_owned()
                }
                [] if no_endpoint => {
                    "nobody: externalTrafficPolicy is Local and no candidate has a usable endpoint".to_owned()
                }
                [] => "nobody".to_owned(),
                [one] if local_policy => format!(
                    "{one}: the lowest hash among the candidates with a usable endpoint (externalTrafficPolicy: Local)"
                ),
                [one] => format!("{one}: the lowest hash among the candidates"),
                many => format!("{} (more than one: a bug, please report it)", many.join(", ")),
            }
        } else if local_policy {
            "every live node with a usable endpoint (remote address, externalTrafficPolicy: Local)".to_owned()
        } else {
            "every live node (remote address: on the dummy interface, routed)".to_owned()
        };
        let holders = model.members.holders_of(ip);
        let held_by: Vec<String> = holders.iter().map(election::Holder::describe).collect();
        let held_nodes: BTreeSet<&str> = holders.iter().map(|h| h.node.as_str()).collect();
        let predicted_nodes: BTreeSet<&str> = predicted.iter().map(String::as_str).collect();
        let agrees = held_nodes == predicted_nodes;
        if !agrees {
            findings.push(format!(
                "{ip}: predicted {}, held by {} (a handover in progress, or a problem if it lasts: check the agents' logs)",
                if predicted.is_empty() { "nobody".to_owned() } else { predicted.join(", ") },
                if held_by.is_empty() { "nobody".to_owned() } else { held_by.join(", ") },
            ));
        }
        let advertised_by: Vec<String> =
            if local { Vec::new() } else { predicted.iter().filter(|n| bgp_up.contains(*n)).cloned().collect() };
        let range = holding.as_ref().and_then(|h| {
            model
                .groups
                .valid
                .get(&h.group)
                .and_then(|g| g.pools.all().find(|r| r.range.contains(ip)).map(|r| r.text.clone()))
        });
        addresses.push(AddressDetail {
            address: ip.to_string(),
            kind: if local { "local" } else { "remote" }.to_owned(),
            range,
            nodes,
            predicted,
            rule,
            held_by,
            advertised_by,
            agrees,
        });
    }
    Ok(Explanation {
        service: key.to_string(),
        handled: req.handled,
        handling: handling_text(&req, svc, handling),
        external_traffic_policy: svc
            .spec
            .as_ref()
            .and_then(|s| s.external_traffic_policy.clone())
            .unwrap_or_else(|| "Cluster".to_owned()),
        allocation,
        allocator,
        addresses,
        findings,
    })
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn opt(b: Option<bool>) -> String {
    match b {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => "-".to_owned(),
    }
}

impl Explanation {
    /// The explanation as text.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Service {}", self.service);
        let _ = writeln!(out, "  Handled:    {}", self.handling);
        let _ = writeln!(out, "  Traffic:    externalTrafficPolicy {}", self.external_traffic_policy);
        if let Some(a) = &self.allocation {
            let _ = writeln!(out, "  Group:      {} ({}): {}", a.group, a.pool_type, a.why);
            if let Some(k) = &a.sharing_key {
                let with =
                    if a.shared_with.is_empty() { "no other Service yet".to_owned() } else { a.shared_with.join(", ") };
                let _ = writeln!(
                    out,
                    "  Sharing:    key {k:?}, with {with}; ports {} (must not collide)",
                    a.ports.join(", ")
                );
            } else if !a.shared_with.is_empty() {
                let _ = writeln!(out, "  Sharing:    with {}", a.shared_with.join(", "));
            }
        }
        let _ = writeln!(out, "  Allocator:  {}", self.allocator);
        for a in &self.addresses {
            let _ = writeln!(out);
            let range = a.range.as_ref().map_or(String::new(), |r| format!(", from range {r}"));
            let _ = writeln!(out, "Address {} ({}{range})", a.address, a.kind);
            let rows = a
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        n.node.clone(),
                        opt(Some(n.live)),
                        opt(Some(n.draining)),
                        opt(n.subnet_match),
                        opt(n.usable_endpoint),
                        opt(Some(n.candidate)),
                        n.rank.map_or_else(|| "-".to_owned(), |r| r.to_string()),
                        n.hash.clone(),
                    ]
                })
                .collect();
            for line in
                table(&["NODE", "LIVE", "DRAINING", "SUBNET", "ENDPOINT", "CANDIDATE", "RANK", "HASH"], rows).lines()
            {
                let _ = writeln!(out, "  {line}");
            }
            let _ = writeln!(out, "  Must hold:  {}", a.rule);
            let held = if a.held_by.is_empty() { "nobody".to_owned() } else { a.held_by.join(", ") };
            let _ = writeln!(
                out,
                "  Held by:    {held}{}",
                if a.agrees { " (as predicted)" } else { " (NOT as predicted)" }
            );
            if !a.advertised_by.is_empty() {
                let _ = writeln!(out, "  BGP:        advertised by {}", a.advertised_by.join(", "));
            }
        }
        let _ = writeln!(out);
        if self.findings.is_empty() {
            let _ = writeln!(out, "Findings: none");
        } else {
            let _ = writeln!(out, "Findings:");
            for f in &self.findings {
                let _ = writeln!(out, "  - {f}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
