//! Unit tests of the pure parts (no root): message conversions and decisions. The kernel
//! behaviour is tested in `tests/netlink.rs`.

use std::net::IpAddr;

use rtnetlink::packet_route::{
    address::{AddressAttribute, AddressFlags as KernelAddressFlags, AddressMessage, AddressProtocol, CacheInfo},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    route::{RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop, RouteNextHopFlags, RouteType},
};

use super::{
    model::{address_from_message, address_message, default_routes_from, link_from_message, validate_link_name},
    *,
};
use crate::core::ipam::{AddressRange, Family};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn addr(ifname: &str, index: u32, text: &str, prefix_len: u8) -> Address {
    Address {
        index,
        ifname: ifname.to_owned(),
        ip: ip(text),
        prefix_len,
        flags: AddressFlags::default(),
        state: AddressState { permanent: true, ..AddressState::default() },
        valid_lifetime: None,
        preferred_lifetime: None,
        protocol: None,
    }
}

fn ours(mut a: Address) -> Address {
    a.protocol = Some(PURELB_ADDRESS_PROTOCOL);
    a
}

fn link(index: u32, name: &str, usable: bool) -> Link {
    Link {
        index,
        name: name.to_owned(),
        kind: None,
        admin_up: usable,
        lower_up: usable,
        loopback: false,
        promote_secondaries: None,
        alias: None,
    }
}

#[test]
fn the_mark_is_p() {
    assert_eq!(PURELB_ADDRESS_PROTOCOL, b'P');
}

#[test]
fn address_message_carries_flags_lifetimes_and_mark() {
    let spec = AddressSpec::new(7, ip("2001:db8::5"), 64).nodad().noprefixroute().lifetimes(300, 200);
    let message = address_message(7, &spec);
    assert_eq!(message.header.index, 7);
    assert_eq!(message.header.prefix_len, 64);
    let attrs = &message.attributes;
    assert!(attrs.contains(&AddressAttribute::Flags(KernelAddressFlags::Nodad | KernelAddressFlags::Noprefixroute)));
    assert!(attrs.contains(&AddressAttribute::Protocol(AddressProtocol::Other(0x50))));
    let cache = attrs
        .iter()
        .find_map(|a| match a {
            AddressAttribute::CacheInfo(c) => Some(*c),
            _ => None,
        })
        .unwrap();
    assert_eq!((cache.ifa_valid, cache.ifa_preferred), (300, 200));
    assert!(attrs.contains(&AddressAttribute::Address(ip("2001:db8::5"))));
}

#[test]
fn nodad_is_not_sent_for_ipv4() {
    let message = address_message(1, &AddressSpec::new(1, ip("192.0.2.1"), 32).nodad());
    assert!(message.attributes.contains(&AddressAttribute::Flags(KernelAddressFlags::empty())));
    assert!(message.attributes.contains(&AddressAttribute::Local(ip("192.0.2.1"))));
}

#[test]
fn lifetimes_zero_is_forever_and_preferred_is_capped() {
    assert_eq!(AddressSpec::new(1, ip("192.0.2.1"), 32).kernel_lifetimes(), (u32::MAX, u32::MAX));
    assert_eq!(AddressSpec::new(1, ip("192.0.2.1"), 32).lifetimes(60, 0).kernel_lifetimes(), (60, 60));
    assert_eq!(AddressSpec::new(1, ip("192.0.2.1"), 32).lifetimes(60, 90).kernel_lifetimes(), (60, 60));
    assert_eq!(AddressSpec::new(1, ip("192.0.2.1"), 32).lifetimes(0, 90).kernel_lifetimes(), (u32::MAX, 90));
}

#[test]
fn specs_the_kernel_would_refuse_are_rejected() {
    for (text, len) in [("192.0.2.1", 33), ("2001:db8::1", 129), ("0.0.0.0", 8), ("224.0.0.1", 32), ("192.0.2.1", 0)] {
        let error = AddressSpec::new("eth0", ip(text), len).validate().unwrap_err();
        assert!(matches!(error, NetlinkError::InvalidAddress { .. }), "{text}/{len}: {error}");
    }
    assert!(AddressSpec::new("eth0", ip("192.0.2.1"), 24).validate().is_ok());
    let error = AddressSpec::new("much-too-long-name0", ip("192.0.2.1"), 24).validate().unwrap_err();
    assert!(error.to_string().contains("longer than 15"), "{error}");
}

#[test]
fn link_names_follow_kernel_rules() {
    assert!(validate_link_name("kube-lb0").is_ok());
    assert!(validate_link_name("123456789012345").is_ok());
    for bad in ["", ".", "..", "a/b", "a b", "eth0:1", "1234567890123456"] {
        assert!(validate_link_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn address_messages_are_read_back() {
    let mut message = AddressMessage::default();
    message.header.index = 3;
    message.header.prefix_len = 64;
    let mut cache = CacheInfo::default();
    cache.ifa_valid = 250;
    cache.ifa_preferred = u32::MAX;
    message.attributes = vec![
        AddressAttribute::Address(ip("2001:db8::7")),
        AddressAttribute::Flags(KernelAddressFlags::Tentative | KernelAddressFlags::Noprefixroute),
        AddressAttribute::CacheInfo(cache),
        AddressAttribute::Protocol(AddressProtocol::Other(0x50)),
    ];
    let a = address_from_message(&message, "eth0").unwrap();
    assert_eq!((a.index, a.ifname.as_str(), a.ip, a.prefix_len), (3, "eth0", ip("2001:db8::7"), 64));
    assert!(a.state.tentative && a.flags.noprefixroute && !a.flags.nodad && !a.state.permanent);
    assert_eq!((a.valid_lifetime, a.preferred_lifetime), (Some(250), None));
    assert!(a.has_purelb_mark());

    // IPv4 point-to-point: IFA_LOCAL is ours, IFA_ADDRESS the peer; no IFA_FLAGS falls back
    // to the header byte.
    let mut message = AddressMessage::default();
    message.header.prefix_len = 32;
    message.header.flags = rtnetlink::packet_route::address::AddressHeaderFlags::Secondary;
    message.attributes =
        vec![AddressAttribute::Address(ip("198.51.100.9")), AddressAttribute::Local(ip("198.51.100.1"))];
    let a = address_from_message(&message, "ppp0").unwrap();
    assert_eq!(a.ip, ip("198.51.100.1"));
    assert!(a.state.secondary);
    assert_eq!(a.protocol, None);
    assert!(address_from_message(&AddressMessage::default(), "x").is_none());
}

#[test]
fn link_messages_are_read_back() {
    let mut message = LinkMessage::default();
    message.header.index = 4;
    message.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
    message.attributes =
        vec![LinkAttribute::IfName("kube-lb0".into()), LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)])];
    let l = link_from_message(&message).unwrap();
    assert_eq!((l.index, l.name.as_str(), l.kind.as_deref()), (4, "kube-lb0", Some("bridge")));
    assert!(l.is_usable() && !l.loopback);
    message.header.flags = LinkFlags::Up;
    assert!(!link_from_message(&message).unwrap().is_usable(), "no carrier");
    assert!(link_from_message(&LinkMessage::default()).is_none());
}

fn route(oif: u32, metric: u32) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.kind = RouteType::Unicast;
    message.attributes = vec![RouteAttribute::Oif(oif), RouteAttribute::Priority(metric)];
    message
}

#[test]
fn default_routes_are_read_from_main_table_unicast_slash_zero() {
    assert_eq!(default_routes_from(&route(2, 100)), vec![DefaultRoute { oif: 2, metric: 100 }]);
    let mut not_default = route(2, 100);
    not_default.header.destination_prefix_length = 24;
    assert!(default_routes_from(&not_default).is_empty());
    let mut other_table = route(2, 100);
    other_table.attributes.push(RouteAttribute::Table(1000));
    assert!(default_routes_from(&other_table).is_empty());
    let mut unreachable = route(2, 100);
    unreachable.header.kind = RouteType::Unreachable;
    assert!(default_routes_from(&unreachable).is_empty());
    let mut linkdown = route(2, 100);
    linkdown.header.flags = RouteFlags::Linkdown;
    assert!(default_routes_from(&linkdown).is_empty());

    let mut multipath = RouteMessage::default();
    multipath.header.table = RouteHeader::RT_TABLE_MAIN;
    multipath.header.kind = RouteType::Unicast;
    let mut hop_a = RouteNextHop::default();
    hop_a.interface_index = 5;
    let mut hop_b = RouteNextHop::default();
    hop_b.interface_index = 6;
    hop_b.flags = RouteNextHopFlags::Linkdown;
    multipath.attributes = vec![RouteAttribute::MultiPath(vec![hop_a, hop_b])];
    assert_eq!(default_routes_from(&multipath), vec![DefaultRoute { oif: 5, metric: 0 }]);
}

#[test]
fn default_interface_is_lowest_metric_on_a_usable_link() {
    let links = [link(2, "eth0", true), link(3, "eth1", true), link(4, "eth2", false)];
    let routes = [
        DefaultRoute { oif: 2, metric: 100 },
        DefaultRoute { oif: 3, metric: 50 },
        DefaultRoute { oif: 4, metric: 10 },
        DefaultRoute { oif: 9, metric: 1 },
    ];
    assert_eq!(choose_default_interface(&routes, &links).unwrap().name, "eth1");
    assert_eq!(choose_default_interface(&routes[..1], &links).unwrap().name, "eth0");
    assert!(choose_default_interface(&routes[2..], &links).is_none(), "down and unknown links are ignored");
    let tie = [DefaultRoute { oif: 3, metric: 0 }, DefaultRoute { oif: 2, metric: 0 }];
    assert_eq!(choose_default_interface(&tie, &links).unwrap().name, "eth0");
}

#[test]
fn interface_for_skips_addresses_that_do_not_define_a_subnet() {
    let mut tentative = addr("eth1", 3, "2001:db8:1::1", 64);
    tentative.state.tentative = true;
    let mut deprecated = addr("eth2", 4, "2001:db8:1::2", 64);
    deprecated.state.deprecated = true;
    let mut failed = addr("eth3", 5, "2001:db8:1::3", 64);
    failed.state.dad_failed = true;
    let addresses = vec![
        addr("eth0", 2, "2001:db8::1", 32),
        tentative,
        deprecated,
        failed,
        addr("eth0", 2, "fe80::1", 64),
        ours(addr("kube-lb0", 9, "2001:db8:1::99", 128)),
        ours(addr("eth4", 6, "2001:db8:1::98", 64)),
        addr("eth4", 6, "192.0.2.1", 24),
        addr("eth5", 7, "192.0.2.200", 25),
        addr("lo", 1, "198.51.100.7", 32),
    ];
    let found = interface_for(&addresses, ip("2001:db8:1::99")).unwrap();
    assert_eq!((found.ifname.as_str(), found.prefix_len), ("eth0", 32));
    assert!(interface_for(&addresses, ip("fe80::99")).is_none(), "link-local is skipped");
    let found = interface_for(&addresses, ip("192.0.2.201")).unwrap();
    assert_eq!((found.ifname.as_str(), found.prefix_len), ("eth5", 25), "longest prefix wins");
    assert_eq!(found.subnet.to_string(), "192.0.2.128/25");
    assert_eq!(interface_for(&addresses, ip("192.0.2.7")).unwrap().ifname, "eth4");
    assert!(interface_for(&addresses, ip("198.51.100.7")).is_none(), "host addresses define no subnet");
    assert!(interface_for(&addresses, ip("203.0.113.1")).is_none());
}

#[test]
fn ownership_needs_the_mark_unless_the_kernel_cannot_store_it() {
    let pools = [AddressRange::parse("192.0.2.0/24").unwrap()];
    let managed = ["kube-lb0"];
    let admin = addr("kube-lb0", 5, "192.0.2.50", 32);
    let mine = ours(addr("eth0", 2, "203.0.113.9", 32));
    let elsewhere = addr("eth0", 2, "192.0.2.51", 32);
    let outside = addr("kube-lb0", 5, "198.51.100.1", 32);

    assert!(is_owned(&mine, &managed, &pools, MarkSupport::Stored), "marked: ours anywhere");
    assert!(is_owned(&mine, &managed, &pools, MarkSupport::NotStored));
    assert!(!is_owned(&admin, &managed, &pools, MarkSupport::Stored), "unmarked on a mark-storing kernel");
    assert!(is_owned(&admin, &managed, &pools, MarkSupport::NotStored), "old kernel: pool range on managed link");
    assert!(!is_owned(&elsewhere, &managed, &pools, MarkSupport::NotStored), "not a managed interface");
    assert!(!is_owned(&outside, &managed, &pools, MarkSupport::NotStored), "outside every pool");
    let mut other_mark = admin.clone();
    other_mark.protocol = Some(2);
    assert!(!is_owned(&other_mark, &managed, &pools, MarkSupport::NotStored), "someone else's mark");
}

#[test]
fn kernel_release_decides_mark_support() {
    assert_eq!(MarkSupport::from_kernel_release("6.3.0"), Some(MarkSupport::Stored));
    assert_eq!(MarkSupport::from_kernel_release("6.18.44-fc-v657\n"), Some(MarkSupport::Stored));
    assert_eq!(MarkSupport::from_kernel_release("6.2.16-300.fc38.x86_64"), Some(MarkSupport::NotStored));
    assert_eq!(MarkSupport::from_kernel_release("5.15.0-105-generic"), Some(MarkSupport::NotStored));
    assert_eq!(MarkSupport::from_kernel_release("garbage"), None);
}

#[test]
fn errors_name_the_interface_address_and_errno() {
    let error = NetlinkError::create_link("kube-lb0", KernelError::Errno(libc::EOPNOTSUPP));
    let text = error.to_string();
    assert!(text.contains("kube-lb0") && text.contains("dummy") && text.contains("EOPNOTSUPP"), "{text}");
    assert!(text.contains("ip link add kube-lb0 type bridge"), "{text}");
    assert_eq!(error.errno(), Some(95));
    let other = NetlinkError::create_link("kube-lb0", KernelError::Errno(libc::EPERM)).to_string();
    assert!(!other.contains("modprobe"), "{other}");

    let error = NetlinkError::AddAddress {
        link: "eth0".into(),
        ip: ip("192.0.2.1"),
        prefix_len: 24,
        kernel: KernelError::from_code(-libc::EEXIST),
    };
    assert_eq!(error.to_string(), "cannot add 192.0.2.1/24 to eth0: EEXIST: File exists (os error 17)");
    assert_eq!(KernelError::Errno(4000).to_string(), std::io::Error::from_raw_os_error(4000).to_string());
    let not_owned = NetlinkError::NotOwned { link: "eth0".into(), ip: ip("192.0.2.1") }.to_string();
    assert!(not_owned.contains("192.0.2.1 on eth0") && not_owned.contains("not added by PureLB"), "{not_owned}");
}

#[test]
fn snapshot_lookups() {
    let snapshot = AddressSnapshot {
        links: vec![link(2, "eth0", true)],
        addresses: vec![addr("eth0", 2, "192.0.2.1", 24), addr("eth1", 3, "198.51.100.1", 24)],
    };
    assert_eq!(snapshot.link("eth0").unwrap().index, 2);
    assert_eq!(snapshot.addresses_on(&LinkRef::Index(3)).count(), 1);
    assert_eq!(snapshot.addresses_on(&"eth0".into()).count(), 1);
    assert_eq!(snapshot.interface_for(ip("192.0.2.9")).unwrap().ifname, "eth0");
    assert_eq!(Family::of(snapshot.addresses[0].ip), snapshot.addresses[0].family());
    assert_eq!(LinkRef::Index(3).to_string(), "interface #3");
}
