//! `purelb status`: one screen about the whole installation, and an overall verdict
//! (`OK` / `WARNING` / `FAIL`, exit code 0 / 1 / 2). Computed from a [`Snapshot`] by
//! [`report`], a pure function; printed by [`Report::text`] or as JSON / YAML (the [`Report`]
//! fields, camelCase; `docs/operations.md` lists them).
//!
//! Verdict rules:
//! - **FAIL**: the allocator's leader Lease (`purelb-allocator`) is missing or not renewed (no
//!   address is assigned or released); or no node agent is live while Services need addresses
//!   announced.
//! - **WARNING**: a handled Service without an address, or with an address no node holds, or a
//!   local address held by more than one node; an invalid ServiceGroup or BGPPeer; a node agent
//!   whose Lease expired; a BGP session that is not `Established`; a group with no free address.

use std::{collections::BTreeMap, fmt::Write as _};

use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::ResourceExt;
use serde::Serialize;

use super::{
    model::{Handling, Model},
    output::table,
    snapshot::Snapshot,
};
use crate::{
    agent::decide::{Kind, ingress_addresses, pool_kind},
    allocator::{conditions, table::Holding},
    api::{PoolType, contract},
    core::{
        election::{self, SkipReason},
        ipam::Family,
    },
};

/// The overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Nothing needs attention.
    Ok,
    /// Something needs attention; addresses may be missing for some Services.
    Warning,
    /// PureLB cannot do its job.
    Fail,
}

impl Verdict {
    /// `OK`, `WARNING`, `FAIL`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warning => "WARNING",
            Self::Fail => "FAIL",
        }
    }

    /// The exit code: 0, 1, 2.
    #[must_use]
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Warning => 1,
            Self::Fail => 2,
        }
    }
}

/// The allocator, from its leader Lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocatorStatus {
    /// `holderIdentity` of the leader Lease (the leading replica).
    pub leader: Option<String>,
    /// The Lease is renewed: `renewTime + leaseDurationSeconds` is in the future.
    pub live: bool,
    /// Seconds since the last renewal.
    pub renewed_seconds_ago: Option<i64>,
    /// `leaseDurationSeconds`.
    pub lease_duration_seconds: Option<i32>,
}

/// One node agent, from its Lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The node.
    pub node: String,
    /// The Lease is live.
    pub live: bool,
    /// Why it is not live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// `purelb.io/subnets`.
    pub subnets: Vec<String>,
    /// `purelb.io/draining`.
    pub draining: bool,
    /// Addresses it holds (`purelb.io/announcing`).
    pub announcing: Vec<String>,
    /// BGP sessions (`purelb.io/bgp`): peer → state.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bgp: BTreeMap<String, String>,
}

/// Use of one family of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FamilyUse {
    /// Addresses held by Services.
    pub used: u64,
    /// Free addresses (exact decimal; `null` for NetBox groups NetBox was not asked about).
    pub available: Option<String>,
}

/// One ServiceGroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupStatus {
    /// Name.
    pub name: String,
    /// `local`, `remote`, `netbox`, or `invalid`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The ranges as written.
    pub ranges: Vec<String>,
    /// IPv4 use (absent when the group has no IPv4 range).
    #[serde(rename = "ipv4", skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<FamilyUse>,
    /// IPv6 use.
    #[serde(rename = "ipv6", skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyUse>,
    /// What is wrong.
    pub problems: Vec<String>,
}

/// One handled Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// `namespace/name`.
    pub service: String,
    /// Its addresses.
    pub addresses: Vec<String>,
    /// `local` / `remote` (absent before allocation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_type: Option<String>,
    /// The nodes holding its addresses (`node` or `node (interface)`).
    pub announced_by: Vec<String>,
    /// `Announced`, `Pending`, `NoAddress`, `NotAnnounced`, `Conflict`.
    pub state: String,
    /// Why, when not `Announced`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The install namespace.
    pub namespace: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why (empty when OK).
    pub reasons: Vec<String>,
    /// The allocator.
    pub allocator: AllocatorStatus,
    /// Node agents.
    pub agents: Vec<AgentStatus>,
    /// ServiceGroups.
    pub groups: Vec<GroupStatus>,
    /// Handled Services.
    pub services: Vec<ServiceStatus>,
}

fn allocator_status(leases: &[Lease], now: Timestamp) -> AllocatorStatus {
    let Some(lease) = leases.iter().find(|l| l.name_any() == contract::ALLOCATOR_LEASE_NAME) else {
        return AllocatorStatus::default();
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    let duration = spec.lease_duration_seconds;
    let live = match (renewed, duration, spec.holder_identity.as_deref()) {
        (Some(at), Some(d), Some(holder)) if d > 0 && !holder.is_empty() => {
            at.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(d))).is_ok_and(|end| end > now)
        }
        _ => false,
    };
    AllocatorStatus {
        leader: spec.holder_identity.filter(|h| !h.is_empty()),
        live,
        renewed_seconds_ago: renewed.map(|at| now.duration_since(at).as_secs()),
        lease_duration_seconds: duration,
    }
}

fn agent_status(snapshot: &Snapshot, model: &Model) -> Vec<AgentStatus> {
    let mut out = Vec::new();
    for member in model.members.iter() {
        out.push(AgentStatus {
            node: member.node.clone(),
            live: true,
            problem: None,
            subnets: member.subnets.iter().map(ToString::to_string).collect(),
            draining: member.draining,
            announcing: member.holding.iter().map(ToString::to_string).collect(),
            bgp: BTreeMap::new(),
        });
    }
    for skipped in model.members.skipped() {
        let Some(node) = skipped.lease.strip_prefix(contract::NODE_LEASE_PREFIX) else { continue };
        if matches!(skipped.reason, SkipReason::Duplicate) || out.iter().any(|a| a.node == node) {
            continue;
        }
        let subnets = snapshot
            .leases
            .iter()
            .find(|l| l.name_any() == skipped.lease)
            .and_then(|l| l.annotations().get(contract::LEASE_ANNOTATION_SUBNETS).cloned())
            .unwrap_or_default();
        out.push(AgentStatus {
            node: node.to_owned(),
            live: false,
            problem: Some(format!("Lease {}: {}", skipped.lease, skipped.reason)),
            subnets: election::parse_subnets(&subnets).iter().map(ToString::to_string).collect(),
            draining: false,
            announcing: Vec::new(),
            bgp: BTreeMap::new(),
        });
    }
    for agent in &mut out {
        let lease_name = format!("{}{}", contract::NODE_LEASE_PREFIX, agent.node);
        if let Some(value) = snapshot
            .leases
            .iter()
            .find(|l| l.name_any() == lease_name)
            .and_then(|l| l.annotations().get(contract::LEASE_ANNOTATION_BGP))
        {
            agent.bgp = value
                .split(',')
                .filter_map(|e| e.split_once('='))
                .map(|(p, s)| (p.trim().to_owned(), s.trim().to_owned()))
                .collect();
        }
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

fn group_status(model: &Model) -> Vec<GroupStatus> {
    let mut out = Vec::new();
    for (name, group) in &model.groups.valid {
        let stats = model.table.stats(name);
        let family_use = |family: Family| {
            group.serves(family).then(|| FamilyUse {
                used: stats.allocated.get(&family).copied().unwrap_or(0),
                available: stats.available.get(&family).map(ToString::to_string),
            })
        };
        let mut problems = Vec::new();
        for family in [Family::V4, Family::V6] {
            if group.netbox.is_none()
                && !group.pools.family(family).is_empty()
                && stats.available.get(&family).is_some_and(|a| a.to_string() == "0")
            {
                problems.push(format!("no free {family} address"));
            }
        }
        if stats.outside > 0 {
            problems.push(format!("{} held address(es) outside the group's ranges", stats.outside));
        }
        out.push(GroupStatus {
            name: name.clone(),
            kind: group.pool_type.as_str().to_owned(),
            ranges: group.pools.all().map(|r| r.text.clone()).collect(),
            ipv4: family_use(Family::V4),
            ipv6: family_use(Family::V6),
            problems,
        });
    }
    for (name, invalid) in &model.groups.invalid {
        out.push(GroupStatus {
            name: name.clone(),
            kind: "invalid".to_owned(),
            ranges: Vec::new(),
            ipv4: None,
            ipv6: None,
            problems: vec![invalid.message.clone()],
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn service_status(snapshot: &Snapshot, model: &Model) -> Vec<ServiceStatus> {
    let mut out = Vec::new();
    for svc in &snapshot.services {
        let key = crate::allocator::request::ServiceKey::of_service(svc);
        if !model.is_ours(&key) {
            continue;
        }
        let Some(req) = model.requests.get(&key) else { continue };
        let addresses = ingress_addresses(svc);
        let kind = pool_kind(svc);
        let mut status = ServiceStatus {
            service: key.to_string(),
            addresses: addresses.iter().map(ToString::to_string).collect(),
            pool_type: kind.map(|k| k.as_str().to_owned()),
            announced_by: Vec::new(),
            state: "Announced".to_owned(),
            problem: None,
        };
        if !req.handled {
            status.state = "Pending".to_owned();
            status.problem = Some("no longer handled by PureLB: the allocator will release its addresses".to_owned());
            out.push(status);
            continue;
        }
        if addresses.is_empty() || kind.is_none() {
            status.state = "NoAddress".to_owned();
            let mut table = model.table.clone();
            let why = match table.decide(req, &snapshot.namespace) {
                crate::allocator::table::Decision::Failed { failure, .. } => failure.message,
                _ => "waiting for the allocator".to_owned(),
            };
            status.problem = Some(why);
            out.push(status);
            continue;
        }
        for ip in &addresses {
            for holder in model.members.holders_of(*ip) {
                let text = holder.describe();
                if !status.announced_by.contains(&text) {
                    status.announced_by.push(text);
                }
            }
        }
        let holding = Holding {
            group: String::new(),
            pool_type: if kind == Some(Kind::Remote) { PoolType::Remote } else { PoolType::Local },
            addresses: addresses.clone(),
            sharing_key: None,
            ports: Default::default(),
        };
        let announced = conditions::announced(&holding, &model.members, req.local_traffic);
        if !announced.status {
            status.state =
                if announced.reason == conditions::reason::PENDING { "Pending" } else { "NotAnnounced" }.to_owned();
            status.problem = Some(format!("{}: {}", announced.reason, announced.message));
        } else if kind == Some(Kind::Local) {
            let several: Vec<String> = addresses
                .iter()
                .filter_map(|ip| {
                    let holders = model.members.holders_of(*ip);
                    (holders.len() > 1).then(|| {
                        format!(
                            "{ip} held by {}",
                            holders.iter().map(|h| h.node.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    })
                })
                .collect();
            if !several.is_empty() {
                status.state = "Conflict".to_owned();
                status.problem =
                    Some(format!("{} (a handover in progress, or a conflict if it lasts)", several.join("; ")));
            }
        }
        out.push(status);
    }
    out.sort_by(|a, b| a.service.cmp(&b.service));
    out
}

/// The report for `snapshot`, judged at `snapshot.now`.
#[must_use]
pub fn report(snapshot: &Snapshot, handling: &Handling) -> Report {
    let model = Model::build(snapshot, handling);
    let now = snapshot.now();
    let allocator = allocator_status(&snapshot.leases, now);
    let agents = agent_status(snapshot, &model);
    let groups = group_status(&model);
    let services = service_status(snapshot, &model);
    let mut verdict = Verdict::Ok;
    let mut reasons = Vec::new();
    let mut raise = |level: Verdict, reason: String| {
        verdict = verdict.max(level);
        reasons.push(format!("{}: {reason}", level.as_str()));
    };
    match (&allocator.leader, allocator.live) {
        (None, _) => raise(
            Verdict::Fail,
            format!(
                "the allocator is down: no Lease {}/{} has a holder (is the allocator Deployment running?)",
                snapshot.namespace,
                contract::ALLOCATOR_LEASE_NAME
            ),
        ),
        (Some(leader), false) => raise(
            Verdict::Fail,
            format!(
                "the allocator is down: its leader Lease (held by {leader}) was last renewed {}s ago and has expired; no address is assigned or released",
                allocator.renewed_seconds_ago.unwrap_or_default()
            ),
        ),
        _ => {}
    }
    let live_agents = agents.iter().filter(|a| a.live).count();
    if live_agents == 0 && !services.is_empty() {
        raise(
            Verdict::Fail,
            format!(
                "no node agent is live: no Lease {}/{}<node> is renewed, so no address is announced (is the agent DaemonSet running?)",
                snapshot.namespace,
                contract::NODE_LEASE_PREFIX
            ),
        );
    }
    for agent in agents.iter().filter(|a| !a.live) {
        raise(
            Verdict::Warning,
            format!("the agent of node {} is not live ({})", agent.node, agent.problem.clone().unwrap_or_default()),
        );
    }
    for agent in agents.iter().filter(|a| a.live) {
        for (peer, state) in &agent.bgp {
            if state != "Established" {
                raise(Verdict::Warning, format!("node {}: BGP session {peer} is {state}", agent.node));
            }
        }
    }
    for group in &groups {
        for problem in &group.problems {
            raise(Verdict::Warning, format!("ServiceGroup {}: {problem}", group.name));
        }
    }
    for peer in &snapshot.peers {
        let name = peer.name_any();
        if let Err(message) = crate::bgp::peer::PeerConfig::from_spec(&name, &peer.spec) {
            raise(Verdict::Warning, format!("BGPPeer {name} is invalid: {message}"));
        }
    }
    for svc in &services {
        match svc.state.as_str() {
            "NoAddress" => raise(
                Verdict::Warning,
                format!("Service {} has no address: {}", svc.service, svc.problem.clone().unwrap_or_default()),
            ),
            "NotAnnounced" | "Pending" => raise(
                Verdict::Warning,
                format!(
                    "Service {} ({}) is announced by nobody: {}",
                    svc.service,
                    svc.addresses.join(", "),
                    svc.problem.clone().unwrap_or_default()
                ),
            ),
            "Conflict" => {
                raise(Verdict::Warning, format!("Service {}: {}", svc.service, svc.problem.clone().unwrap_or_default()))
            }
            _ => {}
        }
    }
    Report { namespace: snapshot.namespace.clone(), verdict, reasons, allocator, agents, groups, services }
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

fn dash(list: &[String], sep: &str) -> String {
    if list.is_empty() { "-".to_owned() } else { list.join(sep) }
}

impl Report {
    /// The report as text: the verdict line and reasons first, then one table per part.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "PureLB in namespace {}: {}", self.namespace, self.verdict.as_str());
        for reason in &self.reasons {
            let _ = writeln!(out, "  {reason}");
        }
        out.push_str("\nALLOCATOR\n");
        out.push_str(&table(
            &["LEADER", "LIVE", "RENEWED"],
            vec![vec![
                self.allocator.leader.clone().unwrap_or_else(|| "-".to_owned()),
                yes(self.allocator.live),
                self.allocator.renewed_seconds_ago.map_or_else(|| "-".to_owned(), |s| format!("{s}s ago")),
            ]],
        ));
        out.push_str("\nAGENTS\n");
        let bgp_on = self.agents.iter().any(|a| !a.bgp.is_empty());
        let mut headers = vec!["NODE", "LIVE", "DRAINING", "ANNOUNCING", "SUBNETS"];
        if bgp_on {
            headers.push("BGP");
        }
        let rows = self
            .agents
            .iter()
            .map(|a| {
                let mut row = vec![
                    a.node.clone(),
                    yes(a.live),
                    yes(a.draining),
                    a.announcing.len().to_string(),
                    dash(&a.subnets, ","),
                ];
                if bgp_on {
                    let sessions: Vec<String> = a.bgp.iter().map(|(p, s)| format!("{p}={s}")).collect();
                    row.push(dash(&sessions, ","));
                }
                row
            })
            .collect();
        out.push_str(&table(&headers, rows));
        out.push_str("\nSERVICEGROUPS\n");
        let use_text = |u: &Option<FamilyUse>| match u {
            Some(u) => format!("{}/{}", u.used, u.available.clone().unwrap_or_else(|| "?".to_owned())),
            None => "-".to_owned(),
        };
        let rows = self
            .groups
            .iter()
            .map(|g| {
                vec![
                    g.name.clone(),
                    g.kind.clone(),
                    dash(&g.ranges, ","),
                    use_text(&g.ipv4),
                    use_text(&g.ipv6),
                    dash(&g.problems, "; "),
                ]
            })
            .collect();
        out.push_str(&table(&["NAME", "TYPE", "RANGES", "IPV4 USED/FREE", "IPV6 USED/FREE", "PROBLEMS"], rows));
        out.push_str("\nSERVICES\n");
        let rows = self
            .services
            .iter()
            .map(|s| {
                vec![
                    s.service.clone(),
                    dash(&s.addresses, ","),
                    s.pool_type.clone().unwrap_or_else(|| "-".to_owned()),
                    dash(&s.announced_by, ","),
                    s.state.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["SERVICE", "ADDRESSES", "TYPE", "ANNOUNCED BY", "STATE"], rows));
        out
    }
}

#[cfg(test)]
mod tests;
