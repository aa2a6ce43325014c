use std::{net::IpAddr, path::PathBuf, process::Command};

use super::*;
use crate::{
    api::{AddressPool, BGPPeerSpec, BfdSpec, PoolSpec},
    core::ipam::parse_pool_spec,
};

fn peer(name: &str, addr: &str, asn: u32) -> PeerConfig {
    let spec = BGPPeerSpec { peer_address: addr.into(), peer_asn: asn, local_asn: 64_513, ..BGPPeerSpec::default() };
    PeerConfig::from_spec(name, &spec).unwrap()
}

fn group(name: &str, pools: &[(&str, &str, Option<&str>)], attributes: RouteAttributes) -> GroupExport {
    let (v4, v6): (Vec<_>, Vec<_>) = pools.iter().partition(|(p, _, _)| !p.contains(':'));
    let to_pool = |list: Vec<&(&str, &str, Option<&str>)>| {
        Some(
            list.into_iter()
                .map(|(pool, subnet, agg)| AddressPool {
                    pool: (*pool).into(),
                    subnet: (*subnet).into(),
                    aggregation: agg.map(Into::into),
                })
                .collect(),
        )
    };
    let spec = PoolSpec { v4pools: to_pool(v4), v6pools: to_pool(v6), ..PoolSpec::default() };
    let parsed = parse_pool_spec("spec.remote", &spec).unwrap();
    GroupExport { group: name.into(), prefixes: parsed.all().map(PrefixPattern::of).collect(), attributes }
}

fn config() -> BirdConfig {
    let bfd = BGPPeerSpec {
        peer_address: "2001:db8::1".into(),
        peer_asn: 64_513,
        local_asn: 64_513,
        hold_time: Some("9s".into()),
        bfd: Some(BfdSpec { enabled: Some(true), min_interval: Some("100ms".into()), multiplier: Some(5) }),
        password_secret_key: Some("tor-b".into()),
        ..BGPPeerSpec::default()
    };
    BirdConfig {
        router_id: "198.51.100.11".parse().unwrap(),
        dummy_interface: "kube-lb0".into(),
        peers: vec![
            peer("tor-a.rack1", "198.51.100.1", 64_512),
            PeerConfig::from_spec("tor-b", &bfd).unwrap(),
            // A BIRD keyword as a name.
            peer("router", "198.51.100.3", 64_512),
        ],
        exports: vec![
            group(
                "routed",
                &[("203.0.113.240/28", "203.0.113.0/24", Some("/32")), ("2001:db8:5::/120", "2001:db8:5::/64", None)],
                RouteAttributes {
                    communities: vec![Community::Standard(65_000, 100), Community::Large(1, 2, 3)],
                    local_pref: Some(200),
                },
            ),
            group("wide", &[("198.51.100.128/25", "198.51.100.0/24", Some("/16"))], RouteAttributes::default()),
        ],
        mode: ExportMode::Advertise,
        password_dir: PathBuf::from("/run/purelb-bird/passwords"),
    }
}

#[test]
fn prefixes_are_the_ranges_at_their_aggregation_length() {
    let cfg = config();
    let p: Vec<String> = cfg
        .exports
        .iter()
        .flat_map(|g| g.prefixes.iter().map(|p| format!("{}/{}{{{},{}}}", p.net, p.len, p.lengths.0, p.lengths.1)))
        .collect();
    assert_eq!(p, ["203.0.113.0/24{32,32}", "2001:db8:5::/64{64,64}", "198.51.0.0/16{16,16}"]);
}

#[test]
fn the_configuration_has_each_peer_filter_and_attribute() {
    let text = render(&config());
    for needle in [
        "router id 198.51.100.11;",
        "interface \"kube-lb0\";",
        "protocol bgp 'peer-tor-a.rack1' {",
        "neighbor 198.51.100.1 port 179 as 64512;",
        "hold time 90;",
        "keepalive time 30;",
        "graceful restart off;",
        "ipv4 { import none; export filter purelb_export4_ebgp; };",
        "ipv6 { import none; export filter purelb_export6_ibgp; };",
        "bfd { min rx interval 100 ms; min tx interval 100 ms; idle tx interval 1000 ms; multiplier 5; };",
        "include \"/run/purelb-bird/passwords/tor-b.conf\";",
        "if net ~ [ 203.0.113.0/24{32,32} ] then {",
        "bgp_community.add((65000,100));",
        "bgp_large_community.add((1,2,3));",
        "protocol bfd purelb_bfd",
        "direct;",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // local preference only on iBGP filters.
    let ebgp =
        &text[text.find("filter purelb_export4_ebgp").unwrap()..text.find("filter purelb_export4_ibgp").unwrap()];
    assert!(!ebgp.contains("bgp_local_pref"), "{ebgp}");
    let ibgp =
        &text[text.find("filter purelb_export4_ibgp").unwrap()..text.find("filter purelb_export6_ebgp").unwrap()];
    assert!(ibgp.contains("bgp_local_pref = 200;"), "{ibgp}");
    assert!(!text.contains("65535,0"), "no GRACEFUL_SHUTDOWN while advertising");
    // The same input gives the same text (no reload when nothing changed).
    assert_eq!(text, render(&config()));
}

#[test]
fn draining_tags_every_route_and_withdrawing_exports_nothing() {
    let drain = render(&BirdConfig { mode: ExportMode::GracefulShutdown, ..config() });
    assert_eq!(drain.matches("bgp_community.add((65535,0));").count(), 2 * 3, "{drain}");
    assert_eq!(drain.matches("bgp_local_pref = 0;").count(), 3, "iBGP filters only:\n{drain}");
    let withdraw = render(&BirdConfig { mode: ExportMode::Withdraw, ..config() });
    assert!(!withdraw.contains("accept;"), "{withdraw}");
    assert!(withdraw.contains("protocol bgp 'peer-tor-a.rack1'"), "the sessions stay:\n{withdraw}");
}

#[test]
fn hostile_names_cannot_break_out_of_their_strings() {
    let mut cfg = config();
    cfg.dummy_interface = "kube-lb0\"; } protocol static {".into();
    cfg.peers[0].name = "x'; }".into();
    let text = render(&cfg);
    assert!(text.contains("interface \"kube-lb0; } protocol static {\";"), "{text}");
    assert!(text.contains("protocol bgp 'peer-x' {"), "{text}");
}

#[test]
fn router_ids_are_the_first_ipv4_address_or_stable_per_name() {
    let v6: IpAddr = "2001:db8::5".parse().unwrap();
    let v4: IpAddr = "192.0.2.5".parse().unwrap();
    assert_eq!(router_id("n1", &[v6, v4]), "192.0.2.5".parse::<Ipv4Addr>().unwrap());
    let a = router_id("node-a", &[v6]);
    assert_eq!(a, router_id("node-a", &[]));
    assert_ne!(a, router_id("node-b", &[]));
    assert_eq!(a.octets()[0] & 0xf0, 0xf0);
}

/// BIRD itself accepts every configuration we render (`bird -p`: parse only). The password
/// snippet is written as the BIRD container would.
#[test]
fn bird_parses_what_we_render() {
    let Ok(out) = Command::new("bird").arg("--version").output() else {
        panic!("bird is not installed: apt-get install bird2 (scripts/test.sh installs it)");
    };
    assert!(String::from_utf8_lossy(&out.stderr).contains("BIRD version 2"), "{out:?}");
    let dir = std::env::temp_dir().join(format!("purelb-bird-parse-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("passwords")).unwrap();
    std::fs::write(dir.join("passwords/tor-b.conf"), "password \"s3cret\";\n").unwrap();
    for mode in [ExportMode::Advertise, ExportMode::GracefulShutdown, ExportMode::Withdraw] {
        for peers in [0, 1, 3] {
            let mut cfg = BirdConfig { mode, password_dir: dir.join("passwords"), ..config() };
            cfg.peers.truncate(peers);
            if peers == 0 {
                cfg.exports.clear();
            }
            let file = dir.join("bird.conf");
            std::fs::write(&file, render(&cfg)).unwrap();
            let out = Command::new("bird").arg("-p").arg("-c").arg(&file).output().unwrap();
            assert!(
                out.status.success(),
                "{mode:?}, {peers} peers: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                render(&cfg)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
