//! `ServiceGroup` (`servicegroups.purelb.io/v2`): where Service addresses come from.
//!
//! The types here are the schema: `purelb crds` prints what they generate. Rules the API
//! server can check (exactly one pool kind, flags that need `namespaces`, string shapes) are
//! CEL rules and patterns; rules that need address arithmetic (families, overlaps, subnets)
//! are checked by [`crate::core::ipam::parse_group`] and reported on the group's status.

// kube-derive takes one `printcolumn(...)` per column; clippy reads the repeated `type_` keys as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Pattern for `aggregation`: `default` or a prefix length `/0`..`/128`.
pub const AGGREGATION_PATTERN: &str = r"^(default|/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$";
/// Loose shape of a `pool` value (CIDR or `from-to`); the controller checks the rest.
pub const POOL_PATTERN: &str = r"^\s*[0-9A-Fa-f:.]+(/[0-9]{1,3}|\s*-\s*[0-9A-Fa-f:.]+)\s*$";
/// Loose shape of a `subnet` value (CIDR); the controller checks the rest.
pub const SUBNET_PATTERN: &str = r"^\s*[0-9A-Fa-f:.]+/[0-9]{1,3}\s*$";
/// A DNS-1123 label (namespace names).
pub const DNS1123_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Where a group's addresses come from and which namespaces it serves.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "purelb.io",
    version = "v2",
    kind = "ServiceGroup",
    plural = "servicegroups",
    singular = "servicegroup",
    shortname = "sg",
    shortname = "sgs",
    namespaced,
    status = "ServiceGroupStatus",
    derive = "PartialEq",
    doc = "A source of LoadBalancer Service addresses: a local pool (announced by one elected node with ARP/NDP), a remote pool (routed, announced from every node's dummy interface) or a Netbox IPAM.",
    printcolumn(name = "Type", type_ = "string", json_path = ".status.poolType"),
    printcolumn(name = "Allocated-V4", type_ = "integer", json_path = ".status.allocatedIPv4"),
    printcolumn(name = "Allocated-V6", type_ = "integer", json_path = ".status.allocatedIPv6"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.local) ? 1 : 0) + (has(self.remote) ? 1 : 0) + (has(self.netbox) ? 1 : 0) == 1")
        .message("exactly one of spec.local, spec.remote or spec.netbox must be set"),
    validation = Rule::new("!has(self.enforceNamespaces) || !self.enforceNamespaces || (has(self.namespaces) && size(self.namespaces) > 0)")
        .message("spec.enforceNamespaces requires a non-empty spec.namespaces"),
    validation = Rule::new("!has(self.namespaceDefault) || !self.namespaceDefault || (has(self.namespaces) && size(self.namespaces) > 0)")
        .message("spec.namespaceDefault requires a non-empty spec.namespaces"),
    validation = Rule::new("!has(self.remote) || !has(self.remote.skipIPv6DAD) || !self.remote.skipIPv6DAD")
        .message("spec.remote.skipIPv6DAD is not supported: DAD is skipped only for local pools"),
    validation = Rule::new("!has(self.local) || !has(self.local.bgp)")
        .message("spec.local.bgp is not supported: local addresses are announced with ARP/NDP; use a remote group for BGP")
)]
pub struct ServiceGroupSpec {
    /// Addresses on a node's own LAN: one elected node per address adds it to the interface
    /// on that subnet and the kernel answers ARP/NDP for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<PoolSpec>,
    /// Routed addresses: every eligible node adds the address to the dummy interface
    /// (`kube-lb0`) so that routing software can advertise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<PoolSpec>,
    /// Addresses reserved for PureLB in a Netbox IPAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netbox: Option<NetboxSpec>,
    /// Namespaces this group serves by default (DNS-1123 labels). Empty: all namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), inner(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63)))]
    pub namespaces: Option<Vec<String>>,
    /// Makes `namespaces` a boundary both ways: Services in these namespaces may only use
    /// groups that list them, and this group serves no other namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce_namespaces: Option<bool>,
    /// Tie-breaker when several groups list the same namespace: this one is the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_default: Option<bool>,
}

/// Address ranges of one pool kind, per family.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// IPv4 ranges, tried in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub v4pools: Option<Vec<AddressPool>>,
    /// IPv6 ranges, tried in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub v6pools: Option<Vec<AddressPool>>,
    /// A single IPv4 range, tried after `v4pools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4pool: Option<AddressPool>,
    /// A single IPv6 range, tried after `v6pools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6pool: Option<AddressPool>,
    /// New allocations take the range with the fewest addresses in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_pools: Option<bool>,
    /// Local pools only: add IPv6 addresses without duplicate address detection (IFA_F_NODAD).
    #[serde(default, rename = "skipIPv6DAD", skip_serializing_if = "Option::is_none")]
    pub skip_ipv6_dad: Option<bool>,
    /// Remote pools only: BGP attributes of the group's routes (communities, local preference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<crate::api::bgppeer::BgpAdvertisement>,
}

/// One range of addresses inside a subnet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AddressPool {
    /// A CIDR such as `192.0.2.240/28` (the written address up to the end of the prefix) or a
    /// range `from-to`, both ends inclusive.
    #[schemars(regex(pattern = POOL_PATTERN), length(max = 100))]
    pub pool: String,
    /// The CIDR of the network the pool lives in; it must contain the whole pool.
    #[schemars(regex(pattern = SUBNET_PATTERN), length(max = 60))]
    pub subnet: String,
    /// `default` or `/N`: the prefix length used on the dummy interface for remote pools
    /// (`default` = the subnet's prefix length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = AGGREGATION_PATTERN))]
    pub aggregation: Option<String>,
}

/// A Netbox IPAM as the source of addresses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NetboxSpec {
    /// Base URL of the Netbox server, e.g. `https://netbox.example.com`.
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub url: String,
    /// Netbox tenant whose `reserved` addresses PureLB may use.
    #[schemars(length(min = 1, max = 100))]
    pub tenant: String,
    /// `default` or `/N`: the prefix length used on the dummy interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = AGGREGATION_PATTERN))]
    pub aggregation: Option<String>,
    /// Secret in the install namespace holding the Netbox API token (read by the allocator only).
    pub token_secret_ref: SecretKeyRef,
    /// BGP attributes of the group's routes (communities, local preference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<crate::api::bgppeer::BgpAdvertisement>,
}

/// A key in a Secret of the install namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"), length(max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[serde(default = "default_token_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".to_owned()
}

/// What the allocator observed about a group; written by the allocator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceGroupStatus {
    /// `Ready`: True, or False with reason `Invalid` and a message naming the field and value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `local`, `remote` or `netbox`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_type: Option<String>,
    /// IPv4 addresses of this group held by Services.
    #[serde(default, rename = "allocatedIPv4", skip_serializing_if = "Option::is_none")]
    pub allocated_ipv4: Option<u64>,
    /// IPv6 addresses of this group held by Services.
    #[serde(default, rename = "allocatedIPv6", skip_serializing_if = "Option::is_none")]
    pub allocated_ipv6: Option<u64>,
    /// Free IPv4 addresses, as an exact decimal string.
    #[serde(default, rename = "availableIPv4", skip_serializing_if = "Option::is_none")]
    pub available_ipv4: Option<String>,
    /// Free IPv6 addresses, as an exact decimal string (a /64 alone has 2^64).
    #[serde(default, rename = "availableIPv6", skip_serializing_if = "Option::is_none")]
    pub available_ipv6: Option<String>,
    /// Addresses still held by Services of this group that no longer lie in any of its ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses_outside_pools: Option<u64>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl ServiceGroupSpec {
    /// The pool kind this group uses, if exactly one is set.
    #[must_use]
    pub fn pool_type(&self) -> Option<PoolType> {
        match (&self.local, &self.remote, &self.netbox) {
            (Some(_), None, None) => Some(PoolType::Local),
            (None, Some(_), None) => Some(PoolType::Remote),
            (None, None, Some(_)) => Some(PoolType::Netbox),
            _ => None,
        }
    }
}

/// The three kinds of group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolType {
    /// Announced by one elected node on its LAN interface.
    Local,
    /// Announced from every eligible node's dummy interface.
    Remote,
    /// Taken from Netbox; announced like a remote pool.
    Netbox,
}

impl PoolType {
    /// The name used in `status.poolType` and the `purelb.io/pool-type` annotation.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
            Self::Netbox => "netbox",
        }
    }
}

impl std::fmt::Display for PoolType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
