//! What BIRD should run on this node, from the API objects: the BGPPeers that select this node
//! (checked; an invalid one is left out and named), the remote and netbox ServiceGroups' ranges
//! at their aggregation length with their `bgp` attributes, this node's router ID. A pure
//! function ([`desired`]), used by the agent's pass and by `purelb explain`-style tools.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use super::{
    peer::{PeerConfig, RouteAttributes},
    render::{BirdConfig, ExportMode, GroupExport, PrefixPattern, router_id},
};
use crate::{
    agent::config::selector_matches,
    api::{BGPPeer, ServiceGroup},
    core::ipam::parse_pool_spec,
};

/// The desired configuration and the objects left out of it, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// BIRD's configuration.
    pub config: BirdConfig,
    /// BGPPeers left out: name → what is wrong.
    pub invalid_peers: BTreeMap<String, String>,
    /// ServiceGroups whose `bgp` settings are left out: name → what is wrong.
    pub invalid_groups: BTreeMap<String, String>,
}

/// This node's addresses from its status (InternalIP first).
fn node_addresses(node: Option<&Node>) -> Vec<IpAddr> {
    let mut list: Vec<(bool, IpAddr)> = node
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a.type_ != "InternalIP", a.address.trim().parse().ok()?)))
        .collect();
    list.sort_by_key(|(internal_last, _)| *internal_last);
    list.into_iter().map(|(_, ip)| ip).collect()
}

/// BIRD's configuration for `node` (this node's object, when the cache has it).
#[must_use]
pub fn desired(
    node_name: &str,
    node: Option<&Node>,
    peers: &[&BGPPeer],
    groups: &[&ServiceGroup],
    dummy_interface: &str,
    password_dir: PathBuf,
    password_exists: &dyn Fn(&std::path::Path) -> bool,
) -> Desired {
    let labels = node.map(|n| n.labels().clone()).unwrap_or_default();
    let mut invalid_peers = BTreeMap::new();
    let mut configs: Vec<PeerConfig> = Vec::new();
    let mut sorted: Vec<&BGPPeer> = peers.to_vec();
    sorted.sort_by_key(|p| p.name_any());
    let mut by_address: HashMap<(IpAddr, u16), String> = HashMap::new();
    for peer in sorted {
        let name = peer.name_any();
        if !peer.spec.node_selector.as_ref().is_none_or(|s| selector_matches(s, &labels)) {
            continue;
        }
        match PeerConfig::from_spec(&name, &peer.spec) {
            Ok(config)
                if config
                    .password_key
                    .as_ref()
                    .is_some_and(|key| !password_exists(&password_dir.join(format!("{key}.conf")))) =>
            {
                let key = config.password_key.unwrap_or_default();
                invalid_peers.insert(
                    name,
                    format!(
                        "spec.passwordSecretKey {key:?}: BIRD has no password snippet for it: the Secret of the chart's bgp.passwordSecret lacks that key, or its value contains a double quote or a line break (the BIRD container's log says which)"
                    ),
                );
            }
            Ok(config) => {
                if let Some(first) = by_address.get(&(config.peer_address, config.port)) {
                    invalid_peers.insert(
                        name,
                        format!(
                            "spec.peerAddress {} is also the address of BGPPeer {first}, which selects this node too: one session per router; delete one or make their nodeSelectors disjoint",
                            config.peer_address
                        ),
                    );
                    continue;
                }
                by_address.insert((config.peer_address, config.port), name);
                configs.push(config);
            }
            Err(message) => {
                invalid_peers.insert(name, message);
            }
        }
    }
    let mut invalid_groups = BTreeMap::new();
    let mut exports = Vec::new();
    let mut sorted_groups: Vec<&ServiceGroup> = groups.to_vec();
    sorted_groups.sort_by_key(|g| g.name_any());
    for g in sorted_groups {
        let name = g.name_any();
        let (ranges, bgp, field) = match (&g.spec.local, &g.spec.remote, &g.spec.netbox) {
            (None, Some(remote), None) => match parse_pool_spec("spec.remote", remote) {
                Ok(parsed) => (parsed.all().cloned().collect::<Vec<_>>(), remote.bgp.as_ref(), "spec.remote.bgp"),
                // The allocator reports an invalid group on its status.
                Err(_) => continue,
            },
            (None, None, Some(netbox)) => match crate::agent::decide::netbox_pools(netbox) {
                Some(parsed) => (parsed.all().cloned().collect(), netbox.bgp.as_ref(), "spec.netbox.bgp"),
                None => continue,
            },
            _ => continue,
        };
        let attributes = match bgp.map(|b| RouteAttributes::from_spec(field, b)).transpose() {
            Ok(a) => a.unwrap_or_default(),
            Err(message) => {
                // The routes are still advertised, without the attributes that are wrong.
                invalid_groups.insert(name.clone(), message);
                RouteAttributes::default()
            }
        };
        let mut prefixes: Vec<PrefixPattern> = ranges.iter().map(PrefixPattern::of).collect();
        prefixes.sort();
        prefixes.dedup();
        exports.push(GroupExport { group: name, prefixes, attributes });
    }
    Desired {
        config: BirdConfig {
            router_id: router_id(node_name, &node_addresses(node)),
            dummy_interface: dummy_interface.to_owned(),
            peers: configs,
            exports,
            mode: ExportMode::Advertise,
            password_dir,
        },
        invalid_peers,
        invalid_groups,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::core::v1::{NodeAddress, NodeStatus},
        apimachinery::pkg::apis::meta::v1::LabelSelector,
    };
    use kube::api::ObjectMeta;

    use super::*;
    use crate::api::{
        AddressPool, BGPPeerSpec, BgpAdvertisement, NetboxSpec, PoolSpec, SecretKeyRef, ServiceGroupSpec,
    };

    fn node(labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                ..ObjectMeta::default()
            },
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress { type_: "Hostname".into(), address: "n1".into() },
                    NodeAddress { type_: "ExternalIP".into(), address: "203.0.113.7".into() },
                    NodeAddress { type_: "InternalIP".into(), address: "198.51.100.11".into() },
                ]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    fn peer(name: &str, addr: &str, rack: Option<&str>) -> BGPPeer {
        let mut p = BGPPeer::new(
            name,
            BGPPeerSpec {
                peer_address: addr.into(),
                peer_asn: 64_512,
                local_asn: 64_513,
                node_selector: rack.map(|r| LabelSelector {
                    match_labels: Some(BTreeMap::from([("rack".to_owned(), r.to_owned())])),
                    ..LabelSelector::default()
                }),
                ..BGPPeerSpec::default()
            },
        );
        p.metadata.namespace = Some("purelb-system".into());
        p
    }

    fn group(name: &str, spec: ServiceGroupSpec) -> ServiceGroup {
        ServiceGroup::new(name, spec)
    }

    fn remote(pool: &str, subnet: &str, agg: Option<&str>, bgp: Option<BgpAdvertisement>) -> ServiceGroupSpec {
        ServiceGroupSpec {
            remote: Some(PoolSpec {
                v4pool: Some(AddressPool {
                    pool: pool.into(),
                    subnet: subnet.into(),
                    aggregation: agg.map(Into::into),
                }),
                bgp,
                ..PoolSpec::default()
            }),
            ..ServiceGroupSpec::default()
        }
    }

    #[test]
    fn peers_that_select_this_node_and_remote_groups_only() {
        let n = node(&[("rack", "a")]);
        let peers = [
            peer("tor-a", "198.51.100.1", Some("a")),
            peer("tor-b", "198.51.100.2", Some("b")),
            peer("bad", "not-an-ip", None),
            peer("tor-a-again", "198.51.100.1", None),
        ];
        let local = ServiceGroupSpec {
            local: Some(PoolSpec {
                v4pool: Some(AddressPool {
                    pool: "192.0.2.10/32".into(),
                    subnet: "192.0.2.0/24".into(),
                    aggregation: None,
                }),
                ..PoolSpec::default()
            }),
            ..ServiceGroupSpec::default()
        };
        let netbox = ServiceGroupSpec {
            netbox: Some(NetboxSpec {
                url: "https://nb".into(),
                tenant: "t".into(),
                aggregation: None,
                token_secret_ref: SecretKeyRef { name: "s".into(), key: "token".into() },
                bgp: None,
            }),
            ..ServiceGroupSpec::default()
        };
        let bad_bgp = BgpAdvertisement { communities: vec!["1:99999".into()], ..BgpAdvertisement::default() };
        let groups = [
            group("routed", remote("203.0.113.240/28", "203.0.113.0/24", Some("/32"), None)),
            group("lan", local),
            group("nb", netbox),
            group("tagged", remote("198.51.100.200/29", "198.51.100.0/24", None, Some(bad_bgp))),
            group("broken", remote("203.0.113.0/28", "198.51.100.0/24", None, None)),
        ];
        let d = desired(
            "n1",
            Some(&n),
            &peers.iter().collect::<Vec<_>>(),
            &groups.iter().collect::<Vec<_>>(),
            "kube-lb0",
            PathBuf::from("/p"),
            &|_| true,
        );
        assert_eq!(d.config.router_id.to_string(), "198.51.100.11");
        assert_eq!(d.config.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["tor-a"]);
        assert_eq!(d.invalid_peers.keys().collect::<Vec<_>>(), ["bad", "tor-a-again"]);
        assert!(d.invalid_peers["tor-a-again"].contains("BGPPeer tor-a"), "{:?}", d.invalid_peers);
        let names: Vec<&str> = d.config.exports.iter().map(|e| e.group.as_str()).collect();
        assert_eq!(names, ["nb", "routed", "tagged"]);
        assert!(d.invalid_groups["tagged"].contains("spec.remote.bgp.communities"), "{:?}", d.invalid_groups);
        let nb = &d.config.exports[0].prefixes;
        assert_eq!(nb.iter().map(|p| (p.len, p.lengths)).collect::<Vec<_>>(), [(0, (32, 32)), (0, (128, 128))]);
        // Without the Node object: only peers without a selector, a router ID from the name.
        let d = desired("n1", None, &peers.iter().collect::<Vec<_>>(), &[], "kube-lb0", PathBuf::from("/p"), &|_| true);
        assert_eq!(d.config.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["tor-a-again"]);
        assert!(d.config.exports.is_empty());
        assert_eq!(d.config.router_id.octets()[0] & 0xf0, 0xf0);
        // A password whose snippet the BIRD container did not write: that peer is left out.
        let mut secret = peer("md5", "198.51.100.9", None);
        secret.spec.password_secret_key = Some("tor".into());
        let d = desired("n1", None, &[&secret], &[], "kube-lb0", PathBuf::from("/p"), &|p| {
            p != std::path::Path::new("/p/tor.conf")
        });
        assert!(d.config.peers.is_empty());
        assert!(d.invalid_peers["md5"].contains("spec.passwordSecretKey \"tor\""), "{:?}", d.invalid_peers);
        let d = desired("n1", None, &[&secret], &[], "kube-lb0", PathBuf::from("/p"), &|_| true);
        assert_eq!(d.config.peers.len(), 1);
    }
}
