//! The agent's pass as a pure function: [`plan`] takes one immutable [`Snapshot`] (Services,
//! node Leases as [`Members`], EndpointSlices as an [`EndpointIndex`], ServiceGroups, this
//! node's configuration, the kernel's addresses, the clock) and the agent's own [`Timers`], and
//! returns the [`Action`]s to apply and the timers after them. No IO, no clock of its own: the
//! controller gathers the snapshot (only from caches that have all synced) and applies the
//! actions (netlink, GARP/NA); `purelb reconcile` uses the same function with empty timers and
//! applies only its removals.
//!
//! Rules (`api.md` §3, `docs/agent.md`):
//!
//! - every address [`decide`] wants is placed (a `local` one on the announce interface whose
//!   subnet contains it, with that subnet's prefix; a `remote` one on the dummy interface with
//!   the aggregation prefix) and added when it is missing, due for renewal or has other flags;
//! - no new `local` claim without a current Lease, while draining, or within one lease duration
//!   of yielding the address to another claimer;
//! - a `local` takeover from a draining holder is held quietly (no GARP/NA) until that holder
//!   lets go or the handover bound passes;
//! - a held address no longer wanted is kept while this node's Lease is not current; for the
//!   settle time when its Service still uses it but has no usable endpoint right now (a rollout);
//!   while draining until the successor holds it (then let go at a quiet moment); when another
//!   live node won it, until that node holds it (make before break); otherwise withdrawn;
//! - every other PureLB-owned address ([`is_owned`]) is an orphan and removed, with the
//!   [`Reason`], unless this node's Lease is not current.
//!
//! Every owned address ends in exactly one of kept / added / removed, and an address is never
//! removed from the place the same plan adds it to (property tests in `plan/tests.rs`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Service;
use serde::Serialize;

use super::decide::{self, Decision, Inputs, Kind, ServiceFacts, Wanted};
use crate::{
    api::AddressOptions,
    core::{
        election::Members,
        endpoints::{EndpointIndex, ServiceKey},
        ipam::{AddressRange, ParsedPools},
        netlink::{Address, AddressSnapshot, AddressSpec, MarkSupport, interface_for, is_owned},
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
    /// This node is draining and its successor holds the address (or the handover timed out).
    #[serde(rename = "handed over")]
    HandedOver,
    /// `--all`: every PureLB-owned address and PureLB-created link goes.
    #[serde(rename = "--all")]
    All,
}

impl Reason {
    /// The text used in reports and logs (the same as in JSON).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceDeleted => "service deleted",
            Self::NotElected => "not elected",
            Self::NoUsableEndpoint => "no usable endpoint",
            Self::WrongInterface => "wrong interface",
            Self::HandedOver => "handed over",
            Self::All => "--all",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent's timing settings the plan needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// `--lease-duration`.
    pub lease_duration: Duration,
    /// `--handover-timeout`.
    pub handover_timeout: Duration,
    /// `--settle-time`: how long an address stays after its last usable endpoint went away.
    pub settle_time: Duration,
    /// How long a draining node waits for a moment without open connections once its
    /// successor holds an address.
    pub quiet_wait: Duration,
    /// After a connection raced the withdrawal (the address is back): how long to wait for that
    /// connection to end. Its client sent its ACK or data into the blackhole and retransmits
    /// after its retransmission timeout (at least 200 ms on Linux), so a wait shorter than that
    /// would cut it.
    pub race_wait: Duration,
}

impl Timing {
    /// How long a planned move waits for the other side (the previous holder to let go, or the
    /// winner to hold the address): the handover timeout plus one lease duration (a node that
    /// rejoins waits that long before it claims anything).
    #[must_use]
    pub fn handover_bound(&self) -> Duration {
        self.handover_timeout + self.lease_duration
    }
}

/// An address this node holds, as the plan tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldState {
    /// Where and how it is added.
    pub spec: AddressSpec,
    /// The interface's name.
    pub ifname: String,
    /// How it is announced.
    pub kind: Kind,
    /// The Services that need it.
    pub services: Vec<ServiceKey>,
    /// A GARP/NA burst was started for the current takeover (local addresses).
    pub announced: bool,
    /// Taken over from a draining node that still holds it: held without GARP/NA (the clients
    /// keep using the old node until it lets go at a quiet moment), since when.
    pub quiet_takeover: Option<Instant>,
    /// Added again without duplicate address detection after DAD failed (IPv6).
    pub force_nodad: bool,
}

/// The agent's own state between passes: what it holds and the timers of its rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timers {
    /// Addresses this node holds.
    pub held: BTreeMap<IpAddr, HeldState>,
    /// Held addresses whose Service has no usable endpoint right now, since when: withdrawn
    /// after the settle time.
    pub settling: HashMap<IpAddr, Instant>,
    /// Local addresses held here whose election another live node won, since when: kept until
    /// the winner holds them (make before break) or the handover bound passes.
    pub losing: HashMap<IpAddr, Instant>,
    /// Local addresses given up because another host claimed them, since when: not claimed
    /// again for one lease duration.
    pub yielded: HashMap<IpAddr, Instant>,
    /// Draining: local addresses whose successor holds them, since when this node saw that.
    pub handing_over: HashMap<IpAddr, Instant>,
    /// Draining: local addresses put back because a connection raced their withdrawal (the next
    /// try waits [`Timing::race_wait`] for it).
    pub raced: BTreeSet<IpAddr>,
}

/// Everything one pass decides from. Built only from caches that have all synced.
#[derive(Debug)]
pub struct Snapshot<'a, S = Service> {
    /// This node.
    pub node: &'a str,
    /// Every Service (only PureLB's are considered).
    pub services: &'a [&'a S],
    /// Live members from the node Leases.
    pub members: &'a Members,
    /// The EndpointSlice index.
    pub endpoints: &'a EndpointIndex,
    /// Valid ServiceGroups of the install namespace, by name.
    pub groups: &'a HashMap<String, ParsedPools>,
    /// Every pool range (ownership on kernels without address marks).
    pub ranges: &'a [AddressRange],
    /// Links and addresses now.
    pub kernel: &'a AddressSnapshot,
    /// The announce interfaces.
    pub announce: &'a [String],
    /// `local.dummyInterface`.
    pub dummy_interface: &'a str,
    /// Options of local addresses.
    pub local_options: AddressOptions,
    /// Options of remote addresses.
    pub dummy_options: AddressOptions,
    /// Whether the kernel stores the ownership mark.
    pub marks: MarkSupport,
    /// This node's Lease is current (renewed, and live in the cache too).
    pub lease_ok: bool,
    /// This node is handing over (SIGTERM, or the node is going away).
    pub draining: bool,
    /// Since when it drains.
    pub drain_started: Option<Instant>,
    /// The clock.
    pub now: Instant,
    /// Timing settings.
    pub timing: Timing,
}

/// Why an address is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddWhy {
    /// Newly held.
    New,
    /// Held, but someone removed it: drift repaired.
    Repair,
    /// Its valid lifetime is past half.
    Renew,
    /// Its flags differ from the wanted ones.
    Flags,
    /// Added again without DAD after DAD failed.
    NoDad,
}

/// One side effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Remove an address that failed duplicate address detection (it is added again without
    /// DAD by a later [`Action::Add`]).
    RemoveFailedDad(Address),
    /// Make sure the dummy interface exists (before the first remote add).
    EnsureDummy(String),
    /// Add (or replace) an address.
    Add {
        /// The address.
        spec: AddressSpec,
        /// How it is announced.
        kind: Kind,
        /// Why.
        why: AddWhy,
    },
    /// Send a GARP/NA burst for a local takeover (stopping any earlier one).
    Announce {
        /// The address.
        ip: IpAddr,
        /// The interface.
        ifname: String,
    },
    /// Remove an address.
    Remove {
        /// The address as listed.
        address: Address,
        /// Why.
        reason: Reason,
        /// The specifics.
        detail: String,
        /// What this node held there (`None`: an orphan). Held again when the kernel refuses.
        held: Option<HeldState>,
        /// Stop the address's GARP/NA (it is not held anywhere else on this node afterwards).
        stop_announcing: bool,
        /// A graceful handover ends with it (`purelb_handover_duration_seconds`).
        handover: bool,
    },
    /// Draining and the successor holds it: remove it at a moment without open connections,
    /// waiting at most until `until`, then anyway.
    LetGoQuietly {
        /// The address as listed.
        address: Address,
        /// What this node held there (held again when a connection races the withdrawal).
        held: HeldState,
        /// Since when the successor holds it.
        since: Instant,
        /// The latest moment to let go.
        until: Instant,
    },
}

/// A PureLB-owned address this node should hold where it is: kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The address as listed.
    pub address: Address,
    /// The Services that need it.
    pub services: Vec<ServiceKey>,
}

/// The result of [`plan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// What this node must hold, per [`decide`].
    pub decision: Decision,
    /// Side effects, in the order to apply them (adds before removals: make before break).
    pub actions: Vec<Action>,
    /// Wanted addresses that cannot be held, with why (for Events).
    pub failures: BTreeMap<IpAddr, String>,
    /// Owned addresses that stay where they are.
    pub kept: Vec<Kept>,
    /// PureLB-owned addresses held by nobody here (the `purelb_orphaned_ips` gauge).
    pub orphans: u32,
    /// When the next pass is due for a timer of this plan (from now).
    pub wake_after: Option<Duration>,
    /// The timers, assuming every action succeeds ([`Timers::after_apply`] corrects them).
    pub timers: Timers,
}

impl Plan {
    fn wake(&mut self, after: Duration) {
        self.wake_after = Some(self.wake_after.map_or(after, |w| w.min(after)));
    }

    /// The removals (what `purelb reconcile` applies).
    pub fn removals(&self) -> impl Iterator<Item = (&Address, Reason, &str)> {
        self.actions.iter().filter_map(|a| match a {
            Action::Remove { address, reason, detail, .. } => Some((address, *reason, detail.as_str())),
            Action::LetGoQuietly { address, .. } => Some((address, Reason::HandedOver, "handed over")),
            _ => None,
        })
    }

    /// The additions.
    pub fn additions(&self) -> impl Iterator<Item = &AddressSpec> {
        self.actions.iter().filter_map(|a| match a {
            Action::Add { spec, .. } => Some(spec),
            _ => None,
        })
    }
}

/// Where the agent puts a wanted address: `(interface, prefix length)` — a `local` address on
/// the announce interface whose subnet contains it (with that subnet's prefix), a `remote` one
/// on the dummy interface with the aggregation prefix. `Err` says why a `local` address has no
/// place on this node.
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

/// The spec of a wanted address at its placement.
fn wanted_spec<S>(
    snapshot: &Snapshot<'_, S>,
    wanted: &Wanted,
    ifname: String,
    prefix_len: u8,
    force_nodad: bool,
) -> AddressSpec {
    match wanted.kind {
        Kind::Local => {
            let o = snapshot.local_options;
            // IPv6 Service addresses must never become source addresses (preferred lifetime
            // 0). `AddressSpec` reads 0 as "forever", so the nearest it can say is 1 s:
            // deprecated one second after each (re-)add. With a permanent valid lifetime there
            // is no deprecated state to ask for.
            let preferred = match (wanted.ip.is_ipv6(), o.valid_lifetime) {
                (_, 0) | (false, _) => o.preferred_lifetime,
                (true, _) => 1,
            };
            let mut spec = AddressSpec::new(ifname, wanted.ip, prefix_len).lifetimes(o.valid_lifetime, preferred);
            if o.no_prefix_route {
                spec = spec.noprefixroute();
            }
            if wanted.nodad || force_nodad {
                spec = spec.nodad();
            }
            spec
        }
        Kind::Remote => {
            let o = snapshot.dummy_options;
            let mut spec = AddressSpec::new(ifname, wanted.ip, prefix_len)
                .lifetimes(o.valid_lifetime, o.preferred_lifetime.min(o.valid_lifetime));
            if o.no_prefix_route {
                spec = spec.noprefixroute();
            }
            // No duplicate address detection on the dummy interface: nobody else is on it, and
            // on a link without carrier (a bridge standing in for it) an IPv6 address would stay
            // tentative, which routing daemons (BIRD's `direct`) do not export.
            if wanted.ip.is_ipv6() {
                spec = spec.nodad();
            }
            spec
        }
    }
}

fn services_text(keys: &BTreeSet<&ServiceKey>) -> String {
    keys.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Why `address`, which this node does not hold there, is not this node's.
fn reason_for<S>(
    snapshot: &Snapshot<'_, S>,
    decision: &Decision,
    placements: &BTreeMap<IpAddr, Result<(String, u8), String>>,
    ip: IpAddr,
) -> (Reason, String) {
    match placements.get(&ip) {
        Some(Ok((ifname, prefix_len))) => {
            return (
                Reason::WrongInterface,
                format!("node {} holds it on {ifname} with prefix length /{prefix_len}", snapshot.node),
            );
        }
        Some(Err(why)) => return (Reason::WrongInterface, why.clone()),
        None => {}
    }
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
                snapshot.node,
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
    let winner =
        decision.winners.get(&ip).cloned().flatten().or_else(|| snapshot.members.winner(ip).map(str::to_owned));
    let detail = match winner {
        Some(node) => format!("node {node} is elected for it; used by {}", services_text(&local)),
        None => {
            format!("no live node, this one included, has a subnet containing it; used by {}", services_text(&local))
        }
    };
    (Reason::NotElected, detail)
}

/// How long from `since` until `bound` has passed (zero when it has).
fn left(now: Instant, since: Instant, bound: Duration) -> Duration {
    bound.saturating_sub(now.saturating_duration_since(since))
}

/// A little after `d`, so that the pass it wakes finds the timer expired.
fn just_after(d: Duration) -> Duration {
    d + Duration::from_millis(10)
}

/// One pass: what to add, announce, keep and remove, and the timers afterwards.
#[must_use]
pub fn plan<S: ServiceFacts>(snapshot: &Snapshot<'_, S>, timers: &Timers) -> Plan {
    let decision = decide::decide(snapshot.services.iter().copied(), &snapshot.inputs());
    plan_decided(snapshot, timers, decision)
}

impl<'a, S> Snapshot<'a, S> {
    /// What [`decide`] reads of this snapshot.
    #[must_use]
    pub fn inputs(&self) -> Inputs<'a> {
        Inputs { node: self.node, members: self.members, endpoints: self.endpoints, groups: self.groups }
    }
}

/// [`plan`] with the decision already made (by [`decide::decide`] over `snapshot.services`
/// with [`Snapshot::inputs`], or kept up to date with [`Decision::redecide`]); the Services
/// of the snapshot are not read.
#[must_use]
#[allow(clippy::too_many_lines)]
pub fn plan_decided<S>(snapshot: &Snapshot<'_, S>, timers: &Timers, decision: Decision) -> Plan {
    let now = snapshot.now;
    let node = snapshot.node;
    let kernel = snapshot.kernel;
    let local_addresses: Vec<Address> =
        kernel.addresses.iter().filter(|a| snapshot.announce.contains(&a.ifname)).cloned().collect();
    let placements: BTreeMap<IpAddr, Result<(String, u8), String>> =
        decision.wanted.values().map(|w| (w.ip, placement(w, &local_addresses, snapshot.dummy_interface))).collect();
    let mut out = Plan { timers: Timers::default(), ..Plan::default() };
    let mut prev = timers.held.clone();
    let mut next: BTreeMap<IpAddr, HeldState> = BTreeMap::new();
    let mut dad_removals: Vec<Action> = Vec::new();
    let mut adds: Vec<Action> = Vec::new();
    let mut announces: Vec<Action> = Vec::new();
    let mut renew_after: Option<u32> = None;
    let lease_ok = snapshot.lease_ok;
    let draining = snapshot.draining;
    for wanted in decision.wanted.values() {
        let ip = wanted.ip;
        let (ifname, prefix_len) = match placements.get(&ip) {
            Some(Ok(p)) => p.clone(),
            Some(Err(why)) => {
                let ifaces = snapshot.announce.join(", ");
                out.failures.insert(
                    ip,
                    format!("node {node} has no announce interface ({ifaces}) with a subnet containing {ip}: {why}"),
                );
                continue;
            }
            None => continue,
        };
        let before = prev
            .get(&ip)
            .filter(|h| h.ifname == ifname && h.spec.prefix_len == prefix_len)
            .is_some()
            .then(|| prev.remove(&ip))
            .flatten();
        let mut force_nodad = before.as_ref().is_some_and(|h| h.force_nodad);
        let mut spec = wanted_spec(snapshot, wanted, ifname.clone(), prefix_len, force_nodad);
        if wanted.kind == Kind::Local && before.is_none() {
            // No new claims without a current Lease, or while handing over.
            if !lease_ok || draining {
                continue;
            }
            // Given up to another claimer moments ago: this node's view may be the stale one.
            if let Some(at) = timers.yielded.get(&ip) {
                let left = left(now, *at, snapshot.timing.lease_duration);
                if !left.is_zero() {
                    out.wake(just_after(left));
                    continue;
                }
            }
        }
        let mut present = kernel
            .addresses
            .iter()
            .find(|a| a.ip == ip && a.ifname == ifname && a.prefix_len == prefix_len && a.has_purelb_mark());
        let mut readded = false;
        // IPv6 duplicate address detection fails when a takeover finds the address still on
        // the previous holder (make before break, or a crashed agent's node): the kernel would
        // never use it. Uniqueness is the election's and the conflict detection's job, so it
        // is added again without DAD.
        if let Some(failed) = present.filter(|a| a.state.dad_failed && !spec.flags.nodad) {
            dad_removals.push(Action::RemoveFailedDad(failed.clone()));
            spec = spec.nodad();
            force_nodad = true;
            present = None;
            readded = true;
        }
        let renew_due = spec.valid_lifetime != 0
            && present.is_some_and(|a| a.valid_lifetime.is_none_or(|left| left < spec.valid_lifetime / 2));
        let flags_differ = present.is_some_and(|a| a.flags != spec.flags);
        if present.is_none() || renew_due || flags_differ {
            let why = if readded {
                AddWhy::NoDad
            } else if present.is_none() {
                if before.is_some() { AddWhy::Repair } else { AddWhy::New }
            } else if renew_due {
                AddWhy::Renew
            } else {
                AddWhy::Flags
            };
            if wanted.kind == Kind::Remote && !adds.iter().any(|a| matches!(a, Action::EnsureDummy(_))) {
                adds.push(Action::EnsureDummy(snapshot.dummy_interface.to_owned()));
            }
            adds.push(Action::Add { spec: spec.clone(), kind: wanted.kind, why });
        }
        if spec.valid_lifetime != 0 {
            renew_after = Some(renew_after.map_or(spec.valid_lifetime, |r| r.min(spec.valid_lifetime)));
        }
        let (mut announced, mut quiet_takeover) =
            before.as_ref().map_or((false, None), |b| (b.announced, b.quiet_takeover));
        if wanted.kind == Kind::Local && (!announced || present.is_none()) {
            // Graceful handover: while the draining node still lists the address, hold it
            // without announcing it; the old node lets go when no connection to it is open and
            // only then does this node move the clients over (docs/agent.md). A holder that is
            // gone (its Lease expired) is not waited for.
            let handing_over = snapshot.members.holders_of(ip).iter().any(|h| h.node != node && h.draining);
            let since = *quiet_takeover.get_or_insert(now);
            let left = left(now, since, snapshot.timing.handover_bound());
            if handing_over && !left.is_zero() {
                out.wake(just_after(left));
                announced = false;
            } else {
                quiet_takeover = None;
                announced = true;
                announces.push(Action::Announce { ip, ifname: ifname.clone() });
            }
        }
        next.insert(
            ip,
            HeldState {
                spec,
                ifname,
                kind: wanted.kind,
                services: wanted.services.clone(),
                announced,
                quiet_takeover,
                force_nodad,
            },
        );
    }
    out.actions.extend(dad_removals);
    out.actions.extend(adds);
    out.actions.extend(announces);
    // What was held and is not wanted there any more, and every other owned address.
    let managed: Vec<&str> = snapshot.announce.iter().map(String::as_str).chain([snapshot.dummy_interface]).collect();
    let mut timers_out = Timers { yielded: timers.yielded.clone(), ..Timers::default() };
    let mut quiet: Vec<Action> = Vec::new();
    let mut removals: Vec<Action> = Vec::new();
    for address in kernel.addresses.iter().filter(|a| is_owned(a, &managed, snapshot.ranges, snapshot.marks)) {
        let ip = address.ip;
        if let Some(h) = next.get(&ip)
            && h.ifname == address.ifname
            && h.spec.prefix_len == address.prefix_len
        {
            out.kept.push(Kept { address: address.clone(), services: h.services.clone() });
            continue;
        }
        let held_here =
            prev.get(&ip).is_some_and(|h| h.ifname == address.ifname && h.spec.prefix_len == address.prefix_len);
        let held_elsewhere = next.contains_key(&ip);
        if !held_here {
            // Not held by this node there: an orphan (never touched without a current Lease).
            if !lease_ok {
                continue;
            }
            out.orphans += 1;
            let (reason, detail) = reason_for(snapshot, &decision, &placements, ip);
            removals.push(Action::Remove {
                address: address.clone(),
                reason,
                detail,
                held: None,
                stop_announcing: !held_elsewhere,
                handover: false,
            });
            continue;
        }
        let Some(held) = prev.remove(&ip) else { continue };
        let (reason, detail) = reason_for(snapshot, &decision, &placements, ip);
        let remove = |reason: Reason, detail: String, held: HeldState, handover: bool| Action::Remove {
            address: address.clone(),
            reason,
            detail,
            held: Some(held),
            stop_announcing: !held_elsewhere,
            handover,
        };
        if held_elsewhere {
            // Held again at its new place (added above): the old one goes.
            removals.push(remove(reason, detail, held, false));
            continue;
        }
        if !lease_ok {
            next.insert(ip, held);
            continue;
        }
        let still_used = decision.considered.iter().any(|(_, a, _)| *a == ip);
        let no_endpoint = match held.kind {
            Kind::Remote => decision.considered.iter().any(|(_, a, k)| *a == ip && *k == Kind::Remote),
            Kind::Local => decision.no_endpoint.iter().any(|n| n.ip == ip),
        };
        if still_used && no_endpoint && !draining {
            // Endpoints went away: wait the settle time (rollouts flap EndpointSlices).
            let since = *timers.settling.get(&ip).unwrap_or(&now);
            let left = left(now, since, snapshot.timing.settle_time);
            if !left.is_zero() {
                timers_out.settling.insert(ip, since);
                out.wake(just_after(left));
                next.insert(ip, held);
                continue;
            }
            removals.push(remove(reason, detail, held, false));
            continue;
        }
        if draining && held.kind == Kind::Local {
            let handed_over = snapshot.members.holders_of(ip).iter().any(|h| h.node != node && !h.draining);
            let deadline = snapshot.drain_started.map(|t| t + snapshot.timing.handover_timeout);
            let timed_out = deadline.is_some_and(|d| now >= d);
            // The successor holds it: let go at a moment when no connection to it is open, so
            // that none is cut when the clients move over. Two nodes hold the address
            // meanwhile, so that moment is waited for at most `quiet_wait`; a connection still
            // open then would not end in any reasonable time anyway. Every address of the pass
            // is handed over at once (one after another, the last waited for the others'
            // netlink work too).
            if handed_over && !timed_out {
                let since = *timers.handing_over.get(&ip).unwrap_or(&now);
                timers_out.handing_over.insert(ip, since);
                let wait = if timers.raced.contains(&ip) {
                    timers_out.raced.insert(ip);
                    snapshot.timing.race_wait
                } else {
                    snapshot.timing.quiet_wait
                };
                let quiet_until = since + wait;
                let until = deadline.map_or(quiet_until, |d| d.min(quiet_until));
                quiet.push(Action::LetGoQuietly { address: address.clone(), held, since, until });
                continue;
            }
            if timed_out {
                removals.push(remove(Reason::HandedOver, format!("the handover timeout passed; {detail}"), held, true));
            } else {
                next.insert(ip, held);
            }
            continue;
        }
        if held.kind == Kind::Local
            && decision.winners.get(&ip).is_some_and(|w| w.as_deref().is_some_and(|n| n != node))
        {
            // Another live node won it (endpoints moved, a node rejoined): keep it until the
            // winner holds it, so that the move never leaves the address with nobody (a
            // rejoining winner first waits out its hold-off). The winner's GARP/NA on the wire
            // ends this at once (the controller's conflict handling); its Lease listing the
            // address, or the bound, otherwise.
            let since = *timers.losing.get(&ip).unwrap_or(&now);
            let deadline = since + snapshot.timing.handover_bound();
            let winner_holds = snapshot.members.holders_of(ip).iter().any(|h| h.node != node && !h.draining);
            if !winner_holds && now < deadline {
                timers_out.losing.insert(ip, since);
                out.wake(deadline.saturating_duration_since(now));
                next.insert(ip, held);
                continue;
            }
        }
        removals.push(remove(reason, detail, held, false));
    }
    out.actions.extend(removals);
    out.actions.extend(quiet);
    if let Some(valid) = renew_after {
        out.wake(Duration::from_secs(u64::from(valid / 3).max(1)));
    }
    // Held addresses that vanished from the kernel without being wanted are forgotten.
    // Forgotten once the hold-off passed or this node no longer elects itself.
    timers_out.yielded.retain(|ip, at| {
        now.saturating_duration_since(*at) < snapshot.timing.lease_duration && decision.wanted.contains_key(ip)
    });
    timers_out.held = next;
    out.timers = timers_out;
    out.decision = decision;
    out
}

/// What applying one action did, when it did not do what the plan assumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An add failed: the address is not held (the next pass tries again).
    AddFailed {
        /// The address.
        ip: IpAddr,
        /// What the kernel said (for the Event).
        message: String,
    },
    /// The GARP/NA burst could not start (the next pass tries again).
    AnnounceFailed(IpAddr),
    /// A removal failed: still held.
    StillHeld(HeldState),
    /// A connection raced a quiet handover (it arrived between the check and the withdrawal):
    /// the address is back until it ends, and the next try gets a fresh quiet wait, so that the
    /// connection that raced in is not cut by a forced withdrawal at once.
    Raced(HeldState),
}

impl Timers {
    /// Whether a rule of this node waits on what the other nodes announce
    /// (`purelb.io/announcing`): an address kept until its new winner holds it (make before
    /// break), or held quietly until its draining holder lets go. (A draining node waits on its
    /// successors too; the controller knows that.) Otherwise a change of what the others
    /// announce changes no plan, and causes no pass.
    #[must_use]
    pub fn waits_on_holders(&self) -> bool {
        !self.losing.is_empty()
            || !self.handing_over.is_empty()
            || self.held.values().any(|h| h.quiet_takeover.is_some())
    }

    /// The timers after applying `plan` with these `outcomes` (only the exceptions).
    #[must_use]
    pub fn after_apply(mut self, outcomes: Vec<Outcome>, failures: &mut BTreeMap<IpAddr, String>) -> Self {
        for outcome in outcomes {
            match outcome {
                Outcome::AddFailed { ip, message } => {
                    self.held.remove(&ip);
                    failures.insert(ip, message);
                }
                Outcome::AnnounceFailed(ip) => {
                    if let Some(h) = self.held.get_mut(&ip) {
                        h.announced = false;
                    }
                }
                Outcome::StillHeld(held) => {
                    self.held.entry(held.spec.ip).or_insert(held);
                }
                Outcome::Raced(held) => {
                    self.handing_over.remove(&held.spec.ip);
                    self.raced.insert(held.spec.ip);
                    self.held.entry(held.spec.ip).or_insert(held);
                }
            }
        }
        let held = &self.held;
        self.settling.retain(|ip, _| held.contains_key(ip));
        self.losing.retain(|ip, _| held.contains_key(ip));
        self.handing_over.retain(|ip, _| held.contains_key(ip));
        self.raced.retain(|ip| held.contains_key(ip));
        self
    }
}

#[cfg(test)]
mod tests;
