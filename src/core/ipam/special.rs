//! Addresses that are never handed out and never put on an interface (issue 16 §6), whatever a
//! pool, a pin, `spec.loadBalancerIP` or NetBox says: the special-purpose blocks below, and in
//! `local` pools the network and broadcast address of an IPv4 subnet (a /30 or shorter; /31
//! and /32 have none, RFC 3021). Documentation and private ranges stay allocatable.

use std::net::IpAddr;

use super::{AddressRange, Family, Subnet};

/// The special-purpose blocks, with what they are.
const BLOCKS: [(&str, &str); 10] = [
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    ("240.0.0.0/4", "reserved or limited broadcast (240.0.0.0/4, 255.255.255.255)"),
    ("::/128", "the unspecified address (::/128)"),
    ("::1/128", "loopback (::1/128)"),
    ("::ffff:0:0/96", "IPv4-mapped (::ffff:0:0/96)"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("ff00::/8", "multicast (ff00::/8)"),
];

/// [`BLOCKS`] parsed, once: the agent asks for every address of every Service on each pass.
fn blocks() -> impl Iterator<Item = (AddressRange, &'static str)> {
    static PARSED: std::sync::LazyLock<Vec<(AddressRange, &'static str)>> = std::sync::LazyLock::new(|| {
        BLOCKS.iter().filter_map(|(cidr, why)| Subnet::parse(cidr).ok().map(|s| (s.range(), *why))).collect()
    });
    PARSED.iter().copied()
}

/// What `ip` is when it is a special-purpose address (never handed out), else `None`.
#[must_use]
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    blocks().find(|(range, _)| range.contains(ip)).map(|(_, why)| why)
}

/// The network and broadcast address of an IPv4 subnet of /30 or shorter.
fn network_and_broadcast(subnet: &Subnet) -> Vec<(AddressRange, String)> {
    if subnet.family() != Family::V4 || subnet.prefix_len() > 30 {
        return Vec::new();
    }
    let range = subnet.range();
    [(range.first(), "network"), (range.last(), "broadcast")]
        .into_iter()
        .map(|(ip, what)| (AddressRange::single(ip), format!("the {what} address of {subnet}")))
        .collect()
}

/// Why `ip` must not be used in a pool with `subnet` (`local`: a pool of a `local` group).
#[must_use]
pub fn never_used(ip: IpAddr, subnet: Option<&Subnet>, local: bool) -> Option<String> {
    if let Some(why) = special_purpose(ip) {
        return Some(why.to_owned());
    }
    let subnet = subnet.filter(|_| local)?;
    network_and_broadcast(subnet).into_iter().find(|(r, _)| r.contains(ip)).map(|(_, why)| why)
}

/// `range` without the addresses that are never used: the usable parts in order, and each
/// excluded part (clipped to `range`) with what it is.
#[must_use]
pub fn split(range: &AddressRange, subnet: &Subnet, local: bool) -> (Vec<AddressRange>, Vec<(AddressRange, String)>) {
    let mut excluded: Vec<(AddressRange, String)> = blocks().map(|(r, why)| (r, why.to_owned())).collect();
    if local {
        excluded.extend(network_and_broadcast(subnet));
    }
    let (first, last) = range.bounds();
    let mut cut: Vec<(u128, u128, String)> = excluded
        .into_iter()
        .filter(|(r, _)| r.family() == range.family() && r.overlaps(range))
        .map(|(r, why)| {
            let (a, b) = r.bounds();
            (a.max(first), b.min(last), why)
        })
        .collect();
    cut.sort();
    // Disjoint: a part inside an earlier one goes (a subnet's broadcast inside a special block),
    // one that overlaps it starts after it.
    let mut disjoint: Vec<(u128, u128, String)> = Vec::new();
    for (a, b, why) in cut {
        match disjoint.last() {
            Some((_, end, _)) if b <= *end => {}
            Some((_, end, _)) if a <= *end => {
                let start = end + 1;
                disjoint.push((start, b, why));
            }
            _ => disjoint.push((a, b, why)),
        }
    }
    let cut = disjoint;
    let mut usable = Vec::new();
    let mut next = first;
    let mut done = false;
    for (a, b, _) in &cut {
        if *a > next {
            usable.push(part(range.family(), next, a - 1));
        }
        if *b == u128::MAX || *b >= last {
            done = true;
            break;
        }
        next = next.max(b + 1);
    }
    if !done && next <= last {
        usable.push(part(range.family(), next, last));
    }
    let skipped = cut.into_iter().filter_map(|(a, b, why)| Some((part(range.family(), a, b)?, why))).collect();
    (usable.into_iter().flatten().collect(), skipped)
}

fn part(family: Family, first: u128, last: u128) -> Option<AddressRange> {
    AddressRange::from_ends(family.address(first), family.address(last)).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_special_purpose_block_and_nothing_else() {
        for special in [
            "0.0.0.0",
            "0.255.255.255",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:192.0.2.1",
            "fe80::1",
            "febf::1",
            "ff02::1",
        ] {
            assert!(special_purpose(ip(special)).is_some(), "{special}");
        }
        for usable in [
            "1.0.0.0",
            "10.0.0.1",
            "126.255.255.255",
            "128.0.0.0",
            "172.16.0.1",
            "192.168.1.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.255",
            "223.255.255.255",
            "::2",
            "2001:db8::1",
            "fc00::1",
            "fec0::1",
            "feff::1",
        ] {
            assert!(special_purpose(ip(usable)).is_none(), "{usable}");
        }
    }

    #[test]
    fn a_local_pool_skips_the_broadcast_address_and_a_remote_one_does_not() {
        let subnet = Subnet::parse("192.0.2.0/24").unwrap();
        let range = AddressRange::parse("192.0.2.240/28").unwrap();
        let (usable, skipped) = split(&range, &subnet, true);
        assert_eq!(usable, vec![AddressRange::parse("192.0.2.240-192.0.2.254").unwrap()]);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].1.contains("broadcast address of 192.0.2.0/24"), "{skipped:?}");
        assert_eq!(split(&range, &subnet, false), (vec![range], vec![]));
        let whole = subnet.range();
        let (usable, skipped) = split(&whole, &subnet, true);
        assert_eq!(usable, vec![AddressRange::parse("192.0.2.1-192.0.2.254").unwrap()]);
        assert_eq!(skipped.len(), 2);
        // A /31 or /32 subnet has no network or broadcast address; a /30 has both (mutation
        // testing: `> 30` → `>= 30` went unseen).
        let p2p = Subnet::parse("192.0.2.0/31").unwrap();
        assert_eq!(split(&p2p.range(), &p2p, true).0, vec![p2p.range()]);
        let smallest = Subnet::parse("192.0.2.0/30").unwrap();
        assert_eq!(
            split(&smallest.range(), &smallest, true).0,
            vec![AddressRange::parse("192.0.2.1-192.0.2.2").unwrap()]
        );
    }

    /// A subnet's network and broadcast address inside a special block are skipped once each
    /// address: the skipped parts never overlap (mutation testing: a part overlapping or inside
    /// an earlier one could be listed again unnoticed, and the skipped parts then counted more
    /// addresses than the range has).
    #[test]
    fn skipped_parts_never_overlap() {
        let range = |text: &str| AddressRange::parse(text).unwrap();
        let loopback = "loopback (127.0.0.0/8)".to_owned();
        // The network address sorts first (a shorter part at the same start): the block then
        // starts after it.
        let subnet = Subnet::parse("127.0.0.0/30").unwrap();
        let (usable, skipped) = split(&subnet.range(), &subnet, true);
        assert!(usable.is_empty());
        assert_eq!(
            skipped,
            vec![
                (range("127.0.0.0/32"), "the network address of 127.0.0.0/30".to_owned()),
                (range("127.0.0.1-127.0.0.3"), loopback.clone())
            ]
        );
        // Both inside the block, after its start: the block alone.
        let subnet = Subnet::parse("127.0.0.4/30").unwrap();
        let (usable, skipped) = split(&range("127.0.0.0-127.0.0.15"), &subnet, true);
        assert!(usable.is_empty());
        assert_eq!(skipped, vec![(range("127.0.0.0-127.0.0.15"), loopback)]);
    }

    #[test]
    fn typos_that_reach_special_blocks_are_cut_out() {
        let all6 = Subnet::parse("::/0").unwrap();
        let (usable, _) = split(&all6.range(), &all6, false);
        for bad in ["::", "::1", "::ffff:127.0.0.1", "fe80::1", "ff02::1"] {
            assert!(!usable.iter().any(|r| r.contains(ip(bad))), "{bad}");
        }
        assert!(usable.iter().any(|r| r.contains(ip("2001:db8::1"))));
        let multicast = Subnet::parse("224.0.0.0/4").unwrap();
        let range = AddressRange::parse("224.0.0.0/30").unwrap();
        assert!(split(&range, &multicast, false).0.is_empty());
        let loopback = Subnet::parse("127.0.0.0/8").unwrap();
        assert!(split(&AddressRange::parse("127.0.0.1/32").unwrap(), &loopback, true).0.is_empty());
    }

    fn v4() -> impl Strategy<Value = (u32, u8, u32, u32)> {
        (any::<u32>(), 0u8..=32, any::<u32>(), any::<u32>())
    }

    proptest! {
        /// The usable parts and the skipped parts are disjoint, cover the range exactly, and
        /// no usable address is one that is never used.
        #[test]
        fn usable_and_skipped_partition_the_range((base, len, a, b) in v4(), local in any::<bool>(), probe in any::<u32>()) {
            let subnet = Subnet::new(IpAddr::from(base.to_be_bytes()), len);
            let (first, last) = subnet.range().bounds();
            let span = last - first + 1;
            let (x, y) = (first + u128::from(a) % span, first + u128::from(b) % span);
            let range = AddressRange::from_ends(Family::V4.address(x.min(y)), Family::V4.address(x.max(y))).unwrap();
            let (usable, skipped) = split(&range, &subnet, local);
            let size = |rs: &mut dyn Iterator<Item = &AddressRange>| rs.map(|r| r.size().to_u128().unwrap()).sum::<u128>();
            prop_assert_eq!(size(&mut usable.iter()) + size(&mut skipped.iter().map(|(r, _)| r)), range.size().to_u128().unwrap());
            let probe = Family::V4.address(range.bounds().0 + u128::from(probe) % range.size().to_u128().unwrap());
            let in_usable = usable.iter().any(|r| r.contains(probe));
            prop_assert_eq!(in_usable, never_used(probe, Some(&subnet), local).is_none(), "{}", probe);
        }
    }
}
