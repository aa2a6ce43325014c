//! Routed announcements in the lab (`purelb-lab up --bgp`): the router namespace runs FRR
//! (zebra, bgpd, bfdd; a different BGP implementation than the nodes', as in real data
//! centres) with one dynamic BGP session per node, ECMP over up to 16 paths and flow hashing
//! (`fib_multipath_hash_policy=1`); every node runs BIRD 2 next to its agent, started with a
//! bootstrap configuration that the agent replaces over BIRD's control socket. The client
//! reaches routed addresses only through the router (its default route).
//!
//! Routed Service addresses come from 203.0.113.0/24, which no host is on.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
};

use super::{LabError, topology::Topology};

/// The router's AS.
pub const ROUTER_ASN: u32 = 64_512;
/// The nodes' AS.
pub const NODE_ASN: u32 = 64_513;
/// The range routed Service addresses of the lab come from.
pub const ROUTED_SUBNET: &str = "203.0.113.0/24";
/// FRR's daemons, in start order.
pub const FRR_DAEMONS: [&str; 3] = ["zebra", "bfdd", "bgpd"];
/// Where Debian's `frr` package puts them.
pub const FRR_DIR: &str = "/usr/lib/frr";
/// The name of the BGPPeer `up --bgp` creates.
pub const PEER_NAME: &str = "router";

/// Name of the BIRD process of `node`.
#[must_use]
pub fn bird_name(node: &str) -> String {
    format!("bird-{node}")
}

/// Name of an FRR daemon's process.
#[must_use]
pub fn frr_name(daemon: &str) -> String {
    format!("frr-{daemon}")
}

/// The directory of `node`'s BIRD (configuration, control socket).
#[must_use]
pub fn bird_dir(lab_dir: &Path, node: &str) -> PathBuf {
    lab_dir.join(format!("bird-{node}"))
}

/// BIRD's control socket of `node`.
#[must_use]
pub fn bird_socket(lab_dir: &Path, node: &str) -> PathBuf {
    bird_dir(lab_dir, node).join("bird.ctl")
}

/// BIRD's configuration file of `node` (the agent's `--bird-config`).
#[must_use]
pub fn bird_config(lab_dir: &Path, node: &str) -> PathBuf {
    bird_dir(lab_dir, node).join("bird.conf")
}

/// The stand-in for the password Secret mounted into the BIRD containers (one file per key).
#[must_use]
pub fn bird_secrets(lab_dir: &Path) -> PathBuf {
    lab_dir.join("bird-secrets")
}

/// The key of the lab's TCP-MD5 password in that Secret.
pub const PASSWORD_KEY: &str = "router";
/// The lab's TCP-MD5 password (a backslash in it: BIRD's strings take it as it is).
pub const PASSWORD: &str = "s3cr\\et";

/// The BIRD image's entrypoint in this workspace.
#[must_use]
pub fn entrypoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bird-entrypoint.sh")
}

/// FRR's directory (configuration, vty sockets), owned by the `frr` user.
#[must_use]
pub fn frr_dir(lab_dir: &Path) -> PathBuf {
    lab_dir.join("frr")
}

/// Checks that BIRD 2 and FRR are installed.
///
/// # Errors
///
/// [`LabError::InvalidOption`] with the install hint.
pub fn check_tools() -> Result<(), LabError> {
    let bird = Command::new("bird").arg("--version").output();
    let bird_ok = bird.as_ref().is_ok_and(|o| String::from_utf8_lossy(&o.stderr).contains("BIRD version 2"));
    let frr_ok = FRR_DAEMONS.iter().all(|d| Path::new(FRR_DIR).join(d).is_file())
        && Command::new("vtysh").arg("--version").output().is_ok();
    if bird_ok && frr_ok {
        Ok(())
    } else {
        Err(LabError::InvalidOption(
            "--bgp needs BIRD 2 on the nodes and FRR on the router: apt-get install bird2 frr (scripts/test.sh installs them)"
                .to_owned(),
        ))
    }
}

/// FRR's configuration of the router, one file per daemon (`<daemon>.conf`): every node may
/// open a session (`bgp listen range`), BFD on them, ECMP. (One integrated file read by each
/// daemon does not work: a daemon that meets another's block, e.g. bgpd meeting `bfd`, fails
/// the block and its `exit` leaves configuration mode, so the rest is lost.)
#[must_use]
pub fn frr_configs(topology: &Topology, bfd_interval_ms: u32, bfd_multiplier: u32) -> Vec<(&'static str, String)> {
    let router = topology.router.ipv4;
    let header = format!("frr defaults datacenter\nhostname {}-router\nlog stdout informational\n!\n", topology.prefix);
    let bfdd = format!(
        "{header}bfd
 profile purelb
  receive-interval {bfd_interval_ms}
  transmit-interval {bfd_interval_ms}
  detect-multiplier {bfd_multiplier}
 exit
exit
!
"
    );
    let v6 = topology.dual_stack;
    // IPv6 sessions (dual-stack labs): their own peer group; next hops as the nodes' global
    // addresses (BIRD also sends its link-local one, which FRR would otherwise prefer).
    let (v6_group, v6_family, v6_map) = if v6 {
        (
            format!(
                " neighbor nodes6 peer-group
 neighbor nodes6 remote-as {NODE_ASN}
 bgp listen range 2001:db8::/64 peer-group nodes6
 neighbor nodes6 bfd profile purelb
 neighbor nodes6 timers 3 9
 neighbor nodes6 password {PASSWORD}
"
            ),
            " address-family ipv6 unicast
  neighbor nodes6 activate
  neighbor nodes6 route-map global-next-hop in
  maximum-paths 16
 exit-address-family
"
            .to_owned(),
            "route-map global-next-hop permit 10
 set ipv6 next-hop prefer-global
exit
!
"
            .to_owned(),
        )
    } else {
        (String::new(), String::new(), String::new())
    };
    let bgpd = format!(
        "{header}{v6_map}router bgp {ROUTER_ASN}
 bgp router-id {router}
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 neighbor nodes peer-group
 neighbor nodes remote-as {NODE_ASN}
 bgp listen range 192.0.2.0/24 peer-group nodes
 neighbor nodes bfd profile purelb
 neighbor nodes timers 3 9
 neighbor nodes password {password}
{v6_group} address-family ipv4 unicast
  neighbor nodes activate
  maximum-paths 16
 exit-address-family
{v6_family}exit
!
",
        password = PASSWORD
    );
    vec![("zebra", header), ("bfdd", bfdd), ("bgpd", bgpd)]
}

/// The lab's BGPPeer: every node peers with the router, BFD on.
#[must_use]
pub fn peer_yaml(bfd_interval: &str, bfd_multiplier: u32) -> String {
    format!(
        "apiVersion: purelb.io/v2
kind: BGPPeer
metadata:
  name: {PEER_NAME}
  namespace: {ns}
spec:
  peerAddress: {router}
  peerASN: {ROUTER_ASN}
  localASN: {NODE_ASN}
  holdTime: 9s
  passwordSecretKey: {PASSWORD_KEY}
  bfd:
    enabled: true
    minInterval: {bfd_interval}
    multiplier: {bfd_multiplier}
",
        ns = super::INSTALL_NAMESPACE,
        router = super::topology::router_ipv4(),
    )
}

/// The name of the IPv6 BGPPeer of a dual-stack lab.
pub const PEER_NAME_V6: &str = "router6";
/// The range routed IPv6 Service addresses of the lab come from (no host is on it).
pub const ROUTED_SUBNET_V6: &str = "2001:db8:f::/64";

/// The IPv6 session of a dual-stack lab (routes of a family go over a session of that family).
#[must_use]
pub fn peer_v6_yaml(bfd_interval: &str, bfd_multiplier: u32) -> String {
    peer_yaml(bfd_interval, bfd_multiplier)
        .replace(&format!("name: {PEER_NAME}\n"), &format!("name: {PEER_NAME_V6}\n"))
        .replace(
            &format!("peerAddress: {}", super::topology::router_ipv4()),
            &format!("peerAddress: {}", super::topology::router_ipv6()),
        )
}

/// A remote ServiceGroup `name` with routed addresses `pool` (in [`ROUTED_SUBNET`]),
/// advertised as host routes.
#[must_use]
pub fn routed_group_yaml(name: &str, pool: &str) -> String {
    format!(
        "apiVersion: purelb.io/v2
kind: ServiceGroup
metadata:
  name: {name}
  namespace: {ns}
spec:
  remote:
    v4pools:
    - pool: {pool}
      subnet: {ROUTED_SUBNET}
      aggregation: /32
",
        ns = super::INSTALL_NAMESPACE,
    )
}

/// The lab's routed ServiceGroup of a dual-stack lab: `pool` IPv4 and `pool6` IPv6 addresses,
/// host routes.
#[must_use]
pub fn routed_dual_group_yaml(name: &str, pool: &str, pool6: &str) -> String {
    format!(
        "{}    v6pools:
    - pool: {pool6}
      subnet: {ROUTED_SUBNET_V6}
      aggregation: /128
",
        routed_group_yaml(name, pool)
    )
}

/// The gateways of the router's FIB route to `addr` (one per ECMP path), from `ip -j route`
/// and, when zebra installed a nexthop group, `ip -j nexthop`.
///
/// # Errors
///
/// `ip` fails or prints something that is not JSON.
pub fn fib_nexthops(router_netns: &str, addr: IpAddr) -> Result<Vec<IpAddr>, LabError> {
    let ip = |args: &[&str]| -> Result<serde_json::Value, LabError> {
        let mut full = vec!["-n", router_netns, "-j"];
        full.extend_from_slice(args);
        let command = format!("ip {}", full.join(" "));
        let out = Command::new("ip")
            .args(&full)
            .output()
            .map_err(|source| LabError::Spawn { command: command.clone(), source })?;
        if !out.status.success() {
            return Err(LabError::Command {
                command,
                detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Array(Vec::new()));
        }
        serde_json::from_str(&text)
            .map_err(|e| LabError::Parse { what: format!("ip {}", full.join(" ")), detail: e.to_string() })
    };
    let family = if addr.is_ipv4() { "-4" } else { "-6" };
    let routes = ip(&[family, "route", "show", "exact", &addr.to_string()])?;
    let mut gateways = Vec::new();
    let parse =
        |v: &serde_json::Value| v.get("gateway").and_then(|g| g.as_str()).and_then(|g| g.parse::<IpAddr>().ok());
    for route in routes.as_array().into_iter().flatten() {
        if route.get("type").and_then(|t| t.as_str()).is_some_and(|t| t != "unicast") {
            continue;
        }
        if let Some(list) = route.get("nexthops").and_then(|n| n.as_array()) {
            gateways.extend(list.iter().filter_map(parse));
        } else if let Some(id) = route.get("nhid").and_then(serde_json::Value::as_u64) {
            let nh = ip(&["nexthop", "show", "id", &id.to_string()])?;
            let nh = nh.as_array().and_then(|a| a.first()).cloned().unwrap_or_default();
            if let Some(group) = nh.get("group").and_then(|g| g.as_array()) {
                for member in group {
                    let Some(mid) = member.get("id").and_then(serde_json::Value::as_u64) else { continue };
                    let m = ip(&["nexthop", "show", "id", &mid.to_string()])?;
                    gateways.extend(m.as_array().into_iter().flatten().filter_map(parse));
                }
            } else {
                gateways.extend(parse(&nh));
            }
        } else {
            gateways.extend(parse(route));
        }
    }
    gateways.sort();
    gateways.dedup();
    Ok(gateways)
}

/// The node hosts whose addresses are among `gateways`, by name.
#[must_use]
pub fn nodes_of(topology: &Topology, gateways: &[IpAddr]) -> Vec<String> {
    topology
        .nodes
        .iter()
        .filter(|n| {
            gateways.contains(&IpAddr::V4(n.ipv4)) || n.ipv6.is_some_and(|v6| gateways.contains(&IpAddr::V6(v6)))
        })
        .map(|n| n.name.clone())
        .collect()
}

/// A routed lab address: the `n`th of [`ROUTED_SUBNET`].
#[must_use]
pub fn routed_address(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configurations_name_the_lab_addresses() {
        let t = Topology::new("blab", 3, false).unwrap();
        let configs = frr_configs(&t, 300, 3);
        let frr: String = configs.iter().map(|(_, c)| c.as_str()).collect();
        assert!(frr.contains("bgp listen range 192.0.2.0/24 peer-group nodes"), "{frr}");
        assert!(frr.contains("neighbor nodes remote-as 64513") && frr.contains("maximum-paths 16"), "{frr}");
        assert!(frr.contains("receive-interval 300") && frr.contains("detect-multiplier 3"), "{frr}");
        assert!(frr.contains("neighbor nodes password s3cr"), "{frr}");
        let configs6 = frr_configs(&Topology::new("blab", 3, true).unwrap(), 300, 3);
        let bgpd6 = &configs6[2].1;
        assert!(
            bgpd6.contains("bgp listen range 2001:db8::/64 peer-group nodes6") && bgpd6.contains("prefer-global"),
            "{bgpd6}"
        );
        assert!(!frr.contains("nodes6"), "{frr}");
        assert!(
            peer_v6_yaml("300ms", 3).contains("peerAddress: 2001:db8::1")
                && peer_v6_yaml("300ms", 3).contains("name: router6")
        );
        assert!(
            routed_dual_group_yaml("r", "203.0.113.10-203.0.113.19", "2001:db8:f::10-2001:db8:f::1f")
                .contains("subnet: 2001:db8:f::/64")
        );
        let peer = peer_yaml("300ms", 3);
        assert!(peer.contains("peerAddress: 192.0.2.1") && peer.contains("minInterval: 300ms"), "{peer}");
        assert_eq!(nodes_of(&t, &["192.0.2.11".parse().unwrap(), "192.0.2.13".parse().unwrap()]), ["n1", "n3"]);
    }
}
