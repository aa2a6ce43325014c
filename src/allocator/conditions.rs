//! Service conditions (`api.md` §9): `purelb.io/Allocated` and `purelb.io/Announced` in a
//! handled Service's `status.conditions`, computed here without IO and written by the allocator
//! on transitions only, with a strategic merge patch keyed on `type` (other controllers'
//! conditions survive).
//!
//! `Announced` is read from the agents' Leases (`purelb.io/announcing`), as the
//! `purelb.io/announcing-IPv4/-IPv6` annotations are. The allocator does not watch
//! EndpointSlices, so `NoUsableEndpoint` means: candidates exist, the Service has
//! `externalTrafficPolicy: Local`, and no node holds the address (the agents leave it unheld only
//! when no candidate has a ready local endpoint). `purelb explain` gives the per-node detail.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::{Value, json};

use super::table::{FailReason, Failure, Holding};
use crate::{
    api::PoolType,
    core::election::{self, Members},
};

/// Condition type: the Service has its addresses.
pub const ALLOCATED: &str = "purelb.io/Allocated";
/// Condition type: every address of the Service is held by a node.
pub const ANNOUNCED: &str = "purelb.io/Announced";
/// The condition types PureLB writes.
pub const TYPES: [&str; 2] = [ALLOCATED, ANNOUNCED];

/// Reasons (`api.md` §9).
pub mod reason {
    /// Allocated: the Service has its addresses.
    pub const ALLOCATED: &str = "Allocated";
    /// Allocated: no free address in the group.
    pub const POOL_EXHAUSTED: &str = "PoolExhausted";
    /// Allocated: an annotation (or `spec.loadBalancerIP`) cannot be honoured.
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
    /// Allocated: no usable group (unknown, invalid, namespace-scoped, wrong family).
    pub const NO_GROUP: &str = "NoGroup";
    /// Allocated / Announced: in progress (NetBox being asked; an elected node not there yet).
    pub const PENDING: &str = "Pending";
    /// Announced: every address is held.
    pub const ANNOUNCED: &str = "Announced";
    /// Announced: no live agent has a subnet containing the address.
    pub const NO_CANDIDATE_NODE: &str = "NoCandidateNode";
    /// Announced: `externalTrafficPolicy: Local` and no candidate has a ready endpoint.
    pub const NO_USABLE_ENDPOINT: &str = "NoUsableEndpoint";
    /// Announced: no agent has a live Lease.
    pub const NO_AGENT: &str = "NoAgent";
}

/// One condition as PureLB wants it (times are added when written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// `type`.
    pub kind: &'static str,
    /// `status`: True or False.
    pub status: bool,
    /// `reason` (CamelCase).
    pub reason: &'static str,
    /// `message`.
    pub message: String,
}

impl Wanted {
    fn new(kind: &'static str, status: bool, reason: &'static str, message: String) -> Self {
        Self { kind, status, reason, message }
    }

    /// `True` / `False`.
    #[must_use]
    pub fn status_text(&self) -> &'static str {
        if self.status { "True" } else { "False" }
    }
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The `Allocated` reason of a failure.
#[must_use]
pub fn failure_reason(reason: FailReason) -> &'static str {
    match reason {
        FailReason::PoolFull => reason::POOL_EXHAUSTED,
        FailReason::UnknownGroup | FailReason::InvalidGroup | FailReason::NamespaceDenied | FailReason::Family => {
            reason::NO_GROUP
        }
        FailReason::PortConflict
        | FailReason::SharingConflict
        | FailReason::OutsidePools
        | FailReason::Reserved
        | FailReason::Malformed => reason::INVALID_ANNOTATION,
        FailReason::Netbox => reason::PENDING,
    }
}

/// `purelb.io/Allocated` from what the Service holds and why the last pass failed, if it did.
/// A Service that keeps its addresses after a failed change stays `True`; the message says what
/// could not be done.
#[must_use]
pub fn allocated(holding: Option<&Holding>, failure: Option<&Failure>) -> Wanted {
    match (holding, failure) {
        (Some(h), None) => Wanted::new(
            ALLOCATED,
            true,
            reason::ALLOCATED,
            format!("{} from ServiceGroup {}", join(&h.addresses), h.group),
        ),
        (Some(h), Some(f)) => Wanted::new(
            ALLOCATED,
            true,
            reason::ALLOCATED,
            format!("{} from ServiceGroup {}; not changed: {}", join(&h.addresses), h.group, f.message),
        ),
        (None, Some(f)) => Wanted::new(ALLOCATED, false, failure_reason(f.reason), f.message.clone()),
        (None, None) => Wanted::new(ALLOCATED, false, reason::PENDING, "waiting for an address".to_owned()),
    }
}

/// `purelb.io/Announced` for the addresses of `holding`, from the live members of the election
/// (their `purelb.io/announcing` says who holds what). `local_traffic`: the Service has
/// `externalTrafficPolicy: Local`. `True` when every address is held by at least one node; the
/// message names the nodes. Otherwise the reason of the first address nobody holds.
#[must_use]
pub fn announced(holding: &Holding, members: &Members, local_traffic: bool) -> Wanted {
    if members.is_empty() {
        return Wanted::new(
            ANNOUNCED,
            false,
            reason::NO_AGENT,
            "no PureLB agent has a live Lease: check the agent DaemonSet (kubectl get pods -l app.kubernetes.io/component=agent)".to_owned(),
        );
    }
    let mut held = Vec::new();
    for &ip in &holding.addresses {
        let holders = members.holders_of(ip);
        if holders.is_empty() {
            return not_held(ip, holding.pool_type, members, local_traffic);
        }
        let nodes: Vec<String> = holders.iter().map(election::Holder::describe).collect();
        held.push(format!("{ip} on {}", nodes.join(", ")));
    }
    Wanted::new(ANNOUNCED, true, reason::ANNOUNCED, held.join("; "))
}

fn not_held(ip: IpAddr, pool_type: PoolType, members: &Members, local_traffic: bool) -> Wanted {
    let local = pool_type == PoolType::Local;
    if local && members.candidates(ip).next().is_none() {
        let draining: Vec<&str> = members.iter().filter(|m| m.draining).map(|m| m.node.as_str()).collect();
        let mut message = format!("no live agent has a subnet containing {ip}");
        if !draining.is_empty() {
            message.push_str(&format!(" (draining, not candidates: {})", draining.join(", ")));
        }
        message.push_str(
            ": put the address on a subnet of the nodes' interfaces, or check the LBNodeAgent's localInterface",
        );
        return Wanted::new(ANNOUNCED, false, reason::NO_CANDIDATE_NODE, message);
    }
    if local_traffic {
        return Wanted::new(
            ANNOUNCED,
            false,
            reason::NO_USABLE_ENDPOINT,
            format!("{ip}: externalTrafficPolicy is Local and no candidate node has a ready endpoint of this Service"),
        );
    }
    let message = match members.winner(ip) {
        Some(node) if local => format!("{ip}: waiting for {node} (elected) to announce it"),
        _ => format!("{ip}: waiting for the agents to announce it"),
    };
    Wanted::new(ANNOUNCED, false, reason::PENDING, message)
}

/// The conditions of a Service's status that differ from `wanted` (by type, status, reason,
/// message or observedGeneration), as the list to patch: each keeps its `lastTransitionTime`
/// when the status did not change, else gets `now` (RFC 3339). Empty: nothing to write.
#[must_use]
pub fn changes(existing: &[Condition], wanted: &[Wanted], generation: Option<i64>, now: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for w in wanted {
        let have = existing.iter().find(|c| c.type_ == w.kind);
        let same = have.is_some_and(|c| {
            c.status == w.status_text()
                && c.reason == w.reason
                && c.message == w.message
                && c.observed_generation == generation
        });
        if same {
            continue;
        }
        let since = match have {
            Some(c) if c.status == w.status_text() => {
                serde_json::to_value(&c.last_transition_time).unwrap_or_else(|_| Value::String(now.to_owned()))
            }
            _ => Value::String(now.to_owned()),
        };
        let mut c = json!({
            "type": w.kind,
            "status": w.status_text(),
            "reason": w.reason,
            "message": w.message,
            "lastTransitionTime": since,
        });
        if let Some(g) = generation {
            c["observedGeneration"] = json!(g);
        }
        out.push(c);
    }
    out
}

/// The strategic-merge-patch elements that delete PureLB's conditions present in `existing`.
#[must_use]
pub fn removals(existing: &[Condition]) -> Vec<Value> {
    existing
        .iter()
        .filter(|c| TYPES.contains(&c.type_.as_str()))
        .map(|c| json!({"$patch": "delete", "type": c.type_}))
        .collect()
}

#[cfg(test)]
mod tests;
