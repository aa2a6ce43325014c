//! The pure part of `purelb reconcile`: which PureLB-owned addresses (and links) go, and why.
//! No IO, no clock: the caller lists the cluster, reads a netlink snapshot and applies the
//! [`Plan`].
//!
//! Entry points: [`members_with_self`] (the member table with this node counted as the agent
//! will count itself once it runs), [`node_plan`] (the orphans of one node, from the agent's own
//! [`decide`](crate::agent::decide::decide) result), [`all_plan`] (`--all`: everything PureLB
//! owns, no cluster needed).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use serde::Serialize;

use crate::{
    agent::{
        decide::{Decision, Kind, Wanted},
        lease::{self, LeaseContent, LeaseError, LeaseSettings},
    },
    api::contract,
    core::{
        election::{self, Members},
        endpoints::ServiceKey,
        ipam::{AddressRange, Subnet},
        netlink::{Address, AddressSnapshot, Link, MarkSupport, interface_for, is_owned},
    },
};

/// Why an address (or link) is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Reason {
    /// No PureLB Service has the address in its status any more (deleted, or the address was
    /// released).
    #[serde(rename = "service deleted")]
    ServiceDeleted,
    /// A `local` address another node is elected for (or no node is a candidate for).
    #[serde(rename = "not elected")]
    NotElected,
    /// `externalTrafficPolicy: Local` and no usable endpoint (on this node for a `remote`
    /// address, on any candidate for a `local` one).
    #[serde(rename = "no usable endpoint")]
    NoUsableEndpoint,
    /// This node should hold the address, but not on this interface or with this prefix length
    /// (the agent adds it where it belongs).
    #[serde(rename = "wrong interface")]
    WrongInterface,
    /// `--all`: every PureLB-owned address and PureLB-created link goes.
    #[serde(rename = "--all")]
    All,
}

impl Reason {
    /// The text used in the report (the same as in JSON).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceDeleted => "service deleted",
            Self::NotElected => "not elected",
            Self::NoUsableEndpoint => "no usable endpoint",
            Self::WrongInterface => "wrong interface",
            Self::All => "--all",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A PureLB-owned address to remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    /// The address as listed (interface, prefix length).
    pub address: Address,
    /// Why it goes.
    pub reason: Reason,
    /// The specifics (which node is elected, which Service, where it belongs).
    pub detail: String,
}

/// A PureLB-owned address this node should hold: kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The address as listed.
    pub address: Address,
    /// The Services that need it.
    pub services: Vec<ServiceKey>,
}

/// A link PureLB created (`--all` only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPlan {
    /// The link as listed.
    pub link: Link,
    /// Whether it goes (it is kept when it carries addresses PureLB did not add).
    pub remove: bool,
    /// Why it goes or stays.
    pub detail: String,
}

/// What reconcile does: remove the orphans (and, with `--all`, the links), keep the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Addresses to remove, in snapshot order (interface index, address).
    pub orphans: Vec<Orphan>,
    /// Owned addresses this node should hold.
    pub kept: Vec<Kept>,
    /// Links PureLB created (`--all`).
    pub links: Vec<LinkPlan>,
}

/// The election members as the agent of `node` will see them once it runs: every live Lease of
/// the other nodes, and `node` itself as a live, non-draining member advertising `subnets` —
/// whatever its own Lease says (absent before the first start, expired after a crash, draining
/// from the previous pod). So reconcile keeps every address `node` would win once its agent is
/// up (adding a candidate only ever adds wins for that candidate) and removes only what it would
/// not hold even then.
///
/// # Errors
///
/// [`LeaseError::Body`] (not expected: the Lease is built from typed values).
pub fn members_with_self(
    node: &str,
    leases: &[Lease],
    subnets: &[Subnet],
    now: Timestamp,
) -> Result<Members, LeaseError> {
    let settings = LeaseSettings {
        namespace: String::new(),
        node: node.to_owned(),
        instance: "purelb-reconcile".to_owned(),
        duration: Duration::from_secs(60),
        api_timeout: Duration::ZERO,
    };
    let content = LeaseContent {
        subnets: election::format_subnets(subnets),
        announcing: String::new(),
        draining: false,
        node_uid: None,
    };
    let own = lease::lease_object(&settings, &content, now)?;
    let own_name = contract::node_lease_name(node);
    let others = leases.iter().filter(|l| l.metadata.name.as_deref() != Some(own_name.as_str()));
    Ok(Members::from_leases(others.chain([&own]), now))
}

/// Where the agent puts a wanted address: `(interface, prefix length)`, the same choice as its
/// pass makes — a `local` address on the announce interface whose subnet contains it (with that
/// subnet's prefix), a `remote` one on the dummy interface with the aggregation prefix. `Err`
/// says why a `local` address has no place on this node.
///
/// # Errors
///
/// No announce interface has a subnet containing the address.
pub fn placement(wanted: &Wanted, local_addresses: &[Address], dummy_interface: &str) -> Result<(String, u8), String> {
    match wanted.kind {
        Kind::Local => interface_for(local_addresses, wanted.ip)
            .map(|m| (m.ifname, m.prefix_len))
            .ok_or_else(|| "no announce interface of this node has a subnet containing it".to_owned()),
        Kind::Remote => Ok((dummy_interface.to_owned(), wanted.aggregation)),
    }
}

/// What [`node_plan`] decides from.
#[derive(Debug)]
pub struct NodeInputs<'a> {
    /// This node.
    pub node: &'a str,
    /// The agent's decision for this node.
    pub decision: &'a Decision,
    /// The members the decision was made with (for the "not elected" detail).
    pub members: &'a Members,
    /// Links and addresses now.
    pub snapshot: &'a AddressSnapshot,
    /// The announce interfaces ([`crate::agent::config::announce_interfaces`]).
    pub announce: &'a [String],
    /// `local.dummyInterface`.
    pub dummy_interface: &'a str,
    /// Every pool range (ownership on kernels without address marks).
    pub ranges: &'a [AddressRange],
    /// Whether the kernel stores the ownership mark.
    pub marks: MarkSupport,
}

fn services_text(keys: &BTreeSet<&ServiceKey>) -> String {
    keys.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Why `ip`, which `node` does not hold per `decision`, is not this node's.
fn reason_for(inputs: &NodeInputs<'_>, ip: IpAddr) -> (Reason, String) {
    let decision = inputs.decision;
    let uses: Vec<&(ServiceKey, IpAddr, Kind)> = decision.considered.iter().filter(|(_, a, _)| *a == ip).collect();
    if uses.is_empty() {
        return (
            Reason::ServiceDeleted,
            "no PureLB Service has this address in its status: the Service was deleted or its address released"
                .to_owned(),
        );
    }
    let local: BTreeSet<&ServiceKey> = uses.iter().filter(|(_, _, k)| *k == Kind::Local).map(|(s, _, _)| s).collect();
    if local.is_empty() {
        let remote: BTreeSet<&ServiceKey> = uses.iter().map(|(s, _, _)| s).collect();
        return (
            Reason::NoUsableEndpoint,
            format!(
                "externalTrafficPolicy: Local and node {} has no usable endpoint of {}",
                inputs.node,
                services_text(&remote)
            ),
        );
    }
    if decision.no_endpoint.iter().any(|n| n.ip == ip) {
        return (
            Reason::NoUsableEndpoint,
            format!(
                "externalTrafficPolicy: Local and no node has a usable endpoint of {}, so no node announces it",
                services_text(&local)
            ),
        );
    }
    let winner = decision.winners.get(&ip).cloned().flatten().or_else(|| inputs.members.winner(ip).map(str::to_owned));
    let detail = match winner {
        Some(node) => format!("node {node} is elected for it; used by {}", services_text(&local)),
        None => {
            format!("no live node, this one included, has a subnet containing it; used by {}", services_text(&local))
        }
    };
    (Reason::NotElected, detail)
}

/// The orphans of `inputs.node`: every PureLB-owned address (ownership rule [`is_owned`]: an
/// address with PureLB's mark on any interface; on kernels that do not store marks, also an
/// unmarked one inside a pool range on a managed interface — the announce interfaces and the
/// dummy interface) that the agent would not hold there: exactly what the agent's pass
/// withdraws. Other unmarked addresses are never listed.
#[must_use]
pub fn node_plan(inputs: &NodeInputs<'_>) -> Plan {
    let snapshot = inputs.snapshot;
    let local_addresses: Vec<Address> =
        snapshot.addresses.iter().filter(|a| inputs.announce.contains(&a.ifname)).cloned().collect();
    let managed: Vec<&str> = inputs.announce.iter().map(String::as_str).chain([inputs.dummy_interface]).collect();
    let placements: BTreeMap<IpAddr, Result<(String, u8), String>> = inputs
        .decision
        .wanted
        .values()
        .map(|w| (w.ip, placement(w, &local_addresses, inputs.dummy_interface)))
        .collect();
    let mut plan = Plan::default();
    for address in snapshot.addresses.iter().filter(|a| is_owned(a, &managed, inputs.ranges, inputs.marks)) {
        let (reason, detail) = match placements.get(&address.ip) {
            Some(Ok((ifname, prefix_len))) if *ifname == address.ifname && *prefix_len == address.prefix_len => {
                let services = inputs.decision.wanted.get(&address.ip).map(|w| w.services.clone()).unwrap_or_default();
                plan.kept.push(Kept { address: address.clone(), services });
                continue;
            }
            Some(Ok((ifname, prefix_len))) => (
                Reason::WrongInterface,
                format!("node {} holds it on {ifname} with prefix length /{prefix_len}", inputs.node),
            ),
            Some(Err(why)) => (Reason::WrongInterface, why.clone()),
            None => reason_for(inputs, address.ip),
        };
        plan.orphans.push(Orphan { address: address.clone(), reason, detail });
    }
    plan
}

/// `--all`: every address carrying PureLB's mark, on every interface, and every link PureLB
/// created ([`Link::is_created_by_purelb`]). A created link that carries addresses PureLB did not
/// add (IPv6 link-local ones aside) is kept, so that deleting it cannot take an administrator's
/// address with it. Needs no cluster: on kernels that do not store address marks (before Linux
/// 6.3) no address can be recognised without the pool ranges, so only links go.
#[must_use]
pub fn all_plan(snapshot: &AddressSnapshot) -> Plan {
    let orphans = snapshot
        .addresses
        .iter()
        .filter(|a| a.has_purelb_mark())
        .map(|a| Orphan {
            address: a.clone(),
            reason: Reason::All,
            detail: "carries PureLB's ownership mark".to_owned(),
        })
        .collect();
    let links = snapshot
        .links
        .iter()
        .filter(|l| l.is_created_by_purelb())
        .map(|link| {
            let foreign: Vec<String> = snapshot
                .addresses
                .iter()
                .filter(|a| a.index == link.index && !a.has_purelb_mark() && !a.is_link_local())
                .map(|a| format!("{}/{}", a.ip, a.prefix_len))
                .collect();
            if foreign.is_empty() {
                LinkPlan { link: link.clone(), remove: true, detail: "created by PureLB".to_owned() }
            } else {
                LinkPlan {
                    link: link.clone(),
                    remove: false,
                    detail: format!(
                        "created by PureLB but kept: it carries addresses PureLB did not add ({})",
                        foreign.join(", ")
                    ),
                }
            }
        })
        .collect();
    Plan { orphans, kept: Vec::new(), links }
}
