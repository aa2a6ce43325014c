//! The allocation table and the pure allocation decisions: which Service holds which
//! addresses, per-range usage ([`RangeUsage`]), sharing keys, and [`Allocator::decide`], which
//! turns one [`ServiceRequest`] into a [`Decision`] and updates the table. No IO: the controller
//! feeds requests and writes the results.
//!
//! Promises kept here: an address, once held, only changes when the Service asks for another
//! one (another pin, another group) or stops being handled; a pool edit never moves it; a
//! failed pass leaves the table as it was.
//!
//! Netbox groups have no ranges: the controller first asks [`Allocator::netbox_need`] what a
//! Service needs, reserves that in NetBox (async, outside the table), hands the outcome over
//! with [`Allocator::offer`], and [`Allocator::decide`] then commits it like any other address.
//! NetBox addresses are held in the same address map as pool addresses, so no address is ever
//! given twice, whichever group it came from.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use super::{
    groups::{Group, GroupSet},
    request::{FamilyPolicy, PortKey, ServiceKey, ServiceRequest},
};
use crate::{
    api::{NetboxSpec, PoolType},
    core::ipam::{AddressCount, Family, RangeUsage},
};

/// What a Service holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// The group the addresses came from.
    pub group: String,
    /// Pool type of the group when allocated (`local`/`remote`).
    pub pool_type: PoolType,
    /// Addresses, in the Service's family order.
    pub addresses: Vec<IpAddr>,
    /// Sharing key.
    pub sharing_key: Option<String>,
    /// Protocol/port pairs (for sharing checks).
    pub ports: BTreeSet<PortKey>,
}

/// Why an allocation failed (also the `reason` label of
/// `purelb_address_pool_allocation_rejected_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// No free address.
    PoolFull,
    /// A protocol/port pair collides with a Service sharing the address.
    PortConflict,
    /// The address is held by a Service with another (or no) sharing key.
    SharingConflict,
    /// Namespace scoping forbids the group.
    NamespaceDenied,
    /// The group does not exist (in the install namespace).
    UnknownGroup,
    /// The group is invalid.
    InvalidGroup,
    /// A pinned address is in no group's ranges.
    OutsidePools,
    /// A pinned (or NetBox) address is one that is never handed out (special-purpose, or the
    /// network or broadcast address of a local subnet).
    Reserved,
    /// An annotation value is malformed.
    Malformed,
    /// The group cannot serve the families the Service requires.
    Family,
    /// NetBox could not be asked, or refused (unreachable, slow, token, malformed answers).
    Netbox,
}

impl FailReason {
    /// Every reason (the metric's label values).
    pub const ALL: [Self; 11] = [
        Self::PoolFull,
        Self::PortConflict,
        Self::SharingConflict,
        Self::NamespaceDenied,
        Self::UnknownGroup,
        Self::InvalidGroup,
        Self::OutsidePools,
        Self::Reserved,
        Self::Malformed,
        Self::Family,
        Self::Netbox,
    ];

    /// Metric label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::PoolFull => "full",
            Self::PortConflict => "port_conflict",
            Self::SharingConflict => "sharing_conflict",
            Self::NamespaceDenied => "namespace_denied",
            Self::UnknownGroup => "unknown_group",
            Self::InvalidGroup => "invalid_group",
            Self::OutsidePools => "outside_pools",
            Self::Reserved => "reserved",
            Self::Malformed => "malformed",
            Self::Family => "family",
            Self::Netbox => "netbox",
        }
    }
}

/// A failure with its user-facing message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub reason: FailReason,
    /// What is wrong and what to change.
    pub message: String,
    /// The group concerned, if any.
    pub group: Option<String>,
}

fn fail(reason: FailReason, group: Option<&str>, message: impl Into<String>) -> Failure {
    Failure { reason, message: message.into(), group: group.map(str::to_owned) }
}

/// The outcome of deciding one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not handled by PureLB and holds nothing.
    NotHandled,
    /// No longer handled: everything it held was released.
    Released(Holding),
    /// Holds what it should; `warnings` explain anything odd (e.g. outside every pool).
    Keep { holding: Holding, warnings: Vec<String> },
    /// Addresses changed.
    Changed { holding: Holding, assigned: Vec<IpAddr>, released: Vec<IpAddr> },
    /// Nothing could be (re)allocated; `kept` is what it still holds.
    Failed { failure: Failure, kept: Option<Holding> },
}

#[derive(Clone, Debug)]
struct AddressUse {
    group: String,
    services: BTreeSet<ServiceKey>,
    sharing_key: Option<String>,
    /// Every Service that used the address while it was held (one of them is the owner NetBox
    /// records for a netbox address).
    users: BTreeSet<ServiceKey>,
}

#[derive(Clone, Debug, Default)]
struct GroupUsage {
    ranges: BTreeMap<Family, Vec<RangeUsage>>,
    outside: BTreeSet<IpAddr>,
    /// Addresses of a netbox group (from NetBox, not from ranges).
    external: BTreeSet<IpAddr>,
    /// Reserved addresses NetBox had left for a netbox group when last asked, per family.
    external_available: BTreeMap<Family, AddressCount>,
}

/// What a Service needs from NetBox before [`Allocator::decide`] can give it addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetboxNeed {
    /// The netbox group.
    pub group: String,
    /// Its `spec.netbox`.
    pub spec: NetboxSpec,
    /// Families for which a new address must be reserved, in the Service's order.
    pub families: Vec<Family>,
    /// The Service's family policy (with `PreferDualStack` one family is enough).
    pub policy: FamilyPolicy,
}

/// The outcome of reserving addresses in NetBox for one Service, per family.
pub type NetboxOffers = BTreeMap<Family, Result<IpAddr, Failure>>;

/// A NetBox address nobody holds any more, to be given back to NetBox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetboxRelease {
    /// The group it came from.
    pub group: String,
    /// The group's `spec.netbox` (as last seen, also when the group is gone since).
    pub spec: Option<NetboxSpec>,
    /// The address.
    pub ip: IpAddr,
    /// The Services that used it while it was held, the last one first.
    pub owners: Vec<ServiceKey>,
}

/// Per-group numbers for ServiceGroup status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Addresses of each family held by Services.
    pub allocated: BTreeMap<Family, u64>,
    /// Free addresses of each family.
    pub available: BTreeMap<Family, AddressCount>,
    /// Size of each family's ranges.
    pub size: BTreeMap<Family, AddressCount>,
    /// Held addresses outside every range of the group.
    pub outside: u64,
}

/// The allocation table.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    groups: GroupSet,
    usage: BTreeMap<String, GroupUsage>,
    holdings: HashMap<ServiceKey, Holding>,
    addresses: HashMap<IpAddr, AddressUse>,
    sharing: HashMap<(String, Family, String), IpAddr>,
    /// Addresses reserved in NetBox for a Service, waiting for its next [`Self::decide`].
    offers: HashMap<ServiceKey, NetboxOffers>,
    /// NetBox addresses released from the table, to be given back to NetBox.
    netbox_released: Vec<NetboxRelease>,
    /// `spec.netbox` of every netbox group seen (kept when a group goes away, for releases).
    netbox_specs: HashMap<String, NetboxSpec>,
    /// Addresses a Service gave up for others ([`Decision::Changed`]) that stay taken until its
    /// status no longer shows them ([`Self::confirm_released`]): given to another Service
    /// before that write lands, one address would be in two Services' status at once (found
    /// by the chaos soak, invariant 5).
    pending_release: HashMap<ServiceKey, Vec<IpAddr>>,
}

impl Allocator {
    /// An empty table over `groups`.
    #[must_use]
    pub fn new(groups: GroupSet) -> Self {
        let mut a = Self::default();
        a.set_groups(groups);
        a
    }

    /// The groups in use.
    #[must_use]
    pub fn groups(&self) -> &GroupSet {
        &self.groups
    }

    /// What a Service holds.
    #[must_use]
    pub fn holding(&self, key: &ServiceKey) -> Option<&Holding> {
        self.holdings.get(key)
    }

    /// Every Service holding something.
    pub fn holders(&self) -> impl Iterator<Item = (&ServiceKey, &Holding)> {
        self.holdings.iter()
    }

    /// Number of distinct addresses in use.
    #[must_use]
    pub fn addresses_in_use(&self) -> usize {
        self.addresses.len()
    }

    /// The Services using `ip`.
    #[must_use]
    pub fn users_of(&self, ip: IpAddr) -> Vec<ServiceKey> {
        self.addresses.get(&ip).map(|u| u.services.iter().cloned().collect()).unwrap_or_default()
    }

    /// Replaces the groups; every held address stays held (inside the new ranges where it
    /// fits, otherwise counted as outside its group's pools).
    pub fn set_groups(&mut self, groups: GroupSet) {
        for g in groups.valid.values() {
            if let Some(spec) = &g.netbox {
                self.netbox_specs.insert(g.name.clone(), spec.clone());
            }
        }
        let mut usage: BTreeMap<String, GroupUsage> = BTreeMap::new();
        for g in groups.valid.values() {
            let mut u = GroupUsage::default();
            for family in [Family::V4, Family::V6] {
                u.ranges.insert(family, g.pools.family(family).iter().map(|r| RangeUsage::new(r.range)).collect());
            }
            if let Some(old) = self.usage.get(&g.name) {
                u.external_available.clone_from(&old.external_available);
            }
            usage.insert(g.name.clone(), u);
        }
        for (ip, used) in &self.addresses {
            let u = usage.entry(used.group.clone()).or_default();
            // A netbox group's addresses stay NetBox's (to be given back there) also while the
            // group is gone, unless a pool group of that name replaced it.
            let netbox = match groups.valid.get(&used.group) {
                Some(g) => g.netbox.is_some(),
                None => self.netbox_specs.contains_key(&used.group),
            };
            if netbox {
                u.external.insert(*ip);
                continue;
            }
            let taken = u
                .ranges
                .get_mut(&Family::of(*ip))
                .and_then(|rs| rs.iter_mut().find(|r| r.range().contains(*ip)))
                .is_some_and(|r| r.take(*ip).is_ok());
            if !taken {
                u.outside.insert(*ip);
            }
        }
        self.groups = groups;
        self.usage = usage;
    }

    /// Numbers for one group.
    #[must_use]
    pub fn stats(&self, group: &str) -> GroupStats {
        let mut stats = GroupStats::default();
        let Some(u) = self.usage.get(group) else { return stats };
        for (family, ranges) in &u.ranges {
            let size = ranges.iter().fold(AddressCount::ZERO, |acc, r| acc.saturating_add(r.range().size()));
            let available = ranges.iter().fold(AddressCount::ZERO, |acc, r| acc.saturating_add(r.available()));
            stats.size.insert(*family, size);
            stats.available.insert(*family, available);
            let in_ranges: u64 = ranges
                .iter()
                .map(|r| r.in_use().to_u128().map_or(u64::MAX, |n| u64::try_from(n).unwrap_or(u64::MAX)))
                .sum();
            let outside = u.outside.iter().filter(|ip| Family::of(**ip) == *family).count() as u64;
            let external = u.external.iter().filter(|ip| Family::of(**ip) == *family).count() as u64;
            stats.allocated.insert(*family, in_ranges + outside + external);
        }
        if self.groups.valid.get(group).is_some_and(|g| g.netbox.is_some()) {
            // NetBox knows the size; what it had left when last asked is all PureLB knows.
            stats.size.clear();
            stats.available = u.external_available.clone();
        }
        stats.outside = u.outside.len() as u64;
        stats
    }

    fn ports_conflict(&self, ip: IpAddr, me: &ServiceKey, ports: &BTreeSet<PortKey>) -> Option<(ServiceKey, PortKey)> {
        let used = self.addresses.get(&ip)?;
        for other in used.services.iter().filter(|s| *s != me) {
            if let Some(h) = self.holdings.get(other)
                && let Some(p) = h.ports.intersection(ports).next()
            {
                return Some((other.clone(), p.clone()));
            }
        }
        None
    }

    /// Takes `ip` for `key` in `group` (sharing when allowed). `allow_outside` lets adoption
    /// record addresses no range contains.
    fn take(
        &mut self,
        group: &str,
        ip: IpAddr,
        key: &ServiceKey,
        sharing_key: Option<&str>,
        ports: &BTreeSet<PortKey>,
        allow_outside: bool,
    ) -> Result<(), Failure> {
        if let Some(used) = self.addresses.get(&ip) {
            if used.services.contains(key) {
                return Ok(());
            }
            let holders: Vec<String> = used.services.iter().map(ToString::to_string).collect();
            match (&used.sharing_key, sharing_key) {
                (Some(theirs), Some(mine)) if theirs == mine && used.group == group => {}
                (Some(theirs), Some(_)) => {
                    return Err(fail(
                        FailReason::SharingConflict,
                        Some(group),
                        format!(
                            "address {ip} is held by {} with sharing key {theirs:?}; use the same purelb.io/allow-shared-ip value to share it, or another address",
                            holders.join(", ")
                        ),
                    ));
                }
                _ => {
                    return Err(fail(
                        FailReason::SharingConflict,
                        Some(group),
                        format!(
                            "address {ip} is already held by {}; to share it, set the same purelb.io/allow-shared-ip on both Services",
                            holders.join(", ")
                        ),
                    ));
                }
            }
            if let Some((other, (proto, port))) = self.ports_conflict(ip, key, ports) {
                return Err(fail(
                    FailReason::PortConflict,
                    Some(group),
                    format!(
                        "cannot share address {ip} with {other}: both use port {port}/{proto}; change one Service's port or sharing key"
                    ),
                ));
            }
            if let Some(used) = self.addresses.get_mut(&ip) {
                used.services.insert(key.clone());
                used.users.insert(key.clone());
            }
            return Ok(());
        }
        let external = self.groups.valid.get(group).is_some_and(|g| g.netbox.is_some());
        let usage = self.usage.entry(group.to_owned()).or_default();
        if external {
            usage.external.insert(ip);
            self.addresses.insert(
                ip,
                AddressUse {
                    group: group.to_owned(),
                    services: BTreeSet::from([key.clone()]),
                    sharing_key: sharing_key.map(str::to_owned),
                    users: BTreeSet::from([key.clone()]),
                },
            );
            if let Some(k) = sharing_key {
                self.sharing.insert((group.to_owned(), Family::of(ip), k.to_owned()), ip);
            }
            return Ok(());
        }
        let in_range = usage
            .ranges
            .get_mut(&Family::of(ip))
            .and_then(|rs| rs.iter_mut().find(|r| r.range().contains(ip)))
            .map(|r| r.take(ip));
        match in_range {
            Some(Ok(())) => {}
            Some(Err(_)) | None if allow_outside => {
                usage.outside.insert(ip);
            }
            _ => {
                return Err(fail(
                    FailReason::OutsidePools,
                    Some(group),
                    format!("address {ip} is not in any range of ServiceGroup {group}"),
                ));
            }
        }
        self.addresses.insert(
            ip,
            AddressUse {
                group: group.to_owned(),
                services: BTreeSet::from([key.clone()]),
                sharing_key: sharing_key.map(str::to_owned),
                users: BTreeSet::from([key.clone()]),
            },
        );
        if let Some(k) = sharing_key {
            self.sharing.insert((group.to_owned(), Family::of(ip), k.to_owned()), ip);
        }
        Ok(())
    }

    /// Gives `key` up on `ip`; frees the address when nobody else uses it.
    fn release(&mut self, ip: IpAddr, key: &ServiceKey) {
        let Some(used) = self.addresses.get_mut(&ip) else { return };
        used.services.remove(key);
        if !used.services.is_empty() {
            return;
        }
        let group = used.group.clone();
        let sharing_key = used.sharing_key.clone();
        let mut owners = vec![key.clone()];
        owners.extend(used.users.iter().filter(|u| *u != key).cloned());
        self.addresses.remove(&ip);
        if let Some(k) = sharing_key {
            self.sharing.remove(&(group.clone(), Family::of(ip), k));
        }
        if let Some(u) = self.usage.get_mut(&group) {
            let external = u.external.remove(&ip);
            if external {
                self.netbox_released.push(NetboxRelease {
                    group: group.clone(),
                    spec: self.netbox_specs.get(&group).cloned(),
                    ip,
                    owners,
                });
            }
            if !u.outside.remove(&ip)
                && !external
                && let Some(r) =
                    u.ranges.get_mut(&Family::of(ip)).and_then(|rs| rs.iter_mut().find(|r| r.range().contains(ip)))
            {
                r.release(ip);
            }
            let is_valid = self.groups.valid.contains_key(&group);
            if !is_valid && u.outside.is_empty() && u.external.is_empty() {
                self.usage.remove(&group);
            }
        }
    }

    /// A new address of `family` from `group` for `key`.
    fn allocate(
        &mut self,
        group: &Group,
        family: Family,
        key: &ServiceKey,
        sharing_key: Option<&str>,
        ports: &BTreeSet<PortKey>,
    ) -> Result<IpAddr, Failure> {
        if let Some(k) = sharing_key
            && let Some(ip) = self.sharing.get(&(group.name.clone(), family, k.to_owned())).copied()
        {
            self.take(&group.name, ip, key, sharing_key, ports, false)?;
            return Ok(ip);
        }
        let usage = self.usage.entry(group.name.clone()).or_default();
        let ranges = usage.ranges.entry(family).or_default();
        let pick = if group.pools.balance {
            ranges.iter_mut().filter(|r| !r.is_full()).min_by_key(|r| r.in_use())
        } else {
            ranges.iter_mut().find(|r| !r.is_full())
        };
        let Some(ip) = pick.and_then(|r| r.lowest_free()) else {
            return Err(fail(
                FailReason::PoolFull,
                Some(&group.name),
                format!(
                    "ServiceGroup {} has no free {family} address: release an address or add a range to the group",
                    group.name
                ),
            ));
        };
        self.take(&group.name, ip, key, sharing_key, ports, false)?;
        Ok(ip)
    }

    /// The group a handled Service should use.
    fn choose_group(&self, req: &ServiceRequest, install_namespace: &str) -> Result<Group, Failure> {
        if let Some(err) = req.errors.iter().find(|e| !matches!(e, super::request::RequestError::SharingKey { .. })) {
            return Err(fail(FailReason::Malformed, None, err.to_string()));
        }
        let group = if req.pinned.is_empty() {
            if let Some(name) = &req.group {
                match self.groups.valid.get(name) {
                    Some(g) => g.clone(),
                    None => return Err(self.missing_group(name, install_namespace)),
                }
            } else {
                self.groups.default_for(&req.key.namespace).cloned().ok_or_else(|| {
                    fail(FailReason::UnknownGroup, None, format!(
                        "no ServiceGroup serves namespace {}: create a ServiceGroup named \"default\" or one listing the namespace in {install_namespace}, or set purelb.io/service-group",
                        req.key.namespace
                    ))
                })?
            }
        } else {
            if let Some(g) = req.group.as_ref().and_then(|name| self.groups.valid.get(name))
                && g.netbox.is_some()
            {
                return Err(fail(
                    FailReason::Malformed,
                    Some(&g.name),
                    format!(
                        "ServiceGroup {} takes its addresses from NetBox, which cannot pin addresses: remove purelb.io/addresses (or spec.loadBalancerIP)",
                        g.name
                    ),
                ));
            }
            let mut found: Option<&Group> = None;
            for ip in &req.pinned {
                let skipped = self.groups.valid.values().find_map(|g| g.pools.skipped_reason(*ip).map(|w| (g, w)));
                if let Some(why) = crate::core::ipam::special::special_purpose(*ip) {
                    return Err(fail(
                        FailReason::Reserved,
                        None,
                        format!("address {ip} is {why} and is never handed out: pin another address"),
                    ));
                }
                if let Some((g, why)) = skipped {
                    return Err(fail(
                        FailReason::Reserved,
                        Some(&g.name),
                        format!("address {ip} is {why} and is never handed out: pin another address"),
                    ));
                }
                let Some(g) = self.groups.containing(*ip) else {
                    return Err(fail(
                        FailReason::OutsidePools,
                        None,
                        format!(
                            "address {ip} is not in any ServiceGroup's ranges: pin an address from a group's pools or remove the pin"
                        ),
                    ));
                };
                if let Some(prev) = found
                    && prev.name != g.name
                {
                    return Err(fail(
                        FailReason::Malformed,
                        None,
                        format!(
                            "the pinned addresses are in different ServiceGroups ({} and {}); pin addresses of one group",
                            prev.name, g.name
                        ),
                    ));
                }
                found = Some(g);
            }
            let g = found.cloned().ok_or_else(|| fail(FailReason::Malformed, None, "no pinned address"))?;
            if let Some(name) = &req.group
                && *name != g.name
            {
                return Err(fail(
                    FailReason::Malformed,
                    Some(&g.name),
                    format!(
                        "the pinned address belongs to ServiceGroup {} but purelb.io/service-group says {name}",
                        g.name
                    ),
                ));
            }
            g
        };
        if let Some(why) = self.groups.denial(&group, &req.key.namespace) {
            return Err(fail(FailReason::NamespaceDenied, Some(&group.name), why));
        }
        Ok(group)
    }

    fn missing_group(&self, name: &str, install_namespace: &str) -> Failure {
        if let Some(invalid) = self.groups.invalid.get(name) {
            return fail(
                FailReason::InvalidGroup,
                Some(name),
                format!("ServiceGroup {name} is invalid: {}", invalid.message),
            );
        }
        if let Some(elsewhere) =
            self.groups.elsewhere.iter().find(|e| e.rsplit_once('/').is_some_and(|(_, n)| n == name))
        {
            return fail(
                FailReason::UnknownGroup,
                Some(name),
                format!(
                    "ServiceGroup {elsewhere} is not in PureLB's namespace {install_namespace}; ServiceGroups are read only from there"
                ),
            );
        }
        fail(
            FailReason::UnknownGroup,
            Some(name),
            format!(
                "ServiceGroup {name} does not exist in namespace {install_namespace}: create it or fix purelb.io/service-group"
            ),
        )
    }

    fn families_for(req: &ServiceRequest, group: &Group) -> Result<Vec<Family>, Failure> {
        let served: Vec<Family> = req.families.iter().copied().filter(|f| group.serves(*f)).collect();
        match req.policy {
            FamilyPolicy::SingleStack => {
                let f = req.families.first().copied().unwrap_or(Family::V4);
                if group.serves(f) {
                    Ok(vec![f])
                } else {
                    Err(fail(
                        FailReason::Family,
                        Some(&group.name),
                        format!("ServiceGroup {} has no {f} range but the Service is single-stack {f}", group.name),
                    ))
                }
            }
            FamilyPolicy::PreferDualStack if served.is_empty() => Err(fail(
                FailReason::Family,
                Some(&group.name),
                format!("ServiceGroup {} serves none of the Service's families", group.name),
            )),
            FamilyPolicy::PreferDualStack => Ok(served),
            FamilyPolicy::RequireDualStack if served.len() < 2 => Err(fail(
                FailReason::Family,
                Some(&group.name),
                format!(
                    "the Service requires dual-stack but ServiceGroup {} does not have both IPv4 and IPv6 ranges",
                    group.name
                ),
            )),
            FamilyPolicy::RequireDualStack => Ok(served),
        }
    }

    /// Records what a Service holds according to the cluster (after a restart, a leader
    /// change, or from the Go PureLB): its `status` addresses under `allocated-from`.
    ///
    /// # Errors
    ///
    /// The addresses conflict with what another Service holds; nothing is recorded.
    pub fn adopt(&mut self, req: &ServiceRequest) -> Result<(), Failure> {
        if !req.allocated_by_us || req.current.is_empty() || !req.handled {
            return Ok(());
        }
        let group = req
            .allocated_from
            .clone()
            .or_else(|| req.current.first().and_then(|ip| self.groups.containing(*ip)).map(|g| g.name.clone()))
            .unwrap_or_default();
        let pool_type = self.groups.valid.get(&group).map_or(PoolType::Local, |g| g.pool_type);
        let mut taken = Vec::new();
        for ip in &req.current {
            if let Err(e) = self.take(&group, *ip, &req.key, req.sharing_key.as_deref(), &req.ports, true) {
                for t in taken {
                    self.release(t, &req.key);
                }
                return Err(e);
            }
            taken.push(*ip);
        }
        self.holdings.insert(
            req.key.clone(),
            Holding {
                group,
                pool_type,
                addresses: req.current.clone(),
                sharing_key: req.sharing_key.clone(),
                ports: req.ports.clone(),
            },
        );
        Ok(())
    }

    /// Releases everything `key` holds (Service deleted or no longer handled).
    pub fn forget(&mut self, key: &ServiceKey) -> Option<Holding> {
        let holding = self.holdings.remove(key);
        let held = holding.as_ref().map(|h| h.addresses.clone()).unwrap_or_default();
        for ip in &held {
            self.release(*ip, key);
        }
        for ip in self.pending_release.remove(key).unwrap_or_default() {
            if !held.contains(&ip) {
                self.release(ip, key);
            }
        }
        holding
    }

    /// Frees the addresses `key` gave up in its last [`Decision::Changed`], now that its status
    /// no longer shows them. Returns whether anything was freed (Services waiting for space may
    /// now fit).
    pub fn confirm_released(&mut self, key: &ServiceKey) -> bool {
        let Some(pending) = self.pending_release.remove(key) else { return false };
        let holds = self.holdings.get(key).map(|h| h.addresses.clone()).unwrap_or_default();
        for ip in &pending {
            if !holds.contains(ip) {
                self.release(*ip, key);
            }
        }
        !pending.is_empty()
    }

    /// What `req` needs reserved in NetBox before [`Self::decide`] can serve it: `None` when
    /// it is not (or not only) a netbox group's business, or it already holds what it needs.
    /// Mirrors the group and family choice of [`Self::decide`], which reports any failure.
    #[must_use]
    pub fn netbox_need(&self, req: &ServiceRequest, install_namespace: &str) -> Option<NetboxNeed> {
        if !req.handled {
            return None;
        }
        let held = self.holdings.get(&req.key);
        let explicit = !req.pinned.is_empty() || req.group.is_some();
        let group = match (held, explicit) {
            (Some(h), false) => self.groups.valid.get(&h.group)?.clone(),
            _ => self.choose_group(req, install_namespace).ok()?,
        };
        let spec = group.netbox.clone()?;
        let families = Self::families_for(req, &group).ok()?;
        let same_group = held.is_some_and(|h| h.group == group.name);
        let families: Vec<Family> = families
            .into_iter()
            .filter(|f| {
                let have = same_group && held.is_some_and(|h| h.addresses.iter().any(|ip| Family::of(*ip) == *f));
                !have && self.shared_address(&group.name, *f, req.sharing_key.as_deref()).is_none()
            })
            .collect();
        (!families.is_empty()).then(|| NetboxNeed { group: group.name.clone(), spec, families, policy: req.policy })
    }

    /// Hands over what was reserved in NetBox for `key`; the next [`Self::decide`] of that
    /// Service uses it (addresses it does not use must be given back to NetBox).
    pub fn offer(&mut self, key: &ServiceKey, offers: NetboxOffers) {
        if offers.is_empty() {
            self.offers.remove(key);
        } else {
            self.offers.insert(key.clone(), offers);
        }
    }

    /// Whether NetBox's address `ip` may be given to a Service: nobody holds it and it is in no
    /// range of a local or remote group (those are PureLB's to hand out).
    #[must_use]
    pub fn netbox_may_use(&self, ip: IpAddr) -> bool {
        !self.addresses.contains_key(&ip) && self.groups.containing(ip).is_none()
    }

    /// NetBox addresses released since the last call, to be given back to NetBox.
    pub fn take_netbox_releases(&mut self) -> Vec<NetboxRelease> {
        std::mem::take(&mut self.netbox_released)
    }

    /// `spec.netbox` of the valid netbox group `group`.
    #[must_use]
    pub fn netbox_spec(&self, group: &str) -> Option<&NetboxSpec> {
        self.groups.valid.get(group).and_then(|g| g.netbox.as_ref())
    }

    /// Whether any Service holds `ip`.
    #[must_use]
    pub fn is_held(&self, ip: IpAddr) -> bool {
        self.addresses.contains_key(&ip)
    }

    /// Records how many reserved addresses of `family` NetBox had left for a netbox group
    /// (shown as `availableIPv4/IPv6`).
    pub fn set_netbox_available(&mut self, group: &str, family: Family, available: u64) {
        if let Some(u) = self.usage.get_mut(group) {
            u.external_available.insert(family, AddressCount::from(available));
        }
    }

    /// The address a Service with `sharing_key` already holds in `group` for `family`.
    fn shared_address(&self, group: &str, family: Family, sharing_key: Option<&str>) -> Option<IpAddr> {
        let k = sharing_key?;
        self.sharing.get(&(group.to_owned(), family, k.to_owned())).copied()
    }

    /// An address of `family` for `key` from a netbox group: a shared one, else the one NetBox
    /// reserved for it.
    fn allocate_netbox(
        &mut self,
        group: &Group,
        family: Family,
        key: &ServiceKey,
        sharing_key: Option<&str>,
        ports: &BTreeSet<PortKey>,
        offers: &NetboxOffers,
    ) -> Result<IpAddr, Failure> {
        let ip = match (self.shared_address(&group.name, family, sharing_key), offers.get(&family)) {
            (Some(ip), _) => ip,
            (None, Some(Ok(ip))) if let Some(why) = crate::core::ipam::special::special_purpose(*ip) => {
                return Err(fail(
                    FailReason::Reserved,
                    Some(&group.name),
                    format!(
                        "NetBox offered {ip}, which is {why} and is never handed out: mark it as not reserved for the tenant in NetBox"
                    ),
                ));
            }
            (None, Some(Ok(ip))) => *ip,
            (None, Some(Err(failure))) => return Err(failure.clone()),
            // Another family's failure stopped the reservation: that is the reason.
            (None, None) => {
                return Err(offers.values().find_map(|r| r.as_ref().err()).cloned().unwrap_or_else(|| {
                    fail(
                        FailReason::Netbox,
                        Some(&group.name),
                        format!("no {family} address has been reserved in NetBox for this Service yet; PureLB retries"),
                    )
                }));
            }
        };
        self.take(&group.name, ip, key, sharing_key, ports, false)?;
        Ok(ip)
    }

    /// Decides one Service and updates the table.
    pub fn decide(&mut self, req: &ServiceRequest, install_namespace: &str) -> Decision {
        let offers = self.offers.remove(&req.key).unwrap_or_default();
        let held = self.holdings.get(&req.key).cloned();
        if !req.handled {
            // Taken until the cleared status is written (`confirm_released`).
            return match self.holdings.remove(&req.key) {
                Some(h) => {
                    self.pending_release.entry(req.key.clone()).or_default().extend(h.addresses.iter().copied());
                    Decision::Released(h)
                }
                None => Decision::NotHandled,
            };
        }
        let explicit = !req.pinned.is_empty() || req.group.is_some();
        let group = match (&held, explicit) {
            // A Service that did not ask for a group keeps the one it has: a new default group
            // or a deleted or broken group never moves its addresses.
            (Some(h), false) => match self.groups.valid.get(&h.group) {
                Some(g) => g.clone(),
                None => {
                    let warning = format!(
                        "ServiceGroup {} no longer exists or is invalid; the Service keeps its addresses until it is released",
                        h.group
                    );
                    return Decision::Keep { holding: h.clone(), warnings: vec![warning] };
                }
            },
            _ => match self.choose_group(req, install_namespace) {
                Ok(g) => g,
                Err(failure) => return Decision::Failed { failure, kept: held },
            },
        };
        let mut families = match Self::families_for(req, &group) {
            Ok(f) => f,
            Err(failure) => return Decision::Failed { failure, kept: held },
        };
        let same_group = held.as_ref().is_some_and(|h| h.group == group.name);
        if group.netbox.is_some() && req.policy == FamilyPolicy::PreferDualStack {
            // NetBox may have addresses of one family only: take what it has.
            let usable: Vec<Family> = families
                .iter()
                .copied()
                .filter(|f| {
                    let have =
                        same_group && held.as_ref().is_some_and(|h| h.addresses.iter().any(|ip| Family::of(*ip) == *f));
                    have || self.shared_address(&group.name, *f, req.sharing_key.as_deref()).is_some()
                        || matches!(offers.get(f), Some(Ok(_)))
                })
                .collect();
            if !usable.is_empty() {
                families = usable;
            }
        }
        let mut assigned: Vec<IpAddr> = Vec::new();
        let mut addresses: Vec<IpAddr> = Vec::new();
        for family in &families {
            let have = held
                .as_ref()
                .filter(|_| same_group)
                .and_then(|h| h.addresses.iter().copied().find(|ip| Family::of(*ip) == *family));
            let pin = req.pinned_for(*family);
            let result = match (have, pin) {
                (Some(h), None) => Ok(h),
                (Some(h), Some(p)) if h == p => Ok(h),
                (_, Some(p)) => {
                    self.take(&group.name, p, &req.key, req.sharing_key.as_deref(), &req.ports, false).map(|()| p)
                }
                (None, None) if group.netbox.is_some() => {
                    self.allocate_netbox(&group, *family, &req.key, req.sharing_key.as_deref(), &req.ports, &offers)
                }
                (None, None) => self.allocate(&group, *family, &req.key, req.sharing_key.as_deref(), &req.ports),
            };
            match result {
                Ok(ip) => {
                    if Some(ip) != have {
                        assigned.push(ip);
                    }
                    addresses.push(ip);
                }
                Err(failure) => {
                    for ip in assigned {
                        self.release(ip, &req.key);
                    }
                    return Decision::Failed { failure, kept: held };
                }
            }
        }
        let released: Vec<IpAddr> = held
            .as_ref()
            .map(|h| h.addresses.iter().copied().filter(|ip| !addresses.contains(ip)).collect())
            .unwrap_or_default();
        if !released.is_empty() {
            self.pending_release.entry(req.key.clone()).or_default().extend(released.iter().copied());
        }
        let holding = Holding {
            group: group.name.clone(),
            pool_type: group.pool_type,
            addresses: addresses.clone(),
            sharing_key: match &held {
                Some(h) if assigned.is_empty() => h.sharing_key.clone(),
                _ => req.sharing_key.clone(),
            },
            ports: req.ports.clone(),
        };
        self.holdings.insert(req.key.clone(), holding.clone());
        if assigned.is_empty() && released.is_empty() {
            let warnings = addresses
                .iter()
                .filter(|ip| group.netbox.is_none() && !group.contains(**ip))
                .map(|ip| format!(
                    "address {ip} is no longer in any range of ServiceGroup {}; the Service keeps it until it is released",
                    group.name
                ))
                .collect();
            Decision::Keep { holding, warnings }
        } else {
            Decision::Changed { holding, assigned, released }
        }
    }

    /// Releases what Services that no longer exist held; returns them.
    pub fn forget_missing(&mut self, existing: &HashSet<ServiceKey>) -> Vec<(ServiceKey, Holding)> {
        let gone: BTreeSet<ServiceKey> = self
            .holdings
            .keys()
            .chain(self.pending_release.keys())
            .filter(|k| !existing.contains(*k))
            .cloned()
            .collect();
        gone.into_iter().filter_map(|k| self.forget(&k).map(|h| (k, h))).collect()
    }
}

#[cfg(test)]
mod tests;
