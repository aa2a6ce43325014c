//! `BGPPeer` (`bgppeers.purelb.io/v2`): a BGP session the node agents' BIRD opens to a router,
//! and the ServiceGroup settings that shape what is advertised over it (`api.md` §7).
//!
//! The schema checks shapes (patterns, ranges, CEL); what needs parsing (addresses, durations,
//! the hold/keepalive relation) is checked by [`crate::bgp::peer::PeerConfig::from_spec`] and
//! reported on the BGPPeer's status (allocator) and as `ConfigError` Events (agent).

// kube-derive takes one `printcolumn(...)` per column; clippy reads the repeated `type_` keys as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::duration::DURATION_PATTERN;

/// Loose shape of an IPv4 or IPv6 address; the controller parses it.
pub const IP_PATTERN: &str = r"^[0-9A-Fa-f:.]{2,45}$";
/// A BGP community: `a:b` (each 0..65535) or a well-known name.
pub const COMMUNITY_PATTERN: &str = r"^([0-9]{1,5}:[0-9]{1,5}|no-export|no-advertise|no-export-subconfed)$";
/// A large BGP community `a:b:c` (each 0..4294967295).
pub const LARGE_COMMUNITY_PATTERN: &str = r"^[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10}$";

/// A BGP session from the selected nodes to one router.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "purelb.io",
    version = "v2",
    kind = "BGPPeer",
    plural = "bgppeers",
    singular = "bgppeer",
    shortname = "bgpp",
    namespaced,
    status = "BGPPeerStatus",
    derive = "PartialEq",
    doc = "A BGP neighbour of the PureLB node agents: every selected node's BIRD opens a session to peerAddress and advertises the remote (and netbox) Service addresses that node holds.",
    printcolumn(name = "Peer", type_ = "string", json_path = ".spec.peerAddress"),
    printcolumn(name = "Peer-ASN", type_ = "integer", json_path = ".spec.peerASN"),
    printcolumn(name = "Local-ASN", type_ = "integer", json_path = ".spec.localASN"),
    printcolumn(name = "BFD", type_ = "boolean", json_path = ".spec.bfd.enabled"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.keepaliveTime) || has(self.holdTime)")
        .message("spec.keepaliveTime needs spec.holdTime (the keepalive must be shorter than the hold time)")
)]
pub struct BGPPeerSpec {
    /// The router's address (IPv4 or IPv6). Routes of this address's family go over the session.
    #[schemars(regex(pattern = IP_PATTERN))]
    pub peer_address: String,
    /// The router's autonomous system number (1..4294967295).
    #[serde(rename = "peerASN")]
    #[schemars(range(min = 1))]
    pub peer_asn: u32,
    /// The nodes' autonomous system number (1..4294967295); equal to `peerASN` means iBGP.
    #[serde(rename = "localASN")]
    #[schemars(range(min = 1))]
    pub local_asn: u32,
    /// Nodes that open this session. Absent: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// The node's source address for the session. Absent: chosen by the kernel's route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = IP_PATTERN))]
    pub source_address: Option<String>,
    /// The router's TCP port (default 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    /// BGP hold time, e.g. `90s`: `0s` (no keepalives) or 3s..65535s. Default 90s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub hold_time: Option<String>,
    /// Keepalive interval; default a third of the hold time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub keepalive_time: Option<String>,
    /// eBGP multihop (the router is not on a directly connected network). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebgp_multihop: Option<bool>,
    /// BGP graceful restart (RFC 4724). Default false: a router helping a crashed node would
    /// otherwise keep its routes for the restart time and defeat BFD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_restart: Option<bool>,
    /// Bidirectional Forwarding Detection for fast failure detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdSpec>,
    /// A key of the Secret the chart mounts into the BIRD container (`bgp.passwordSecret`): the
    /// TCP-MD5 password. The agent never reads Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub password_secret_key: Option<String>,
}

/// BFD settings of a session.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BfdSpec {
    /// Run BFD with the router (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Transmit and receive interval, e.g. `300ms` (10ms..60s). Default 300ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub min_interval: Option<String>,
    /// Missed packets before the session is down (1..255). Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub multiplier: Option<u32>,
}

/// What the allocator observed about a BGPPeer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerStatus {
    /// `Ready`: True, or False with reason `Invalid` and a message naming the field and value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// ServiceGroup `spec.remote.bgp` / `spec.netbox.bgp`: attributes of the group's routes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BgpAdvertisement {
    /// Communities added to the group's routes: `a:b`, `no-export`, `no-advertise`,
    /// `no-export-subconfed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = COMMUNITY_PATTERN)))]
    pub communities: Vec<String>,
    /// Large communities `a:b:c` added to the group's routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = LARGE_COMMUNITY_PATTERN)))]
    pub large_communities: Vec<String>,
    /// LOCAL_PREF of the group's routes (iBGP sessions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
}
