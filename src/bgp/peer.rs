//! A `BGPPeer` checked and reduced to what BIRD needs ([`PeerConfig`]), and a ServiceGroup's
//! `bgp` settings checked ([`RouteAttributes`]). Every error names the field and the value and
//! says what is allowed; the same checks run in the allocator (status condition) and the agent
//! (the peer is left out of BIRD's configuration, with a `ConfigError` Event).

use std::{net::IpAddr, time::Duration};

use crate::{
    api::{BGPPeerSpec, BgpAdvertisement},
    duration::parse_duration,
};

/// BIRD's hold time limits (RFC 4271: 0, or at least 3 s; the field has 16 bits).
const HOLD_MIN: u64 = 3;
const HOLD_MAX: u64 = 65_535;

/// A BGPPeer as BIRD needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// The BGPPeer's name (also the BIRD protocol name).
    pub name: String,
    /// `spec.peerAddress`.
    pub peer_address: IpAddr,
    /// `spec.peerASN`.
    pub peer_asn: u32,
    /// `spec.localASN`.
    pub local_asn: u32,
    /// `spec.port`.
    pub port: u16,
    /// `spec.sourceAddress`.
    pub source_address: Option<IpAddr>,
    /// Hold time in seconds (0: no keepalives).
    pub hold_secs: u64,
    /// Keepalive time in seconds.
    pub keepalive_secs: u64,
    /// `spec.ebgpMultihop`.
    pub multihop: bool,
    /// `spec.gracefulRestart`.
    pub graceful_restart: bool,
    /// BFD interval and multiplier when enabled.
    pub bfd: Option<(Duration, u32)>,
    /// `spec.passwordSecretKey`.
    pub password_key: Option<String>,
}

impl PeerConfig {
    /// Whether the session is iBGP.
    #[must_use]
    pub fn is_ibgp(&self) -> bool {
        self.peer_asn == self.local_asn
    }

    /// Checks `spec` of the BGPPeer `name`.
    ///
    /// # Errors
    ///
    /// A message naming the offending field and value, and what is allowed.
    pub fn from_spec(name: &str, spec: &BGPPeerSpec) -> Result<Self, String> {
        if !is_protocol_name(name) {
            return Err(format!(
                "metadata.name {name:?} cannot name a BIRD protocol: use lowercase letters, digits, '-' and '.' (at most 64)"
            ));
        }
        let peer_address: IpAddr = spec.peer_address.trim().parse().map_err(|_| {
            format!(
                "spec.peerAddress {:?} is not an IPv4 or IPv6 address, e.g. 192.0.2.1 or 2001:db8::1",
                spec.peer_address
            )
        })?;
        if peer_address.is_unspecified() || peer_address.is_multicast() || peer_address.is_loopback() {
            return Err(format!(
                "spec.peerAddress {peer_address} cannot be a BGP neighbour: use the router's unicast address"
            ));
        }
        for (field, asn) in [("spec.peerASN", spec.peer_asn), ("spec.localASN", spec.local_asn)] {
            if asn == 0 {
                return Err(format!("{field} 0 is reserved: use 1..4294967295"));
            }
        }
        let port = match spec.port {
            None => 179,
            Some(p) => u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("spec.port {p} is not a TCP port: use 1..65535"))?,
        };
        let source_address = spec
            .source_address
            .as_deref()
            .map(|s| {
                s.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| format!("spec.sourceAddress {s:?} is not an IPv4 or IPv6 address"))
            })
            .transpose()?;
        if let Some(src) = source_address
            && src.is_ipv4() != peer_address.is_ipv4()
        {
            return Err(format!("spec.sourceAddress {src} is not of the family of spec.peerAddress {peer_address}"));
        }
        let hold_secs = match spec.hold_time.as_deref() {
            None => 90,
            Some(text) => whole_seconds("spec.holdTime", text)?,
        };
        if hold_secs != 0 && !(HOLD_MIN..=HOLD_MAX).contains(&hold_secs) {
            return Err(format!(
                "spec.holdTime {hold_secs}s is out of range: use 0s (no keepalives) or {HOLD_MIN}s..{HOLD_MAX}s"
            ));
        }
        let keepalive_secs = match spec.keepalive_time.as_deref() {
            None => hold_secs / 3,
            Some(text) => whole_seconds("spec.keepaliveTime", text)?,
        };
        if hold_secs != 0 && (keepalive_secs == 0 || keepalive_secs >= hold_secs) {
            return Err(format!(
                "spec.keepaliveTime {keepalive_secs}s must be at least 1s and shorter than spec.holdTime {hold_secs}s (a third is usual)"
            ));
        }
        let bfd = match &spec.bfd {
            Some(b) if b.enabled.unwrap_or(false) => {
                let interval = match b.min_interval.as_deref() {
                    None => Duration::from_millis(300),
                    Some(text) => parse_duration(text).map_err(|e| format!("spec.bfd.minInterval: {e}"))?,
                };
                if interval < Duration::from_millis(10) || interval > Duration::from_secs(60) {
                    return Err(format!(
                        "spec.bfd.minInterval {} is out of range: use 10ms..60s",
                        crate::duration::format_duration(interval)
                    ));
                }
                let multiplier = b.multiplier.unwrap_or(3);
                if !(1..=255).contains(&multiplier) {
                    return Err(format!("spec.bfd.multiplier {multiplier} is out of range: use 1..255"));
                }
                Some((interval, multiplier))
            }
            _ => None,
        };
        let multihop = spec.ebgp_multihop.unwrap_or(false);
        if multihop && bfd.is_some() && source_address.is_none() {
            return Err(
                "spec.bfd with spec.ebgpMultihop needs spec.sourceAddress (multihop BFD sessions are bound to a local address)"
                    .to_owned(),
            );
        }
        Ok(Self {
            name: name.to_owned(),
            peer_address,
            peer_asn: spec.peer_asn,
            local_asn: spec.local_asn,
            port,
            source_address,
            hold_secs,
            keepalive_secs,
            multihop,
            graceful_restart: spec.graceful_restart.unwrap_or(false),
            bfd,
            password_key: spec.password_secret_key.clone(),
        })
    }
}

/// A Kubernetes object name BIRD can take as a quoted protocol name.
fn is_protocol_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn whole_seconds(field: &str, text: &str) -> Result<u64, String> {
    let d = parse_duration(text).map_err(|e| format!("{field}: {e}"))?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{field} {text:?} is not a whole number of seconds (BGP timers are in seconds)"));
    }
    Ok(d.as_secs())
}

/// A BGP community as BIRD writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Community {
    /// `(a,b)`.
    Standard(u16, u16),
    /// `(a,b,c)`.
    Large(u32, u32, u32),
}

impl Community {
    /// GRACEFUL_SHUTDOWN (RFC 8326).
    pub const GRACEFUL_SHUTDOWN: Self = Self::Standard(65_535, 0);
}

/// A ServiceGroup's `bgp` settings, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteAttributes {
    /// Communities (standard and large) added to the group's routes.
    pub communities: Vec<Community>,
    /// LOCAL_PREF (iBGP sessions only).
    pub local_pref: Option<u32>,
}

impl RouteAttributes {
    /// Checks `spec` (of the field `field`, e.g. `spec.remote.bgp`).
    ///
    /// # Errors
    ///
    /// A message naming the offending community.
    pub fn from_spec(field: &str, spec: &BgpAdvertisement) -> Result<Self, String> {
        let mut communities = Vec::new();
        for c in &spec.communities {
            let parsed = match c.as_str() {
                "no-export" => Community::Standard(65_535, 65_281),
                "no-advertise" => Community::Standard(65_535, 65_282),
                "no-export-subconfed" => Community::Standard(65_535, 65_283),
                other => {
                    let parts: Vec<Option<u16>> = other.split(':').map(|p| p.parse().ok()).collect();
                    match parts.as_slice() {
                        [Some(a), Some(b)] => Community::Standard(*a, *b),
                        _ => {
                            return Err(format!(
                                "{field}.communities: {c:?} is not a community: use a:b with each part 0..65535, or no-export, no-advertise, no-export-subconfed"
                            ));
                        }
                    }
                }
            };
            communities.push(parsed);
        }
        for c in &spec.large_communities {
            let parts: Vec<Option<u32>> = c.split(':').map(|p| p.parse().ok()).collect();
            match parts.as_slice() {
                [Some(a), Some(b), Some(x)] => communities.push(Community::Large(*a, *b, *x)),
                _ => {
                    return Err(format!(
                        "{field}.largeCommunities: {c:?} is not a large community: use a:b:c with each part 0..4294967295"
                    ));
                }
            }
        }
        Ok(Self { communities, local_pref: spec.local_pref })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BfdSpec;

    fn spec() -> BGPPeerSpec {
        BGPPeerSpec { peer_address: "192.0.2.1".into(), peer_asn: 64_512, local_asn: 64_513, ..BGPPeerSpec::default() }
    }

    #[test]
    fn defaults_are_those_of_the_contract() {
        let p = PeerConfig::from_spec("tor-a", &spec()).unwrap();
        assert_eq!((p.port, p.hold_secs, p.keepalive_secs), (179, 90, 30));
        assert!(!p.multihop && !p.graceful_restart && p.bfd.is_none() && !p.is_ibgp());
        let bfd = BGPPeerSpec { bfd: Some(BfdSpec { enabled: Some(true), ..BfdSpec::default() }), ..spec() };
        assert_eq!(PeerConfig::from_spec("tor-a", &bfd).unwrap().bfd, Some((Duration::from_millis(300), 3)));
    }

    #[test]
    fn hostile_values_are_refused_with_the_field_and_what_is_allowed() {
        let cases: Vec<(BGPPeerSpec, &str, &str)> = vec![
            (BGPPeerSpec { peer_address: "not-an-ip".into(), ..spec() }, "spec.peerAddress", "not-an-ip"),
            (BGPPeerSpec { peer_address: "0.0.0.0".into(), ..spec() }, "spec.peerAddress", "unicast"),
            (BGPPeerSpec { peer_asn: 0, ..spec() }, "spec.peerASN", "1..4294967295"),
            (BGPPeerSpec { local_asn: 0, ..spec() }, "spec.localASN", "reserved"),
            (BGPPeerSpec { port: Some(70_000), ..spec() }, "spec.port", "1..65535"),
            (BGPPeerSpec { port: Some(0), ..spec() }, "spec.port", "1..65535"),
            (BGPPeerSpec { hold_time: Some("100000s".into()), ..spec() }, "spec.holdTime", "65535s"),
            (BGPPeerSpec { hold_time: Some("2s".into()), ..spec() }, "spec.holdTime", "3s"),
            (BGPPeerSpec { hold_time: Some("1.5s".into()), ..spec() }, "spec.holdTime", "whole number"),
            (
                BGPPeerSpec { hold_time: Some("9s".into()), keepalive_time: Some("9s".into()), ..spec() },
                "keepaliveTime",
                "shorter",
            ),
            (BGPPeerSpec { source_address: Some("2001:db8::1".into()), ..spec() }, "spec.sourceAddress", "family"),
            (
                BGPPeerSpec {
                    bfd: Some(BfdSpec { enabled: Some(true), min_interval: Some("1ms".into()), multiplier: None }),
                    ..spec()
                },
                "spec.bfd.minInterval",
                "10ms..60s",
            ),
            (
                BGPPeerSpec {
                    bfd: Some(BfdSpec { enabled: Some(true), min_interval: None, multiplier: Some(0) }),
                    ..spec()
                },
                "spec.bfd.multiplier",
                "1..255",
            ),
        ];
        for (s, field, hint) in cases {
            let e = PeerConfig::from_spec("p", &s).expect_err(field);
            assert!(e.contains(field) && e.contains(hint), "{field}: {e}");
        }
        assert!(PeerConfig::from_spec("Not_A_Name", &spec()).unwrap_err().contains("metadata.name"));
        let multihop_bfd = BGPPeerSpec {
            ebgp_multihop: Some(true),
            bfd: Some(BfdSpec { enabled: Some(true), ..BfdSpec::default() }),
            ..spec()
        };
        assert!(PeerConfig::from_spec("p", &multihop_bfd).unwrap_err().contains("spec.sourceAddress"));
        let with_source = BGPPeerSpec { source_address: Some("192.0.2.11".into()), ..multihop_bfd };
        assert!(PeerConfig::from_spec("p", &with_source).is_ok());
        // BFD settings of a disabled BFD are not checked (they are not used).
        let off = BGPPeerSpec {
            bfd: Some(BfdSpec { enabled: Some(false), multiplier: Some(0), ..BfdSpec::default() }),
            ..spec()
        };
        assert!(PeerConfig::from_spec("p", &off).unwrap().bfd.is_none());
        let zero = BGPPeerSpec { hold_time: Some("0s".into()), ..spec() };
        assert_eq!(PeerConfig::from_spec("p", &zero).unwrap().hold_secs, 0);
    }

    #[test]
    fn communities_parse_or_name_the_bad_one() {
        let ok = BgpAdvertisement {
            communities: vec!["65000:100".into(), "no-export".into()],
            large_communities: vec!["4200000000:1:2".into()],
            local_pref: Some(200),
        };
        let attrs = RouteAttributes::from_spec("spec.remote.bgp", &ok).unwrap();
        assert_eq!(
            attrs.communities,
            vec![
                Community::Standard(65_000, 100),
                Community::Standard(65_535, 65_281),
                Community::Large(4_200_000_000, 1, 2)
            ]
        );
        for bad in ["70000:1", "1:2:3", "a:b", ""] {
            let spec = BgpAdvertisement { communities: vec![bad.into()], ..BgpAdvertisement::default() };
            let e = RouteAttributes::from_spec("spec.remote.bgp", &spec).unwrap_err();
            assert!(e.contains("spec.remote.bgp.communities") && e.contains(&format!("{bad:?}")), "{e}");
        }
        let spec = BgpAdvertisement { large_communities: vec!["1:2".into()], ..BgpAdvertisement::default() };
        assert!(RouteAttributes::from_spec("f", &spec).unwrap_err().contains("largeCommunities"));
    }
}
