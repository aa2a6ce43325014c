//! Names of the external contract (`shared/design/api.md` §2–§6) in one place: annotations,
//! Lease protocol, field managers, Event reasons. Dashboards, alerts and the Go PureLB agents
//! (for side-by-side migration) depend on these exact strings.

/// Default `spec.loadBalancerClass` handled by PureLB.
pub const DEFAULT_LB_CLASS: &str = "purelb.io/purelbv2";
/// Default install namespace.
pub const DEFAULT_NAMESPACE: &str = "purelb-system";
/// Default dummy interface for `remote` addresses.
pub const DEFAULT_DUMMY_INTERFACE: &str = "kube-lb0";

/// User annotation: the ServiceGroup to allocate from.
pub const ANNOTATION_SERVICE_GROUP: &str = "purelb.io/service-group";
/// User annotation: comma-separated addresses to pin, one per family.
pub const ANNOTATION_ADDRESSES: &str = "purelb.io/addresses";
/// User annotation: sharing key; Services with the same key may share an address.
pub const ANNOTATION_ALLOW_SHARED_IP: &str = "purelb.io/allow-shared-ip";
/// Written by the allocator: always `PureLB`.
pub const ANNOTATION_ALLOCATED_BY: &str = "purelb.io/allocated-by";
/// Value of [`ANNOTATION_ALLOCATED_BY`].
pub const ALLOCATED_BY_VALUE: &str = "PureLB";
/// Written by the allocator: the group the addresses came from.
pub const ANNOTATION_ALLOCATED_FROM: &str = "purelb.io/allocated-from";
/// Written by the allocator: `local` or `remote`.
pub const ANNOTATION_POOL_TYPE: &str = "purelb.io/pool-type";
/// Written by the allocator: `node,interface` holding the IPv4 address.
pub const ANNOTATION_ANNOUNCING_IPV4: &str = "purelb.io/announcing-IPv4";
/// Written by the allocator: `node,interface` holding the IPv6 address.
pub const ANNOTATION_ANNOUNCING_IPV6: &str = "purelb.io/announcing-IPv6";

/// Prefix of every node agent's Lease name: `purelb-node-<node>`.
pub const NODE_LEASE_PREFIX: &str = "purelb-node-";
/// Name of the allocator's leader-election Lease.
pub const ALLOCATOR_LEASE_NAME: &str = "purelb-allocator";
/// Lease annotation: comma-separated CIDRs of the node's announce interfaces.
pub const LEASE_ANNOTATION_SUBNETS: &str = "purelb.io/subnets";
/// Lease annotation: UID of the agent pod that owns the Lease.
pub const LEASE_ANNOTATION_INSTANCE: &str = "purelb.io/instance";
/// Lease annotation: addresses this node currently holds, with interface.
pub const LEASE_ANNOTATION_ANNOUNCING: &str = "purelb.io/announcing";
/// Lease annotation: `"true"` while the node hands its addresses over before exiting.
pub const LEASE_ANNOTATION_DRAINING: &str = "purelb.io/draining";
/// Node Lease annotation: this node's BGP sessions, `<BGPPeer name>=<state>` comma-separated
/// (absent while BGP is off).
pub const LEASE_ANNOTATION_BGP: &str = "purelb.io/bgp";
/// Label `app.kubernetes.io/name` on PureLB objects.
pub const LABEL_APP_NAME: (&str, &str) = ("app.kubernetes.io/name", "purelb");
/// Label `app.kubernetes.io/component` on node Leases.
pub const LABEL_COMPONENT_AGENT: (&str, &str) = ("app.kubernetes.io/component", "agent");

/// The name of the Lease of node `node`.
#[must_use]
pub fn node_lease_name(node: &str) -> String {
    format!("{NODE_LEASE_PREFIX}{node}")
}

/// Field manager and Event reporter of the allocator.
pub const MANAGER_ALLOCATOR: &str = "purelb-allocator";
/// Field manager and Event reporter of the node agent.
pub const MANAGER_AGENT: &str = "purelb-agent";

/// Event reasons (`api.md` §6). Events are published on transitions only.
pub mod reasons {
    /// Allocator: an address was given to a Service.
    pub const ADDRESS_ASSIGNED: &str = "AddressAssigned";
    /// Allocator: an address went back to its pool.
    pub const ADDRESS_RELEASED: &str = "AddressReleased";
    /// Allocator (Warning): no address could be given; the message says why and what to change.
    pub const ALLOCATION_FAILED: &str = "AllocationFailed";
    /// Allocator (Warning): a configuration problem that does not stop allocation.
    pub const CONFIGURATION_WARNING: &str = "ConfigurationWarning";
    /// Allocator (Warning): use of a deprecated field such as `spec.loadBalancerIP`.
    pub const DEPRECATION_WARNING: &str = "DeprecationWarning";
    /// Allocator (Warning) on ServiceGroups: the group is invalid.
    pub const INVALID: &str = "Invalid";
    /// Warning on a ServiceGroup: some addresses of its ranges are never handed out.
    pub const ADDRESSES_SKIPPED: &str = "AddressesSkipped";
    /// Agent: this node announces a local address.
    pub const ANNOUNCING_LOCAL: &str = "AnnouncingLocal";
    /// Agent: this node announces a remote address.
    pub const ANNOUNCING_REMOTE: &str = "AnnouncingRemote";
    /// Agent: this node stopped announcing an address.
    pub const WITHDRAWN: &str = "Withdrawn";
    /// Agent (Warning): an address could not be announced.
    pub const ANNOUNCEMENT_FAILED: &str = "AnnouncementFailed";
    /// Agent (Warning) on LBNodeAgents: invalid configuration.
    pub const CONFIG_ERROR: &str = "ConfigError";
    /// Node: a BGP session came up.
    pub const BGP_SESSION_UP: &str = "BGPSessionUp";
    /// Node (Warning): a BGP session went down, or did not come up.
    pub const BGP_SESSION_DOWN: &str = "BGPSessionDown";
}
