//! The pure part of `purelb reconcile`: which PureLB-owned addresses (and links) go, and why.
//! No IO, no clock: the caller lists the cluster, reads a netlink snapshot and applies the
//! [`Plan`].
//!
//! Entry points: [`members_with_self`] (the member table with this node counted as the agent
//! will count itself once it runs), [`node_plan`] (the orphans of one node: the agent's own
//! [`plan`](crate::agent::plan::plan) with no timers), [`all_plan`] (`--all`: everything PureLB
//! owns, no cluster needed).

use std::time::Duration;

use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};

use crate::{
    agent::{
        lease::{self, LeaseContent, LeaseError, LeaseSettings},
        plan::{self as agent_plan, Snapshot, Timers},
    },
    api::contract,
    core::{
        election::{self, Members},
        ipam::Subnet,
        netlink::{Address, AddressSnapshot, Link},
    },
};

pub use crate::agent::plan::{Kept, Reason, placement};

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
        bgp: None,
    };
    let own = lease::lease_object(&settings, &content, now)?;
    let own_name = contract::node_lease_name(node);
    let others = leases.iter().filter(|l| l.metadata.name.as_deref() != Some(own_name.as_str()));
    Ok(Members::from_leases(others.chain([&own]), now))
}

/// The orphans of `snapshot.node`: exactly what the agent's pass would remove on its first
/// pass (the same [`plan`](crate::agent::plan::plan), with no timers: nothing held yet).
/// Ownership rule [`is_owned`](crate::core::netlink::is_owned): an address with PureLB's mark on
/// any interface; on kernels that do not store marks, also an unmarked one inside a pool range
/// on a managed interface (the announce interfaces and the dummy interface). Other unmarked
/// addresses are never listed.
#[must_use]
pub fn node_plan(snapshot: &Snapshot<'_>) -> Plan {
    let planned = agent_plan::plan(snapshot, &Timers::default());
    let orphans = planned
        .removals()
        .map(|(address, reason, detail)| Orphan { address: address.clone(), reason, detail: detail.to_owned() })
        .collect();
    Plan { orphans, kept: planned.kept, links: Vec::new() }
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
