//! The agent's configuration: which `LBNodeAgent` governs this node (`api.md` §1: a specific
//! selector beats a catch-all, ties by namespace/name), checked into a [`Config`].
//!
//! Entry points: [`select`], [`Config::from_spec`], [`selector_matches`]; which interfaces
//! announce local addresses and the subnets they advertise: [`announce_interfaces`],
//! [`announce_subnets`] (shared with `purelb reconcile`).

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::{
    api::{AddressOptions, LBNodeAgent, LocalAgentSpec},
    core::{
        announce::{BurstConfig, BurstConfigError},
        ipam::Subnet,
        netlink::{Address, Link},
    },
};

/// A checked configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `namespace/name` of the LBNodeAgent, or `None` for the built-in defaults.
    pub source: Option<String>,
    /// `local.localInterface`: `default` or an interface name pattern (see [`name_matches`]).
    pub local_interface: String,
    /// `local.interfaces`.
    pub extra_interfaces: Vec<String>,
    /// `local.dummyInterface`.
    pub dummy_interface: String,
    /// The GARP/NA burst, `None` when disabled.
    pub burst: Option<BurstConfig>,
    /// Options of local addresses.
    pub local_options: AddressOptions,
    /// Options of remote addresses.
    pub dummy_options: AddressOptions,
}

/// Why an LBNodeAgent cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `garp` section is invalid.
    #[error("LBNodeAgent {source_name}: spec.local.garp: {error}")]
    Garp {
        /// `namespace/name`.
        source_name: String,
        /// What is wrong.
        error: BurstConfigError,
    },
    /// A lifetime pair the kernel would not take as meant.
    #[error(
        "LBNodeAgent {source_name}: spec.local.addressConfig.{field}: preferredLifetime {preferred} is longer than validLifetime {valid}"
    )]
    Lifetimes {
        /// `namespace/name`.
        source_name: String,
        /// `localInterface` or `dummyInterface`.
        field: &'static str,
        /// Valid lifetime.
        valid: u32,
        /// Preferred lifetime.
        preferred: u32,
    },
    /// `localInterface` is not a valid regular expression.
    #[error("LBNodeAgent {source_name}: {message}")]
    InterfacePattern {
        /// `namespace/name`.
        source_name: String,
        /// What is wrong.
        message: String,
    },
}

impl Default for Config {
    fn default() -> Self {
        // The built-in defaults are valid by construction.
        Self::from_spec(None, &default_spec()).unwrap_or_else(|_| Self {
            source: None,
            local_interface: "default".to_owned(),
            extra_interfaces: Vec::new(),
            dummy_interface: crate::api::contract::DEFAULT_DUMMY_INTERFACE.to_owned(),
            burst: None,
            local_options: AddressOptions::local_default(),
            dummy_options: AddressOptions::dummy_default(),
        })
    }
}

fn default_spec() -> LocalAgentSpec {
    crate::api::LBNodeAgentSpec::default().local
}

impl Config {
    /// Checks a `local` section.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field.
    pub fn from_spec(source: Option<String>, spec: &LocalAgentSpec) -> Result<Self, ConfigError> {
        let name = source.clone().unwrap_or_else(|| "(defaults)".to_owned());
        let burst = BurstConfig::from_spec(&spec.garp)
            .map_err(|error| ConfigError::Garp { source_name: name.clone(), error })?;
        if spec.local_interface != "default"
            && let Some(message) = pattern_error(&spec.local_interface)
        {
            return Err(ConfigError::InterfacePattern { source_name: name, message });
        }
        for (field, o) in [
            ("localInterface", AddressOptions::from(spec.address_config.local_interface)),
            ("dummyInterface", AddressOptions::from(spec.address_config.dummy_interface)),
        ] {
            if o.valid_lifetime != 0 && o.preferred_lifetime > o.valid_lifetime {
                return Err(ConfigError::Lifetimes {
                    source_name: name,
                    field,
                    valid: o.valid_lifetime,
                    preferred: o.preferred_lifetime,
                });
            }
        }
        Ok(Self {
            source,
            local_interface: spec.local_interface.clone(),
            extra_interfaces: spec.interfaces.clone(),
            dummy_interface: spec.dummy_interface.clone(),
            burst,
            local_options: spec.address_config.local_interface.into(),
            dummy_options: spec.address_config.dummy_interface.into(),
        })
    }
}

/// Whether `selector` selects a node with `labels` (`matchLabels` and `matchExpressions` with
/// `In`, `NotIn`, `Exists`, `DoesNotExist`; an unknown operator matches nothing).
#[must_use]
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k).is_some_and(|have| have == v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => have.is_none_or(|h| !values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

fn is_catch_all(selector: Option<&LabelSelector>) -> bool {
    selector.is_none_or(|s| {
        s.match_labels.as_ref().is_none_or(BTreeMap::is_empty) && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
    })
}

/// The LBNodeAgent that governs a node with `labels`: matching ones, a specific selector before
/// a catch-all, then by namespace/name.
#[must_use]
pub fn select<'a>(
    agents: &'a [std::sync::Arc<LBNodeAgent>],
    labels: &BTreeMap<String, String>,
) -> Option<&'a LBNodeAgent> {
    let mut matching: Vec<&LBNodeAgent> = agents
        .iter()
        .map(AsRef::as_ref)
        .filter(|a| a.spec.node_selector.as_ref().is_none_or(|s| selector_matches(s, labels)))
        .collect();
    matching.sort_by_key(|a| {
        (
            is_catch_all(a.spec.node_selector.as_ref()),
            a.metadata.namespace.clone().unwrap_or_default(),
            a.metadata.name.clone().unwrap_or_default(),
        )
    });
    matching.into_iter().next()
}

/// Interfaces that announce local addresses, in order: with `localInterface: default` the
/// interfaces of `default_links` (the default-route interface of each family, IPv4 first),
/// otherwise every non-loopback link of `links` whose name matches the pattern; then
/// `interfaces`. Never the dummy interface; no name twice.
#[must_use]
pub fn announce_interfaces(config: &Config, links: &[Link], default_links: &[Link]) -> Vec<String> {
    let mut names: Vec<String> = if config.local_interface == "default" {
        default_links.iter().map(|l| l.name.clone()).collect()
    } else {
        links
            .iter()
            .filter(|l| !l.loopback && name_matches(&config.local_interface, &l.name))
            .map(|l| l.name.clone())
            .collect()
    };
    names.extend(config.extra_interfaces.iter().cloned());
    names.retain(|n| *n != config.dummy_interface);
    let mut seen = HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Why `config` cannot be used on a node with `links`: its `localInterface` pattern matches
/// none of them (a typo, or a selector that picked the wrong nodes). `default` always applies.
#[must_use]
pub fn unmatched_interface(config: &Config, links: &[Link], node: &str) -> Option<String> {
    if config.local_interface == "default"
        || links.iter().any(|l| !l.loopback && name_matches(&config.local_interface, &l.name))
    {
        return None;
    }
    let mut names: Vec<&str> = links.iter().filter(|l| !l.loopback).map(|l| l.name.as_str()).collect();
    names.sort_unstable();
    Some(format!(
        "localInterface {:?} matches no interface on node {node} (it has: {}); write a regular expression that \
         matches the whole name of the interface to announce on, or \"default\"; keeping the previous configuration",
        config.local_interface,
        names.join(", ")
    ))
}

/// The subnets of the announce interfaces `names` (what `purelb.io/subnets` advertises): every
/// subnet an address on them [defines](Address::defines_subnet), once, in address order.
#[must_use]
pub fn announce_subnets(addresses: &[Address], names: &[String]) -> Vec<Subnet> {
    let mut subnets = Vec::new();
    for a in addresses.iter().filter(|a| names.contains(&a.ifname) && a.defines_subnet()) {
        let s = a.subnet();
        if !subnets.contains(&s) {
            subnets.push(s);
        }
    }
    subnets
}

/// Whether an interface `name` matches the `localInterface` pattern: an anchored regular
/// expression over the whole name (`eth0`, `eth.*`, `en(p|s)[0-9]+s0`), as `api.md` §1 says. A
/// pattern that is not a valid expression matches nothing (and [`pattern_error`] says why).
#[must_use]
pub fn name_matches(pattern: &str, name: &str) -> bool {
    anchored(pattern).is_ok_and(|re| re.is_match(name))
}

/// Why `pattern` is not a usable interface pattern, if it is not.
#[must_use]
pub fn pattern_error(pattern: &str) -> Option<String> {
    anchored(pattern)
        .err()
        .map(|e| format!("spec.local.localInterface {pattern:?} is not a valid regular expression: {e}"))
}

fn anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    let body = pattern.trim_start_matches('^').trim_end_matches('$');
    regex::RegexBuilder::new(&format!("^(?:{body})$")).size_limit(1 << 16).build()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};

    use super::*;
    use crate::api::LBNodeAgentSpec;

    fn agent(name: &str, selector: Option<LabelSelector>) -> Arc<LBNodeAgent> {
        Arc::new(LBNodeAgent {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("purelb-system".into()),
                ..ObjectMeta::default()
            },
            spec: LBNodeAgentSpec { node_selector: selector, ..LBNodeAgentSpec::default() },
        })
    }

    #[test]
    fn specific_selector_beats_catch_all_and_names_break_ties() {
        let zone = LabelSelector {
            match_labels: Some(BTreeMap::from([("zone".to_owned(), "a".to_owned())])),
            ..LabelSelector::default()
        };
        let agents = vec![agent("a-all", None), agent("z-zone", Some(zone)), agent("b-all", None)];
        let in_a = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
        let in_b = BTreeMap::from([("zone".to_owned(), "b".to_owned())]);
        assert_eq!(select(&agents, &in_a).unwrap().metadata.name.as_deref(), Some("z-zone"));
        assert_eq!(select(&agents, &in_b).unwrap().metadata.name.as_deref(), Some("a-all"));
        assert!(select(&[], &in_a).is_none());
    }

    #[test]
    fn expressions_match() {
        let sel = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
            }]),
            ..LabelSelector::default()
        };
        let labels = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        assert!(selector_matches(&sel("In", &["v"]), &labels));
        assert!(!selector_matches(&sel("NotIn", &["v"]), &labels));
        assert!(selector_matches(&sel("Exists", &[]), &labels));
        assert!(!selector_matches(&sel("DoesNotExist", &[]), &labels));
        assert!(!selector_matches(&sel("Bogus", &[]), &labels));
    }

    #[test]
    fn defaults_and_bad_configs() {
        let c = Config::default();
        assert_eq!(c.dummy_interface, "kube-lb0");
        assert_eq!(c.local_options.valid_lifetime, 300);
        assert!(c.burst.is_some());
        let mut spec = default_spec();
        spec.garp.count = 0;
        assert!(Config::from_spec(Some("ns/x".into()), &spec).unwrap_err().to_string().contains("garp"));
        let mut spec = default_spec();
        spec.address_config.local_interface.preferred_lifetime = 900;
        assert!(Config::from_spec(None, &spec).is_err());
    }

    fn link(index: u32, name: &str, loopback: bool) -> Link {
        Link {
            index,
            name: name.to_owned(),
            kind: None,
            admin_up: true,
            lower_up: true,
            loopback,
            promote_secondaries: None,
            alias: None,
        }
    }

    #[test]
    fn announce_interfaces_and_their_subnets() {
        let links = [link(1, "lo", true), link(2, "eth0", false), link(3, "eth1", false), link(4, "kube-lb0", false)];
        let mut c =
            Config { extra_interfaces: vec!["eth1".into(), "kube-lb0".into(), "eth0".into()], ..Config::default() };
        // `default`: the default-route links, then the extras; never the dummy, no name twice.
        assert_eq!(announce_interfaces(&c, &links, &links[1..2]), ["eth0", "eth1"]);
        c.local_interface = "eth.*".into();
        c.extra_interfaces.clear();
        assert_eq!(announce_interfaces(&c, &links, &[]), ["eth0", "eth1"]);
        c.local_interface = ".*".into();
        assert_eq!(announce_interfaces(&c, &links, &[]), ["eth0", "eth1"], "no loopback, no dummy");

        let address = |index: u32, ifname: &str, ip: &str, prefix_len: u8, mark: Option<u8>| Address {
            protocol: mark,
            ..Address::plain(index, ifname, ip, prefix_len)
        };
        let addresses = [
            address(2, "eth0", "192.0.2.11", 24, None),
            address(2, "eth0", "192.0.2.12", 24, None),
            address(2, "eth0", "192.0.2.240", 24, Some(crate::core::netlink::PURELB_ADDRESS_PROTOCOL)),
            address(3, "eth1", "198.51.100.7", 32, None),
            address(4, "kube-lb0", "203.0.113.1", 24, None),
        ];
        let subnets = announce_subnets(&addresses, &["eth0".into(), "eth1".into()]);
        assert_eq!(subnets, vec![Subnet::new("192.0.2.0".parse().unwrap(), 24)]);
    }

    #[test]
    fn interface_patterns() {
        assert!(name_matches("eth0", "eth0"));
        assert!(!name_matches("eth0", "eth01"));
        assert!(name_matches("^eth.*$", "eth7"));
        assert!(name_matches("enp.*", "enp3s0"));
        assert!(!name_matches("enp.*", "eth0"));
        assert!(name_matches("en(p|s)[0-9]+s0", "ens3s0"));
        assert!(!name_matches("eth", "eth0"), "anchored: the whole name must match");
        assert!(!name_matches("eth(", "eth("));
        assert!(pattern_error("eth(").is_some_and(|e| e.contains("localInterface")));
        assert!(pattern_error("eth.*").is_none());
    }

    #[test]
    fn a_pattern_that_matches_no_interface_is_reported_with_the_names_there_are() {
        let links = [link(1, "lo", true), link(2, "eth0", false), link(3, "kube-lb0", false)];
        let mut c = Config::default();
        assert_eq!(unmatched_interface(&c, &links, "n1"), None, "default always applies");
        c.local_interface = "eth.*".into();
        assert_eq!(unmatched_interface(&c, &links, "n1"), None);
        c.local_interface = "enp3s0".into();
        let message = unmatched_interface(&c, &links, "n1").unwrap();
        assert!(message.contains("\"enp3s0\" matches no interface on node n1 (it has: eth0, kube-lb0)"), "{message}");
        c.local_interface = "lo".into();
        assert!(unmatched_interface(&c, &links, "n1").is_some(), "loopback is never an announce interface");
    }
}
