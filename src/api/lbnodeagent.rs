//! `LBNodeAgent` (`lbnodeagents.purelb.io/v2`): how the node agents put addresses on the network.
//!
//! One LBNodeAgent governs each node: the one whose `nodeSelector` matches it, a specific
//! selector beating a catch-all, ties broken by namespace/name. Every field has a default, so
//! an LBNodeAgent with an empty spec is a complete configuration.

// kube-derive takes one `printcolumn(...)` per column; clippy reads the repeated `type_` keys as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::duration::DURATION_PATTERN;

/// Node agent configuration for the nodes its selector matches.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "purelb.io",
    version = "v2",
    kind = "LBNodeAgent",
    plural = "lbnodeagents",
    singular = "lbnodeagent",
    shortname = "lbna",
    shortname = "lbnas",
    namespaced,
    derive = "PartialEq",
    doc = "Configuration of the PureLB node agents on the nodes selected by nodeSelector: interfaces, gratuitous ARP/NDP, address lifetimes.",
    printcolumn(name = "Interface", type_ = "string", json_path = ".spec.local.localInterface"),
    printcolumn(name = "Dummy", type_ = "string", json_path = ".spec.local.dummyInterface"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct LBNodeAgentSpec {
    /// Nodes this configuration applies to. Absent: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Interface, announcement and address settings.
    #[serde(default)]
    pub local: LocalAgentSpec,
}

/// Interface, announcement and address settings of the agents.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocalAgentSpec {
    /// `default` = the interface holding the lowest-metric default route of the address's
    /// family; otherwise an anchored regular expression over interface names.
    #[serde(default = "default_local_interface")]
    #[schemars(length(min = 1, max = 256))]
    pub local_interface: String,
    /// Interface for `remote` addresses; created as a dummy link when absent, used as it is
    /// (of any kind) when present.
    #[serde(default = "default_dummy_interface")]
    #[schemars(regex(pattern = r"^[^\s/:]{1,15}$"))]
    pub dummy_interface: String,
    /// Extra interfaces (exact names), tried in order after the primary choice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = r"^[^\s/:]{1,15}$")))]
    pub interfaces: Vec<String>,
    /// Gratuitous ARP / unsolicited neighbour advertisements on takeover.
    #[serde(default)]
    pub garp: GarpSpec,
    /// Options for the addresses the agent adds.
    #[serde(default)]
    pub address_config: AddressConfig,
}

/// Gratuitous ARP (IPv4) and unsolicited NA (IPv6) bursts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GarpSpec {
    /// Send a burst on every takeover.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Packets per burst (1..10).
    #[serde(default = "default_garp_count")]
    #[schemars(range(min = 1, max = 10))]
    pub count: u32,
    /// Time between packets of a burst, e.g. `500ms`.
    #[serde(default = "default_garp_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: String,
    /// Wait before the first packet, e.g. `0s`.
    #[serde(default = "default_zero_duration")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub initial_delay: String,
    /// Re-announce periodically while the node holds the address (`0s` = off).
    #[serde(default = "default_zero_duration")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub refresh_interval: String,
}

/// Address options per interface kind. Each kind has its own type, so that every field keeps
/// its own default when an object sets only some of them (a `localInterface` that sets only
/// the lifetimes still gets `noPrefixRoute: true`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AddressConfig {
    /// Options for `local` addresses on a LAN interface.
    #[serde(default)]
    pub local_interface: LocalAddressOptions,
    /// Options for `remote` addresses on the dummy interface.
    #[serde(default)]
    pub dummy_interface: DummyAddressOptions,
}

/// Lifetimes (seconds, 0 = permanent) and flags of an added address, as the agent uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressOptions {
    /// Valid lifetime in seconds; 0 = permanent.
    pub valid_lifetime: u32,
    /// Preferred lifetime in seconds.
    pub preferred_lifetime: u32,
    /// Add the address without a prefix route (IFA_F_NOPREFIXROUTE).
    pub no_prefix_route: bool,
}

/// Options of `local` addresses on a LAN interface: 300 s lifetimes, no prefix route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocalAddressOptions {
    /// Valid lifetime in seconds; 0 = permanent. A finite lifetime is renewed before expiry.
    #[serde(default = "default_lifetime")]
    #[schemars(range(max = 4_294_967_294_u32))]
    pub valid_lifetime: u32,
    /// Preferred lifetime in seconds; 0 = deprecated at once for IPv6 (never used as a source).
    #[serde(default = "default_lifetime")]
    #[schemars(range(max = 4_294_967_294_u32))]
    pub preferred_lifetime: u32,
    /// Add the address without a prefix route (IFA_F_NOPREFIXROUTE).
    #[serde(default = "default_true")]
    pub no_prefix_route: bool,
}

/// Options of `remote` addresses on the dummy interface: permanent, with a prefix route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DummyAddressOptions {
    /// Valid lifetime in seconds; 0 = permanent. A finite lifetime is renewed before expiry.
    #[serde(default)]
    #[schemars(range(max = 4_294_967_294_u32))]
    pub valid_lifetime: u32,
    /// Preferred lifetime in seconds; 0 = deprecated at once for IPv6 (never used as a source).
    #[serde(default)]
    #[schemars(range(max = 4_294_967_294_u32))]
    pub preferred_lifetime: u32,
    /// Add the address without a prefix route (IFA_F_NOPREFIXROUTE).
    #[serde(default)]
    pub no_prefix_route: bool,
}

impl Default for LocalAddressOptions {
    fn default() -> Self {
        Self { valid_lifetime: default_lifetime(), preferred_lifetime: default_lifetime(), no_prefix_route: true }
    }
}

impl From<LocalAddressOptions> for AddressOptions {
    fn from(o: LocalAddressOptions) -> Self {
        Self {
            valid_lifetime: o.valid_lifetime,
            preferred_lifetime: o.preferred_lifetime,
            no_prefix_route: o.no_prefix_route,
        }
    }
}

impl From<DummyAddressOptions> for AddressOptions {
    fn from(o: DummyAddressOptions) -> Self {
        Self {
            valid_lifetime: o.valid_lifetime,
            preferred_lifetime: o.preferred_lifetime,
            no_prefix_route: o.no_prefix_route,
        }
    }
}

impl AddressOptions {
    /// Defaults for LAN interfaces: 300 s lifetimes, no prefix route.
    #[must_use]
    pub fn local_default() -> Self {
        LocalAddressOptions::default().into()
    }

    /// Defaults for the dummy interface: permanent, with a prefix route.
    #[must_use]
    pub fn dummy_default() -> Self {
        DummyAddressOptions::default().into()
    }
}

fn default_lifetime() -> u32 {
    300
}

impl Default for GarpSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            count: default_garp_count(),
            interval: default_garp_interval(),
            initial_delay: default_zero_duration(),
            refresh_interval: default_zero_duration(),
        }
    }
}

impl Default for LocalAgentSpec {
    fn default() -> Self {
        Self {
            local_interface: default_local_interface(),
            dummy_interface: default_dummy_interface(),
            interfaces: Vec::new(),
            garp: GarpSpec::default(),
            address_config: AddressConfig::default(),
        }
    }
}

fn default_local_interface() -> String {
    "default".to_owned()
}
fn default_dummy_interface() -> String {
    crate::api::contract::DEFAULT_DUMMY_INTERFACE.to_owned()
}
fn default_true() -> bool {
    true
}
fn default_garp_count() -> u32 {
    3
}
fn default_garp_interval() -> String {
    "500ms".to_owned()
}
fn default_zero_duration() -> String {
    "0s".to_owned()
}
