//! The ServiceGroups the allocator uses, validated as a set: groups are read from the install
//! namespace only and validated in name order, so that a range overlapping an earlier group
//! makes the later group invalid, whatever order the objects arrived in. Entry point:
//! [`GroupSet::build`].

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    api::{NetboxSpec, PoolType, ServiceGroup},
    core::ipam::{Family, ParsedPools, ParsedRange, find_overlap, parse_aggregation, parse_pool_spec},
};

/// A valid group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Name (in the install namespace).
    pub name: String,
    /// local, remote or netbox.
    pub pool_type: PoolType,
    /// Address ranges (empty for netbox groups).
    pub pools: ParsedPools,
    /// `spec.netbox` of a netbox group (its addresses come from NetBox, not from ranges).
    pub netbox: Option<NetboxSpec>,
    /// `spec.namespaces` (deduplicated).
    pub namespaces: BTreeSet<String>,
    /// `spec.enforceNamespaces`.
    pub enforce: bool,
    /// `spec.namespaceDefault`.
    pub namespace_default: bool,
    /// `metadata.generation`.
    pub generation: Option<i64>,
}

impl Group {
    /// Whether the group has ranges of `family` (a netbox group may serve both families:
    /// NetBox decides, per allocation, whether it has an address).
    #[must_use]
    pub fn serves(&self, family: Family) -> bool {
        self.netbox.is_some() || !self.pools.family(family).is_empty()
    }

    /// Whether `ip` lies in one of the group's ranges.
    #[must_use]
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.pools.all().any(|r| r.range.contains(ip))
    }

    /// Whether the group lists `namespace`.
    #[must_use]
    pub fn lists(&self, namespace: &str) -> bool {
        self.namespaces.contains(namespace)
    }
}

/// An invalid group and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidGroup {
    /// Name.
    pub name: String,
    /// What is wrong, naming the field and value.
    pub message: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
}

/// Every group, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSet {
    /// Valid groups by name.
    pub valid: BTreeMap<String, Group>,
    /// Invalid groups by name.
    pub invalid: BTreeMap<String, InvalidGroup>,
    /// Groups found outside the install namespace (`namespace/name`); never used.
    pub elsewhere: BTreeSet<String>,
}

/// Checks what the API server cannot: the URL is usable and the aggregation parses.
fn check_netbox(spec: &NetboxSpec) -> Result<(), String> {
    crate::netbox::check_url(&spec.url).map_err(|e| e.to_string())?;
    parse_aggregation("spec.netbox.aggregation", spec.aggregation.as_deref(), Family::V6, Family::V6.bits())
        .map_err(|e| e.to_string())?;
    if spec.tenant.trim().is_empty() {
        return Err("spec.netbox.tenant is empty: set it to the slug of the NetBox tenant whose reserved addresses PureLB may use".to_owned());
    }
    Ok(())
}

fn pool_spec_of(group: &ServiceGroup) -> Result<(PoolType, ParsedPools), String> {
    let spec = &group.spec;
    match (spec.pool_type(), &spec.local, &spec.remote, &spec.netbox) {
        (Some(PoolType::Local), Some(p), _, _) => {
            parse_pool_spec("spec.local", p).map(|x| (PoolType::Local, x)).map_err(|e| e.to_string())
        }
        (Some(PoolType::Remote), _, Some(p), _) => {
            parse_pool_spec("spec.remote", p).map(|x| (PoolType::Remote, x)).map_err(|e| e.to_string())
        }
        (Some(PoolType::Netbox), _, _, Some(n)) => check_netbox(n).map(|()| (PoolType::Netbox, ParsedPools::default())),
        _ => Err("spec: exactly one of spec.local, spec.remote or spec.netbox must be set".to_owned()),
    }
}

impl GroupSet {
    /// Whether a group of this name exists in the install namespace (valid or not).
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.valid.contains_key(name) || self.invalid.contains_key(name)
    }

    /// Validates `groups`; only those in `install_namespace` are used.
    #[must_use]
    pub fn build<'a>(groups: impl IntoIterator<Item = &'a ServiceGroup>, install_namespace: &str) -> Self {
        let mut set = Self::default();
        let mut mine: Vec<&ServiceGroup> = Vec::new();
        for g in groups {
            let ns = g.metadata.namespace.as_deref().unwrap_or_default();
            let name = g.metadata.name.clone().unwrap_or_default();
            if ns == install_namespace {
                mine.push(g);
            } else {
                set.elsewhere.insert(format!("{ns}/{name}"));
            }
        }
        mine.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut accepted: Vec<(String, ParsedRange)> = Vec::new();
        for g in mine {
            let name = g.metadata.name.clone().unwrap_or_default();
            let generation = g.metadata.generation;
            let invalid = |message: String| InvalidGroup { name: name.clone(), message, generation };
            let (pool_type, pools) = match pool_spec_of(g) {
                Ok(p) => p,
                Err(message) => {
                    set.invalid.insert(name.clone(), invalid(message));
                    continue;
                }
            };
            let own: Vec<&ParsedRange> = pools.all().collect();
            let existing: Vec<(&str, &ParsedRange)> = accepted.iter().map(|(n, r)| (n.as_str(), r)).collect();
            if let Some(err) = find_overlap(&own, &existing) {
                set.invalid.insert(name.clone(), invalid(err.to_string()));
                continue;
            }
            let namespaces: BTreeSet<String> = g.spec.namespaces.iter().flatten().cloned().collect();
            let enforce = g.spec.enforce_namespaces.unwrap_or(false);
            let namespace_default = g.spec.namespace_default.unwrap_or(false);
            if (enforce || namespace_default) && namespaces.is_empty() {
                let field = if enforce { "spec.enforceNamespaces" } else { "spec.namespaceDefault" };
                set.invalid.insert(name.clone(), invalid(format!("{field} requires a non-empty spec.namespaces")));
                continue;
            }
            let install_ns = g.metadata.namespace.clone().unwrap_or_default();
            accepted.extend(pools.all().map(|r| (format!("{install_ns}/{name}"), r.clone())));
            set.valid.insert(
                name.clone(),
                Group {
                    name,
                    pool_type,
                    pools,
                    netbox: g.spec.netbox.clone().filter(|_| pool_type == PoolType::Netbox),
                    namespaces,
                    enforce,
                    namespace_default,
                    generation,
                },
            );
        }
        set
    }

    /// The valid group whose ranges contain `ip`.
    #[must_use]
    pub fn containing(&self, ip: std::net::IpAddr) -> Option<&Group> {
        self.valid.values().find(|g| g.contains(ip))
    }

    /// Whether some group listing `namespace` enforces its list (the namespace is fenced).
    #[must_use]
    pub fn is_fenced(&self, namespace: &str) -> bool {
        self.valid.values().any(|g| g.enforce && g.lists(namespace))
    }

    /// The default group for `namespace`: the group listing it (the one with
    /// `namespaceDefault` when several do; ties by name), else the group named `default`.
    #[must_use]
    pub fn default_for(&self, namespace: &str) -> Option<&Group> {
        let listing: Vec<&Group> = self.valid.values().filter(|g| g.lists(namespace)).collect();
        match listing.as_slice() {
            [] => self.valid.get("default"),
            [one] => Some(one),
            many => many.iter().find(|g| g.namespace_default).or(many.first()).copied(),
        }
    }

    /// Why `namespace` may not use `group`, if it may not.
    #[must_use]
    pub fn denial(&self, group: &Group, namespace: &str) -> Option<String> {
        if group.enforce && !group.lists(namespace) {
            return Some(format!(
                "ServiceGroup {} serves only namespaces {:?} (enforceNamespaces); namespace {namespace} may not use it",
                group.name,
                group.namespaces.iter().collect::<Vec<_>>()
            ));
        }
        if !group.lists(namespace) && self.is_fenced(namespace) {
            return Some(format!(
                "namespace {namespace} may only use ServiceGroups that list it (a group listing it sets enforceNamespaces), and ServiceGroup {} does not",
                group.name
            ));
        }
        None
    }
}
