//! BIRD 2's configuration, rendered from the API: one `bgp` protocol per BGPPeer that selects
//! this node, a `direct` protocol that reads the addresses on the dummy interface, and export
//! filters that pass only prefixes of the ServiceGroups' ranges at their aggregation length,
//! with each group's communities and local preference. A pure function of [`BirdConfig`]: the
//! same input gives byte-identical output, so an unchanged configuration is never reloaded.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use super::peer::{Community, PeerConfig, RouteAttributes};
use crate::core::ipam::{Family, ParsedRange, Subnet};

/// What the routes say about this node's future.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExportMode {
    /// Normal operation.
    #[default]
    Advertise,
    /// Draining: every route carries GRACEFUL_SHUTDOWN (65535:0, RFC 8326) and, on iBGP,
    /// LOCAL_PREF 0, so that routers move traffic to the other nodes before the withdrawal.
    GracefulShutdown,
    /// Nothing is exported (the sessions stay up).
    Withdraw,
}

/// One prefix set entry: `net/len{min,max}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PrefixPattern {
    /// The network.
    pub net: IpAddr,
    /// Its prefix length.
    pub len: u8,
    /// Shortest and longest accepted prefix length.
    pub lengths: (u8, u8),
}

impl PrefixPattern {
    /// The prefixes a range can put on the dummy interface: its addresses at the aggregation
    /// length (a range wider than the aggregation gives one prefix per aggregation block).
    #[must_use]
    pub fn of(range: &ParsedRange) -> Self {
        let agg = range.aggregation;
        let len = agg.min(range.subnet.prefix_len());
        let base = Subnet::new(range.subnet.network(), len);
        Self { net: base.network(), len, lengths: (agg, agg) }
    }

    fn family(&self) -> Family {
        Family::of(self.net)
    }
}

/// A group's export: its prefixes and route attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupExport {
    /// The ServiceGroup.
    pub group: String,
    /// Prefixes of its ranges.
    pub prefixes: Vec<PrefixPattern>,
    /// `bgp` settings.
    pub attributes: RouteAttributes,
}

/// Everything BIRD's configuration is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BirdConfig {
    /// BIRD's router ID (this node's first IPv4 address, or one derived from its name).
    pub router_id: Ipv4Addr,
    /// The interface holding the routed addresses (`kube-lb0`).
    pub dummy_interface: String,
    /// Sessions, by name.
    pub peers: Vec<PeerConfig>,
    /// Groups, by name.
    pub exports: Vec<GroupExport>,
    /// Advertise, drain or withdraw.
    pub mode: ExportMode,
    /// Directory of the password snippets the BIRD container writes from the mounted Secret
    /// (`<dir>/<key>.conf`, holding `password "...";`).
    pub password_dir: PathBuf,
}

fn community(c: &Community) -> String {
    match c {
        Community::Standard(a, b) => format!("bgp_community.add(({a},{b}));"),
        Community::Large(a, b, x) => format!("bgp_large_community.add(({a},{b},{x}));"),
    }
}

fn prefix_set(prefixes: &[&PrefixPattern]) -> String {
    let items: Vec<String> =
        prefixes.iter().map(|p| format!("{}/{}{{{},{}}}", p.net, p.len, p.lengths.0, p.lengths.1)).collect();
    format!("[ {} ]", items.join(", "))
}

/// Quotes a string for BIRD (names and paths: no quote or backslash can reach here, but never
/// trust that).
fn quoted(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !matches!(c, '"' | '\\' | '\'' | '\n' | '\r')).collect();
    format!("\"{clean}\"")
}

/// Prefix of the BIRD protocol of a BGPPeer: `peer-<name>` (a bare name could be one of BIRD's
/// keywords, e.g. `router`, which BIRD refuses even quoted).
pub const PROTOCOL_PREFIX: &str = "peer-";

fn protocol_name(peer: &str) -> String {
    let clean: String = peer.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')).collect();
    format!("'{PROTOCOL_PREFIX}{clean}'")
}

/// The export filter of one family for sessions of kind `ibgp`.
fn export_filter(out: &mut String, cfg: &BirdConfig, family: Family, ibgp: bool) {
    let name = format!("purelb_export{}_{}", number(family), if ibgp { "ibgp" } else { "ebgp" });
    let _ = writeln!(out, "filter {name} {{");
    if cfg.mode == ExportMode::Withdraw {
        let _ = writeln!(out, "  reject;\n}}\n");
        return;
    }
    for g in &cfg.exports {
        let prefixes: Vec<&PrefixPattern> = g.prefixes.iter().filter(|p| p.family() == family).collect();
        if prefixes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  # ServiceGroup {}", g.group.replace('\n', " "));
        let _ = writeln!(out, "  if net ~ {} then {{", prefix_set(&prefixes));
        for c in &g.attributes.communities {
            let _ = writeln!(out, "    {}", community(c));
        }
        if ibgp && let Some(pref) = g.attributes.local_pref {
            let _ = writeln!(out, "    bgp_local_pref = {pref};");
        }
        if cfg.mode == ExportMode::GracefulShutdown {
            let _ = writeln!(out, "    {}", community(&Community::GRACEFUL_SHUTDOWN));
            if ibgp {
                let _ = writeln!(out, "    bgp_local_pref = 0;");
            }
        }
        let _ = writeln!(out, "    accept;\n  }}");
    }
    let _ = writeln!(out, "  reject;\n}}\n");
}

/// BIRD's configuration for `cfg`.
#[must_use]
pub fn render(cfg: &BirdConfig) -> String {
    let mut out = String::from(
        "# Written by the PureLB agent (purelb agent --bird-config). Do not edit: it is rewritten\n# whenever a BGPPeer, a ServiceGroup or this node changes.\n",
    );
    let _ = writeln!(out, "router id {};\n", cfg.router_id);
    out.push_str("protocol device purelb_device {\n  scan time 10;\n}\n\n");
    let _ = writeln!(
        out,
        "# The Service addresses this node holds, at their group's aggregation length.\nprotocol direct purelb_direct {{\n  ipv4;\n  ipv6;\n  interface {};\n}}\n",
        quoted(&cfg.dummy_interface)
    );
    if cfg.peers.iter().any(|p| p.bfd.is_some()) {
        out.push_str("protocol bfd purelb_bfd {\n}\n\n");
    }
    for family in [Family::V4, Family::V6] {
        for ibgp in [false, true] {
            export_filter(&mut out, cfg, family, ibgp);
        }
    }
    for peer in &cfg.peers {
        let kind = if peer.is_ibgp() { "ibgp" } else { "ebgp" };
        let _ = writeln!(out, "protocol bgp {} {{", protocol_name(&peer.name));
        let _ = match peer.source_address {
            Some(src) => writeln!(out, "  local {src} as {};", peer.local_asn),
            None => writeln!(out, "  local as {};", peer.local_asn),
        };
        let _ = writeln!(out, "  neighbor {} port {} as {};", peer.peer_address, peer.port, peer.peer_asn);
        let _ = writeln!(out, "  hold time {};", peer.hold_secs);
        if peer.hold_secs != 0 {
            let _ = writeln!(out, "  keepalive time {};", peer.keepalive_secs);
        }
        // Reconnect quickly after a failure (BIRD's defaults wait 5 s before the first try).
        out.push_str("  connect delay time 1;\n  connect retry time 5;\n  error wait time 1, 30;\n");
        // BIRD takes iBGP sessions as multihop unless told `direct`: the router is on a
        // connected network unless the BGPPeer says multihop (for iBGP too).
        if peer.multihop {
            out.push_str("  multihop;\n");
        } else if peer.is_ibgp() {
            out.push_str("  direct;\n");
        }
        let _ = writeln!(out, "  graceful restart {};", if peer.graceful_restart { "on" } else { "off" });
        if !peer.graceful_restart {
            out.push_str("  long lived graceful restart off;\n");
        }
        if let Some((interval, multiplier)) = peer.bfd {
            let ms = interval.as_millis();
            let _ = writeln!(
                out,
                "  bfd {{ min rx interval {ms} ms; min tx interval {ms} ms; idle tx interval 1000 ms; multiplier {multiplier}; }};"
            );
        }
        if let Some(key) = &peer.password_key {
            let path = cfg.password_dir.join(format!("{key}.conf"));
            let _ = writeln!(out, "  include {};", quoted(&path.to_string_lossy()));
        }
        // Routes of the session's family only (`api.md` §7).
        let own = Family::of(peer.peer_address);
        let _ =
            writeln!(out, "  {} {{ import none; export filter purelb_export{}_{kind}; }};", channel(own), number(own));
        out.push_str("}\n\n");
    }
    out
}

/// 4 or 6.
fn number(family: Family) -> u8 {
    match family {
        Family::V4 => 4,
        Family::V6 => 6,
    }
}

fn channel(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

/// A router ID for a node: its first IPv4 address, or (IPv6-only nodes) one derived from the
/// node's name (FNV-1a in 240.0.0.0/4, which is never a real address: BIRD needs an ID, not a route).
#[must_use]
pub fn router_id(node: &str, addresses: &[IpAddr]) -> Ipv4Addr {
    if let Some(IpAddr::V4(v4)) = addresses.iter().find(|a| a.is_ipv4()) {
        return *v4;
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in node.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    Ipv4Addr::from(0xf000_0000 | (h & 0x0fff_ffff))
}

#[cfg(test)]
mod tests;
