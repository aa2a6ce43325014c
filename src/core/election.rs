//! Node membership from the agents' Leases and the per-address winner (`api.md` §3). Pure: no
//! IO, no clock of its own; "now" is passed in.
//!
//! Every node agent keeps one `coordination.k8s.io/v1` Lease named `purelb-node-<node>` with
//! `holderIdentity` = node. This module turns a snapshot of those Leases into a [`Members`]
//! table and answers, for one address at a time:
//!
//! - who may hold it ([`Members::candidates`]): live, non-draining nodes with an announce
//!   subnet (annotation `purelb.io/subnets`) containing the address;
//! - who should hold it ([`Members::winner`]): the candidate with the lowest SHA-256 of
//!   `<node>#<address>` (the address in canonical text form, RFC 5952 for IPv6), the rule the
//!   Go PureLB 0.15+ agents use, so both can run side by side;
//! - the same restricted to preferred nodes, such as nodes with a usable local endpoint for
//!   `externalTrafficPolicy: Local` ([`Members::winner_preferring`], which says whether it had
//!   to fall back);
//! - who says it holds it now ([`Members::holders`], from `purelb.io/announcing`), including
//!   draining nodes, which keep their addresses until a successor has taken them over.
//!
//! Entry points: [`Members::from_leases`], [`Members::winner`], [`elect`].
//!
//! Annotation formats (parsed leniently: bad entries are skipped, never an error):
//!
//! - `purelb.io/subnets`: comma-separated CIDRs, `192.0.2.0/24,2001:db8::/64`; whitespace around
//!   entries is ignored; at most [`MAX_SUBNETS`] are read.
//! - `purelb.io/announcing`: comma-separated addresses this node holds, each optionally followed
//!   by `%` and the interface (RFC 4007 scoped-address notation): `192.0.2.240%eth0,2001:db8::f0%eth0`.
//! - `purelb.io/draining`: `"true"` (case-insensitive, whitespace ignored) while the node hands its
//!   addresses over before exiting; anything else means not draining.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
};

use k8s_openapi::{
    api::coordination::v1::Lease,
    jiff::{SignedDuration, Timestamp},
};
use sha2::{Digest, Sha256};

use crate::{
    api::contract::{
        LEASE_ANNOTATION_ANNOUNCING, LEASE_ANNOTATION_DRAINING, LEASE_ANNOTATION_INSTANCE, LEASE_ANNOTATION_SUBNETS,
        NODE_LEASE_PREFIX,
    },
    core::ipam::{AddressRange, Subnet, ip_value},
};

/// The most subnets read from one Lease's `purelb.io/subnets` annotation; further entries are
/// ignored.
pub const MAX_SUBNETS: usize = 256;

/// The election key of `node` for `address`: SHA-256 of `<node>#<address>`, the address in
/// canonical text form (IPv4-mapped IPv6 addresses are written as IPv4, as Go does). The
/// candidate with the lowest key wins.
#[must_use]
pub fn election_key(node: &str, address: IpAddr) -> [u8; 32] {
    key_of(node, &address_text(address))
}

/// The address as [`election_key`] writes it.
fn address_text(address: IpAddr) -> String {
    address.to_canonical().to_string()
}

/// [`election_key`] with the address already written (once per election, not per candidate).
fn key_of(node: &str, address_text: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(node.as_bytes());
    hasher.update(b"#");
    hasher.update(address_text.as_bytes());
    hasher.finalize().into()
}

/// The winner among `candidates` for `address`: the lowest [`election_key`] (ties, which only a
/// repeated name can cause, go to the lower name). `None` when there are no candidates.
#[must_use]
pub fn elect<'a>(candidates: impl IntoIterator<Item = &'a str>, address: IpAddr) -> Option<&'a str> {
    let text = address_text(address);
    lowest(candidates.into_iter().map(|node| (key_of(node, &text), node))).map(|(_, node)| node)
}

#[cfg(not(purelb_bug = "highest_hash"))]
fn lowest<T: Ord>(keys: impl Iterator<Item = T>) -> Option<T> {
    keys.min()
}

/// A deliberately wrong election for `scripts/injected-bugs.sh` (issue 15): the highest key wins.
/// Only built with `--cfg purelb_bug="highest_hash"`; the soak's oracle must catch it.
#[cfg(purelb_bug = "highest_hash")]
fn lowest<T: Ord>(keys: impl Iterator<Item = T>) -> Option<T> {
    keys.max()
}

/// Parses a `purelb.io/subnets` value: comma-separated CIDRs, whitespace tolerated, host bits
/// dropped, duplicates and entries that are not CIDRs skipped, at most [`MAX_SUBNETS`] kept.
#[must_use]
pub fn parse_subnets(text: &str) -> Vec<Subnet> {
    let mut subnets: Vec<Subnet> = Vec::new();
    for entry in text.split(',') {
        if subnets.len() >= MAX_SUBNETS {
            break;
        }
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        if let Ok(subnet) = Subnet::parse(entry)
            && !subnets.contains(&subnet)
        {
            subnets.push(subnet);
        }
    }
    subnets
}

/// Writes a `purelb.io/subnets` value: sorted (IPv4 first), de-duplicated, comma-separated.
#[must_use]
pub fn format_subnets(subnets: &[Subnet]) -> String {
    let mut sorted: Vec<Subnet> = subnets.to_vec();
    sorted.sort_by_key(|s| (s.family(), ip_value(s.network()), s.prefix_len()));
    sorted.dedup();
    sorted.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// One address a node says it holds (`purelb.io/announcing`), with the interface if given.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeldAddress {
    /// The address.
    pub address: IpAddr,
    /// The interface it is on, if the annotation says.
    pub interface: Option<String>,
}

impl fmt::Display for HeldAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.interface {
            Some(interface) => write!(f, "{}%{interface}", self.address),
            None => write!(f, "{}", self.address),
        }
    }
}

/// Parses a `purelb.io/announcing` value: comma-separated `address` or `address%interface`
/// entries, whitespace tolerated; entries whose address does not parse are skipped, and so are
/// repeats of an address already seen (the first entry wins).
#[must_use]
pub fn parse_announcing(text: &str) -> Vec<HeldAddress> {
    let mut held: Vec<HeldAddress> = Vec::new();
    for entry in text.split(',') {
        let entry = entry.trim();
        let (address, interface) = match entry.split_once('%') {
            Some((address, interface)) => (address.trim(), Some(interface.trim())),
            None => (entry, None),
        };
        let Ok(address) = address.parse::<IpAddr>() else { continue };
        if held.iter().any(|h| h.address == address) {
            continue;
        }
        let interface = interface.filter(|i| !i.is_empty()).map(str::to_owned);
        held.push(HeldAddress { address, interface });
    }
    held
}

/// Writes a `purelb.io/announcing` value, sorted by address. An interface name that the format
/// cannot carry (one containing `,` or `%`, which Linux allows but nobody uses) is left out; the
/// address is still listed.
#[must_use]
pub fn format_announcing(held: &[HeldAddress]) -> String {
    let mut sorted: Vec<HeldAddress> = held
        .iter()
        .map(|h| HeldAddress {
            address: h.address,
            interface: h.interface.clone().filter(|i| !i.is_empty() && !i.contains([',', '%']) && i.trim() == i),
        })
        .collect();
    sorted.sort();
    sorted.dedup_by_key(|h| h.address);
    sorted.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// Whether a `purelb.io/draining` value means "draining".
#[must_use]
pub fn is_draining_value(text: &str) -> bool {
    text.trim().eq_ignore_ascii_case("true")
}

/// A live node of the election, read from its Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node name (`holderIdentity`).
    pub node: String,
    /// Subnets the node can announce on (`purelb.io/subnets`).
    pub subnets: Vec<Subnet>,
    /// `purelb.io/draining: "true"`: not a candidate, but its addresses still count as held.
    pub draining: bool,
    /// Addresses the node says it holds (`purelb.io/announcing`).
    pub holding: Vec<HeldAddress>,
    /// UID of the agent pod that wrote the Lease (`purelb.io/instance`).
    pub instance: Option<String>,
    /// When the Lease expires: `renewTime + leaseDurationSeconds`.
    pub expires: Timestamp,
}

impl Member {
    /// Whether the node can be elected for `address`: not draining and with a subnet containing it.
    #[must_use]
    pub fn is_candidate_for(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        !self.draining && self.subnets.iter().any(|s| s.contains(address))
    }
}

/// Why a node Lease did not make a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// No `holderIdentity`: the Lease was released.
    NoHolder,
    /// `holderIdentity` is not the node the Lease name says.
    HolderMismatch {
        /// The `holderIdentity` found.
        holder: String,
    },
    /// No `renewTime`.
    NoRenewTime,
    /// No `leaseDurationSeconds`, or not positive.
    NoDuration,
    /// `renewTime + leaseDurationSeconds` is not in the future.
    Expired {
        /// When it expired.
        at: Timestamp,
    },
    /// Another Lease for the same node expires later.
    Duplicate,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHolder => f.write_str("no holderIdentity"),
            Self::HolderMismatch { holder } => write!(f, "holderIdentity {holder:?} does not match the Lease name"),
            Self::NoRenewTime => f.write_str("no renewTime"),
            Self::NoDuration => f.write_str("no positive leaseDurationSeconds"),
            Self::Expired { at } => write!(f, "expired at {at}"),
            Self::Duplicate => f.write_str("another Lease of the same node expires later"),
        }
    }
}

/// A node Lease that is not a member, and why (for logs and debugging).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedLease {
    /// The Lease name.
    pub lease: String,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// The outcome of an election restricted to preferred nodes ([`Members::winner_preferring`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Winner {
    /// A preferred node won among the preferred candidates.
    Preferred(String),
    /// No candidate is preferred; this node won among all candidates.
    Fallback(String),
    /// There is no candidate at all.
    None,
}

impl Winner {
    /// The winning node, whichever way it won.
    #[must_use]
    pub fn node(&self) -> Option<&str> {
        match self {
            Self::Preferred(node) | Self::Fallback(node) => Some(node),
            Self::None => None,
        }
    }

    /// Whether the election had to fall back to non-preferred nodes.
    #[must_use]
    pub fn is_fallback(&self) -> bool {
        matches!(self, Self::Fallback(_))
    }
}

/// One node that says it holds an address ([`Members::holders`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    /// The node.
    pub node: String,
    /// The interface, if its Lease says.
    pub interface: Option<String>,
    /// Whether the node is draining (handing over).
    pub draining: bool,
}

impl Holder {
    /// `node (interface)`, or `node` when the Lease names no interface (for people).
    #[must_use]
    pub fn describe(&self) -> String {
        match &self.interface {
            Some(i) if !i.is_empty() => format!("{} ({i})", self.node),
            _ => self.node.clone(),
        }
    }
}

/// Where two member tables elect differently ([`Members::election_changes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElectionChanges {
    subnets: Vec<Subnet>,
}

impl ElectionChanges {
    /// Whether every address has the same candidates in both tables.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.subnets.is_empty()
    }

    /// Whether `address` may have other candidates in the newer table (`false`: the same
    /// candidates and winner in both).
    #[must_use]
    pub fn touches(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.subnets.iter().any(|s| s.contains(address))
    }
}

/// The live members of the election at one instant, built from the node Leases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    members: BTreeMap<String, Member>,
    skipped: Vec<SkippedLease>,
    /// The candidates by announce subnet, built with the table: an election looks at the few
    /// distinct subnets instead of every member's (at 1,003 members and 50,000 addresses the
    /// scan of every member was most of a full decision: docs/scale.md).
    by_subnet: Vec<SubnetCandidates>,
}

/// The non-draining members with one announce subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SubnetCandidates {
    range: AddressRange,
    /// Sorted by name.
    nodes: Vec<String>,
}

/// The candidates of every announce subnet of `members`, in a fixed order (equal tables give
/// equal indexes).
fn subnet_index(members: &BTreeMap<String, Member>) -> Vec<SubnetCandidates> {
    let mut by_subnet: HashMap<Subnet, usize> = HashMap::new();
    let mut index: Vec<SubnetCandidates> = Vec::new();
    // Members in name order: each subnet's nodes come out sorted.
    for member in members.values().filter(|m| !m.draining) {
        for subnet in &member.subnets {
            let at = *by_subnet.entry(*subnet).or_insert_with(|| {
                index.push(SubnetCandidates { range: subnet.range(), nodes: Vec::new() });
                index.len() - 1
            });
            if let Some(entry) = index.get_mut(at) {
                entry.nodes.push(member.node.clone());
            }
        }
    }
    index
}

impl Members {
    /// Builds the table from a snapshot of Leases at time `now`. Leases whose name does not start
    /// with `purelb-node-` are ignored (they are not node Leases); node Leases that are released,
    /// inconsistent or expired are listed in [`Members::skipped`]. `now` is usually
    /// `k8s_openapi::jiff::Timestamp::now()` (or `Timestamp::try_from(SystemTime::now())`).
    #[must_use]
    pub fn from_leases<'a>(leases: impl IntoIterator<Item = &'a Lease>, now: Timestamp) -> Self {
        let mut table = Self::default();
        for lease in leases {
            let Some(name) = lease.metadata.name.as_deref() else { continue };
            let Some(node) = name.strip_prefix(NODE_LEASE_PREFIX) else { continue };
            match member_from_lease(node, lease, now) {
                Ok(member) => table.insert(name, member),
                Err(reason) => table.skipped.push(SkippedLease { lease: name.to_owned(), reason }),
            }
        }
        table.by_subnet = subnet_index(&table.members);
        table
    }

    fn insert(&mut self, lease: &str, member: Member) {
        match self.members.get(&member.node) {
            Some(existing) if existing.expires >= member.expires => {
                self.skipped.push(SkippedLease { lease: lease.to_owned(), reason: SkipReason::Duplicate });
            }
            Some(_) => {
                self.skipped.push(SkippedLease { lease: lease.to_owned(), reason: SkipReason::Duplicate });
                self.members.insert(member.node.clone(), member);
            }
            None => {
                self.members.insert(member.node.clone(), member);
            }
        }
    }

    /// Number of live members, draining ones included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no node is live.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The live member `node`, if any.
    #[must_use]
    pub fn get(&self, node: &str) -> Option<&Member> {
        self.members.get(node)
    }

    /// Every live member, by node name.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Node Leases that did not make a member, and why.
    #[must_use]
    pub fn skipped(&self) -> &[SkippedLease] {
        &self.skipped
    }

    /// The earliest expiry among live members: the table must be rebuilt by then even if no Lease
    /// event arrives.
    #[must_use]
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.members.values().map(|m| m.expires).min()
    }

    /// Whether `other` has the same members with the same content, expiry times aside: what
    /// a renewal changes decides nothing (an expiry decides, when a member goes).
    #[must_use]
    pub fn same_but_expiry(&self, other: &Self) -> bool {
        self.same_election(other) && self.same_holding(other)
    }

    /// Whether `other` has the same members with the same subnets, draining flags and
    /// instances: the same election for every address (what they announce and when their
    /// Leases expire aside).
    #[must_use]
    pub fn same_election(&self, other: &Self) -> bool {
        self.skipped == other.skipped
            && self.members.len() == other.members.len()
            && self.members.values().zip(other.members.values()).all(|(a, b)| {
                a.node == b.node && a.subnets == b.subnets && a.draining == b.draining && a.instance == b.instance
            })
    }

    /// Whether the same nodes announce the same addresses (`purelb.io/announcing`) in `other`.
    #[must_use]
    pub fn same_holding(&self, other: &Self) -> bool {
        self.members.len() == other.members.len()
            && self
                .members
                .values()
                .zip(other.members.values())
                .all(|(a, b)| a.node == b.node && a.holding == b.holding)
    }

    /// What differs in the election between this table and `newer`: the subnets of every node
    /// whose candidacy changed (it came or went, started or stopped draining, or announces on
    /// other subnets), in both versions. Every address outside them has the same candidates,
    /// and so the same winner, in both tables: after a membership change only the addresses
    /// [`ElectionChanges::touches`] need a new election (what Lease instances, expiry times and
    /// `purelb.io/announcing` say elects nobody).
    #[must_use]
    pub fn election_changes(&self, newer: &Self) -> ElectionChanges {
        let mut subnets: Vec<Subnet> = Vec::new();
        let mut add = |member: &Member| {
            for subnet in &member.subnets {
                if !subnets.contains(subnet) {
                    subnets.push(*subnet);
                }
            }
        };
        for (node, old) in &self.members {
            match newer.members.get(node) {
                Some(new) if new.subnets == old.subnets && new.draining == old.draining => {}
                Some(new) => {
                    add(old);
                    add(new);
                }
                None => add(old),
            }
        }
        for (node, new) in &newer.members {
            if !self.members.contains_key(node) {
                add(new);
            }
        }
        ElectionChanges { subnets }
    }

    /// The nodes that may hold `address`: live, not draining, with a subnet containing it.
    pub fn candidates(&self, address: IpAddr) -> impl Iterator<Item = &Member> {
        self.members.values().filter(move |m| m.is_candidate_for(address))
    }

    /// The names of [`Self::candidates`] for `address`, from the subnet index. A node on two
    /// overlapping subnets of the address is named twice, which elects the same: the lowest key
    /// wins once however often it is listed.
    fn candidate_names(&self, address: IpAddr) -> impl Iterator<Item = &str> + Clone {
        let address = address.to_canonical();
        self.by_subnet
            .iter()
            .filter(move |entry| entry.range.contains(address))
            .flat_map(|entry| entry.nodes.iter().map(String::as_str))
    }

    /// The node that should hold `address`, or `None` when no node is a candidate.
    #[must_use]
    pub fn winner(&self, address: IpAddr) -> Option<&str> {
        elect(self.candidate_names(address), address)
    }

    /// The winner among candidates for which `preferred` is true (such as nodes with a usable
    /// endpoint for `externalTrafficPolicy: Local`); when no candidate is preferred, the winner
    /// among all candidates, reported as [`Winner::Fallback`].
    #[must_use]
    pub fn winner_preferring(&self, address: IpAddr, preferred: impl Fn(&str) -> bool) -> Winner {
        if let Some(node) = elect(self.candidate_names(address).filter(|n| preferred(n)), address) {
            return Winner::Preferred(node.to_owned());
        }
        match self.winner(address) {
            Some(node) => Winner::Fallback(node.to_owned()),
            None => Winner::None,
        }
    }

    /// Who says it holds what: every address in a live member's `purelb.io/announcing`
    /// (draining members included), with the nodes claiming it, sorted by node. More than one
    /// holder means a handover in progress or a conflict.
    #[must_use]
    pub fn holders(&self) -> BTreeMap<IpAddr, Vec<Holder>> {
        let mut holders: BTreeMap<IpAddr, Vec<Holder>> = BTreeMap::new();
        for member in self.members.values() {
            for held in &member.holding {
                holders.entry(held.address.to_canonical()).or_default().push(Holder {
                    node: member.node.clone(),
                    interface: held.interface.clone(),
                    draining: member.draining,
                });
            }
        }
        holders
    }

    /// The live nodes that say they hold `address`, sorted by node.
    #[must_use]
    pub fn holders_of(&self, address: IpAddr) -> Vec<Holder> {
        let address = address.to_canonical();
        self.members
            .values()
            .filter_map(|member| {
                member.holding.iter().find(|h| h.address.to_canonical() == address).map(|held| Holder {
                    node: member.node.clone(),
                    interface: held.interface.clone(),
                    draining: member.draining,
                })
            })
            .collect()
    }
}

fn member_from_lease(node: &str, lease: &Lease, now: Timestamp) -> Result<Member, SkipReason> {
    let spec = lease.spec.as_ref();
    let holder = spec.and_then(|s| s.holder_identity.as_deref()).unwrap_or_default();
    if holder.is_empty() {
        return Err(SkipReason::NoHolder);
    }
    if holder != node {
        return Err(SkipReason::HolderMismatch { holder: holder.to_owned() });
    }
    let renew = spec.and_then(|s| s.renew_time.as_ref()).ok_or(SkipReason::NoRenewTime)?.0;
    let duration = spec.and_then(|s| s.lease_duration_seconds).filter(|d| *d > 0).ok_or(SkipReason::NoDuration)?;
    // A positive duration can only overflow past the end of time: treat that as "never expires".
    let expires = renew.checked_add(SignedDuration::from_secs(i64::from(duration))).unwrap_or(Timestamp::MAX);
    if expires <= now {
        return Err(SkipReason::Expired { at: expires });
    }
    let annotation = |key: &str| lease.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str);
    Ok(Member {
        node: node.to_owned(),
        subnets: annotation(LEASE_ANNOTATION_SUBNETS).map(parse_subnets).unwrap_or_default(),
        draining: annotation(LEASE_ANNOTATION_DRAINING).is_some_and(is_draining_value),
        holding: annotation(LEASE_ANNOTATION_ANNOUNCING).map(parse_announcing).unwrap_or_default(),
        instance: annotation(LEASE_ANNOTATION_INSTANCE).filter(|i| !i.is_empty()).map(str::to_owned),
        expires,
    })
}

#[cfg(test)]
mod tests;
