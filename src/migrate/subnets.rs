//! The `subnet` of a converted range. PureLB's pools name the subnet they lie in (local
//! addresses are announced by a node with an interface on it; IPv4 network and broadcast
//! addresses of a local subnet are never handed out). MetalLB's pools do not; Nodes carry
//! addresses, not prefix lengths. In order of trust: a `--subnet` given by the user; the /24
//! (IPv4) or /64 (IPv6) around a node's address, when it contains the range (a guess, reported);
//! the range's own CIDR, or the smallest prefix covering it.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use crate::core::ipam::{AddressRange, Family, Subnet};

/// The chosen subnet of one range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The subnet.
    pub subnet: Subnet,
    /// A node has an address in it (or the user said so with `--subnet`).
    pub on_nodes: bool,
    /// When the subnet is a guess: what it was guessed from (for the report).
    pub guessed: Option<String>,
}

/// Chooses subnets from the user's hints and the Nodes' addresses.
#[derive(Clone, Debug, Default)]
pub struct Chooser {
    hints: Vec<Subnet>,
    node_ips: Vec<(String, IpAddr)>,
}

/// The smallest prefix containing the whole range.
#[must_use]
pub fn covering(range: &AddressRange) -> Subnet {
    let family = range.family();
    let (first, last) = range.bounds();
    let differing = first ^ last;
    let host_bits = if differing == 0 { 0 } else { 128 - differing.leading_zeros() };
    let width = u32::from(family.bits());
    let prefix = width.saturating_sub(host_bits);
    Subnet::new(range.first(), u8::try_from(prefix).unwrap_or(0))
}

impl Chooser {
    /// From `--subnet` hints and the Nodes (their InternalIP and ExternalIP addresses).
    #[must_use]
    pub fn new(hints: &[Subnet], nodes: &[Node]) -> Self {
        let mut node_ips = Vec::new();
        for node in nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            for a in node.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten() {
                if (a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                    && let Ok(ip) = a.address.trim().parse::<IpAddr>()
                {
                    node_ips.push((name.clone(), ip));
                }
            }
        }
        Self { hints: hints.to_vec(), node_ips }
    }

    /// Whether any node address is known (offline conversions often have none).
    #[must_use]
    pub fn knows_nodes(&self) -> bool {
        !self.node_ips.is_empty() || !self.hints.is_empty()
    }

    /// The subnet for `range`; `cidr`: the range as written, when it was a CIDR.
    #[must_use]
    pub fn choose(&self, range: &AddressRange, cidr: Option<Subnet>) -> Choice {
        let fits = |s: &Subnet| s.contains(range.first()) && s.contains(range.last());
        if let Some(hint) = self.hints.iter().find(|s| fits(s)) {
            return Choice { subnet: *hint, on_nodes: true, guessed: None };
        }
        let own = cidr.unwrap_or_else(|| covering(range));
        let usual = match range.family() {
            Family::V4 => 24,
            Family::V6 => 64,
        };
        for (node, ip) in &self.node_ips {
            if Family::of(*ip) != range.family() {
                continue;
            }
            // A range wider than the usual LAN prefix: its own CIDR, when a node is in it.
            if own.prefix_len() < usual && own.contains(*ip) {
                return Choice {
                    subnet: own,
                    on_nodes: true,
                    guessed: Some(format!("node {node}'s address {ip} lies in it")),
                };
            }
            let lan = Subnet::new(*ip, usual);
            if fits(&lan) {
                return Choice {
                    subnet: lan,
                    on_nodes: true,
                    guessed: Some(format!(
                        "assumed /{usual} around node {node}'s address {ip}; pass --subnet with the real prefix if it differs"
                    )),
                };
            }
        }
        Choice { subnet: own, on_nodes: false, guessed: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> AddressRange {
        AddressRange::parse(text).unwrap()
    }

    #[test]
    fn covering_prefixes() {
        assert_eq!(covering(&range("192.0.2.10-192.0.2.20")).to_string(), "192.0.2.0/27");
        assert_eq!(covering(&range("192.0.2.5/32")).to_string(), "192.0.2.5/32");
        assert_eq!(covering(&range("192.0.2.0-192.0.3.255")).to_string(), "192.0.2.0/23");
        assert_eq!(covering(&range("2001:db8::f0-2001:db8::ff")).to_string(), "2001:db8::f0/124");
    }

    #[test]
    fn hints_then_node_addresses_then_the_range_itself() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}, {"type": "Hostname", "address": "n1"}]}
        }))
        .unwrap();
        let c = Chooser::new(&[], std::slice::from_ref(&node));
        let got = c.choose(&range("192.0.2.240-192.0.2.250"), None);
        assert_eq!((got.subnet.to_string(), got.on_nodes), ("192.0.2.0/24".to_owned(), true));
        assert!(got.guessed.unwrap().contains("node n1's address 192.0.2.11"));
        let off = c.choose(&range("198.51.100.10-198.51.100.20"), None);
        assert_eq!((off.subnet.to_string(), off.on_nodes), ("198.51.100.0/27".to_owned(), false));
        let hinted = Chooser::new(&[Subnet::parse("192.0.2.0/23").unwrap()], &[node]);
        let got = hinted.choose(&range("192.0.2.240-192.0.2.250"), None);
        assert_eq!((got.subnet.to_string(), got.guessed), ("192.0.2.0/23".to_owned(), None));
    }
}
