//! The lab's names and addresses, decided once from a prefix and a node count (pure, no IO).
//!
//! Every lab lives in network namespaces named after its prefix: `<P>-net` (the router,
//! holding the bridge `lab0`), `<P>-client` (the client host) and `<P>-n1` .. `<P>-nN` (the
//! nodes, whose Node objects are named `n1` .. `nN`). Addresses come only from
//! 192.0.2.0/24 and 2001:db8::/64. Entry point: [`Topology::new`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::LabError;

/// Most nodes one lab can have (node addresses are 192.0.2.11 .. 192.0.2.90).
pub const MAX_NODES: usize = 80;
/// The IPv4 subnet every host of the lab is on.
pub const SUBNET_V4: &str = "192.0.2.0/24";
/// The IPv6 subnet every host of the lab is on (dual-stack labs).
pub const SUBNET_V6: &str = "2001:db8::/64";
/// Name of the bridge in the router namespace.
pub const BRIDGE: &str = "lab0";
/// Name of each host's link to the bridge.
pub const HOST_LINK: &str = "eth0";
/// The dummy-interface stand-in pre-created on every node (this kernel has no `dummy` links).
pub const DUMMY_LINK: &str = "kube-lb0";
/// Port of the API emulator inside the lab (on the router's address).
pub const API_PORT: u16 = 6443;
/// Port of the metrics/health server of `purelb` processes (inside their namespace).
pub const METRICS_PORT: u16 = 7472;
/// The Kubernetes namespace PureLB is installed in.
pub const INSTALL_NAMESPACE: &str = "purelb-system";
/// Longest accepted prefix.
pub const MAX_PREFIX_LEN: usize = 24;

/// What a host is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The router: bridge, forwarding, the API emulator's lab address, the allocator.
    Router,
    /// The client host that fetches pages through Service addresses.
    Client,
    /// A Kubernetes node running `purelb agent`.
    Node,
}

/// One network namespace of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Short name: `router`, `client`, or the Node name `n1` .. `nN`.
    pub name: String,
    /// Network namespace name (`<P>-net`, `<P>-client`, `<P>-n1` ..).
    pub netns: String,
    /// What the host is for.
    pub role: Role,
    /// IPv4 address (prefix length 24).
    pub ipv4: Ipv4Addr,
    /// IPv6 address (prefix length 64), in dual-stack labs.
    pub ipv6: Option<Ipv6Addr>,
    /// Name of the veth end on the bridge (in the router namespace); empty for the router.
    pub bridge_port: String,
}

/// The whole lab: router, client and nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Prefix of every namespace name.
    pub prefix: String,
    /// Whether hosts get IPv6 addresses and routes too.
    pub dual_stack: bool,
    /// The router (`<P>-net`).
    pub router: Host,
    /// The client host (`<P>-client`).
    pub client: Host,
    /// The nodes, `n1` first.
    pub nodes: Vec<Host>,
}

/// Checks that `prefix` can name namespaces: 1 to 24 characters of `a-z`, `0-9` and `-`,
/// starting with a letter and not ending with `-`.
///
/// # Errors
///
/// [`LabError::InvalidOption`] saying what is wrong.
pub fn validate_prefix(prefix: &str) -> Result<(), LabError> {
    let bad = |why: &str| Err(LabError::InvalidOption(format!("prefix {prefix:?} {why}")));
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
        return bad(&format!("must have 1 to {MAX_PREFIX_LEN} characters"));
    }
    if !prefix.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("must start with a lower-case letter");
    }
    if prefix.ends_with('-') {
        return bad("must not end with '-'");
    }
    if !prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return bad("may only contain a-z, 0-9 and '-'");
    }
    Ok(())
}

/// Whether `netns` is a namespace name a lab with `prefix` creates.
#[must_use]
pub fn is_lab_netns(prefix: &str, netns: &str) -> bool {
    let Some(rest) = netns.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    rest == "net"
        || rest == "client"
        || rest.strip_prefix('n').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The router's addresses (the nodes' default gateway).
#[must_use]
pub fn router_ipv4() -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 1)
}

/// The router's IPv6 address.
#[must_use]
pub fn router_ipv6() -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)
}

/// Where processes inside the lab reach the API emulator.
#[must_use]
pub fn api_addr_in_lab() -> SocketAddr {
    SocketAddr::from((router_ipv4(), API_PORT))
}

/// An IPv6 address whose last group reads like `n` written in decimal (`2001:db8::11` for 11).
fn decimal_looking_v6(n: usize) -> Ipv6Addr {
    let group = u16::from_str_radix(&n.to_string(), 16).unwrap_or(0);
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, group)
}

impl Topology {
    /// The lab for `prefix` with `nodes` nodes.
    ///
    /// # Errors
    ///
    /// [`LabError::InvalidOption`] for a bad prefix or a node count outside 1..=80.
    pub fn new(prefix: &str, nodes: usize, dual_stack: bool) -> Result<Self, LabError> {
        validate_prefix(prefix)?;
        if nodes == 0 || nodes > MAX_NODES {
            return Err(LabError::InvalidOption(format!("a lab has 1 to {MAX_NODES} nodes, not {nodes}")));
        }
        let v6 = |n: usize| dual_stack.then(|| decimal_looking_v6(n));
        let router = Host {
            name: "router".to_owned(),
            netns: format!("{prefix}-net"),
            role: Role::Router,
            ipv4: router_ipv4(),
            ipv6: dual_stack.then(router_ipv6),
            bridge_port: String::new(),
        };
        let client = Host {
            name: "client".to_owned(),
            netns: format!("{prefix}-client"),
            role: Role::Client,
            ipv4: Ipv4Addr::new(192, 0, 2, 100),
            ipv6: v6(100),
            bridge_port: "veth-client".to_owned(),
        };
        let nodes = (1..=nodes)
            .map(|i| {
                let octet = u8::try_from(10 + i).unwrap_or(u8::MAX);
                Host {
                    name: format!("n{i}"),
                    netns: format!("{prefix}-n{i}"),
                    role: Role::Node,
                    ipv4: Ipv4Addr::new(192, 0, 2, octet),
                    ipv6: v6(10 + i),
                    bridge_port: format!("veth-n{i}"),
                }
            })
            .collect();
        Ok(Self { prefix: prefix.to_owned(), dual_stack, router, client, nodes })
    }

    /// Every host: router, client, then the nodes.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        [&self.router, &self.client].into_iter().chain(&self.nodes)
    }

    /// The host named `name` (`router`, `net`, `client`, `n1` ..) or with that namespace name.
    #[must_use]
    pub fn host(&self, name: &str) -> Option<&Host> {
        if name == "net" {
            return Some(&self.router);
        }
        self.hosts().find(|h| h.name == name || h.netns == name)
    }

    /// The node named `name`.
    #[must_use]
    pub fn node(&self, name: &str) -> Option<&Host> {
        self.nodes.iter().find(|h| h.name == name || h.netns == name)
    }

    /// Every namespace name of this lab.
    #[must_use]
    pub fn netns_names(&self) -> Vec<String> {
        self.hosts().map(|h| h.netns.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        let t = Topology::new("plab", 3, true).unwrap();
        assert_eq!(t.netns_names(), ["plab-net", "plab-client", "plab-n1", "plab-n2", "plab-n3"]);
        assert_eq!(t.nodes[0].ipv4.to_string(), "192.0.2.11");
        assert_eq!(t.nodes[2].ipv6.unwrap().to_string(), "2001:db8::13");
        assert_eq!(t.client.ipv6.unwrap().to_string(), "2001:db8::100");
        assert_eq!(t.host("net").unwrap().netns, "plab-net");
        assert_eq!(t.host("plab-n2").unwrap().name, "n2");
        assert!(Topology::new("plab", 2, false).unwrap().nodes[1].ipv6.is_none());
        assert_eq!(Topology::new("plab", 80, false).unwrap().nodes[79].ipv4.to_string(), "192.0.2.90");
    }

    #[test]
    fn bad_options_are_refused() {
        for prefix in ["", "Lab", "1lab", "lab-", "la b", "lab.x", "a-very-long-prefix-name-xyz"] {
            assert!(Topology::new(prefix, 1, false).is_err(), "{prefix:?}");
        }
        assert!(Topology::new("lab", 0, false).is_err());
        assert!(Topology::new("lab", 81, false).is_err());
    }

    #[test]
    fn lab_namespaces_are_recognised_exactly() {
        for name in ["plab-net", "plab-client", "plab-n1", "plab-n42"] {
            assert!(is_lab_netns("plab", name), "{name}");
        }
        for name in ["plab2-net", "plab-n", "plab-nx", "plab-net2", "other-n1", "plab", "plab-n1-x"] {
            assert!(!is_lab_netns("plab", name), "{name}");
        }
    }
}
