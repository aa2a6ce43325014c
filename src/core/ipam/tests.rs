#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;

use super::*;

fn pool(pool: &str, subnet: &str) -> AddressPool {
    AddressPool { pool: pool.into(), subnet: subnet.into(), aggregation: None }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn cidr_pool_starts_at_the_written_address() {
    let r = AddressRange::parse("192.0.2.241/28").unwrap();
    assert_eq!(r.first(), ip("192.0.2.241"));
    assert_eq!(r.last(), ip("192.0.2.255"));
    assert_eq!(r.size(), AddressCount::new(15));
    let r = AddressRange::parse("2001:db8::1/112").unwrap();
    assert_eq!(r.size().to_string(), "65535");
}

#[test]
fn from_to_ranges_with_whitespace() {
    let r = AddressRange::parse("  192.0.2.10 - 192.0.2.20 ").unwrap();
    assert_eq!((r.first(), r.last()), (ip("192.0.2.10"), ip("192.0.2.20")));
    assert_eq!(r.size(), AddressCount::new(11));
    let r = AddressRange::parse("2001:db8::10-2001:db8::1f").unwrap();
    assert_eq!(r.size(), AddressCount::new(16));
}

#[test]
fn sizes_are_exact_for_huge_ipv6_ranges() {
    assert_eq!(AddressRange::parse("2001:db8::/64").unwrap().size().to_string(), "18446744073709551616");
    assert_eq!(AddressRange::parse("::/0").unwrap().size().to_string(), "340282366920938463463374607431768211456");
    assert_eq!(AddressRange::parse("0.0.0.0/0").unwrap().size().to_string(), "4294967296");
    let whole = AddressRange::parse("::/0").unwrap().size();
    assert_eq!(whole.saturating_add(AddressCount::new(5)), whole, "saturates, never wraps");
    assert_eq!(whole.saturating_sub(AddressCount::new(1)).to_string(), u128::MAX.to_string());
    assert_eq!(AddressCount::new(3).saturating_sub(AddressCount::new(5)), AddressCount::ZERO);
}

#[test]
fn subnet_drops_host_bits() {
    let s = Subnet::parse(" 192.0.2.7/24 ").unwrap();
    assert_eq!(s.to_string(), "192.0.2.0/24");
    assert!(s.contains(ip("192.0.2.255")));
    assert!(!s.contains(ip("192.0.3.0")));
    assert!(!s.contains(ip("2001:db8::1")));
    assert_eq!(Subnet::parse("2001:db8::1/64").unwrap().to_string(), "2001:db8::/64");
    assert_eq!(Subnet::parse("192.0.2.0/33"), Err(SyntaxError::PrefixTooLong { len: 33, family: Family::V4 }));
    assert_eq!(Subnet::parse("192.0.2.0"), Err(SyntaxError::NotACidr));
    // The prefix length is one to three digits and nothing else (Rust's integer parser alone
    // would take a sign, and leading zeros without a bound).
    for text in ["192.0.2.0/", "192.0.2.0/+24", "192.0.2.0/-0", "192.0.2.0/0024", "2001:db8::/0064", "192.0.2.0/2 4"] {
        assert_eq!(Subnet::parse(text), Err(SyntaxError::NotACidr), "{text}");
    }
    assert_eq!(Subnet::parse("192.0.2.0/024").unwrap().to_string(), "192.0.2.0/24");
}

#[test]
fn ranges_order_by_family_then_first_then_last_address() {
    let [v4_low, v4_low_longer, v4_high, v6] =
        ["192.0.2.0/25", "192.0.2.0/24", "192.0.2.128/25", "2001:db8::/120"].map(|r| AddressRange::parse(r).unwrap());
    // `<` is `PartialOrd` (mutation testing: `partial_cmp` could answer `None` unnoticed).
    assert!(v4_low < v4_low_longer && v4_low_longer < v4_high && v4_high < v6);
    assert_eq!(v4_high.partial_cmp(&v4_low), Some(Ordering::Greater));
    assert_eq!(v4_low.partial_cmp(&v4_low), Some(Ordering::Equal));
}

#[test]
fn overlap_and_containment() {
    let a = AddressRange::parse("192.0.2.0/24").unwrap();
    let b = AddressRange::parse("192.0.2.10-192.0.2.20").unwrap();
    let c = AddressRange::parse("198.51.100.0/24").unwrap();
    let d = AddressRange::parse("2001:db8::/120").unwrap();
    assert!(a.contains_range(&b) && !b.contains_range(&a));
    assert!(a.overlaps(&b) && b.overlaps(&a));
    assert!(!a.overlaps(&c) && !a.overlaps(&d));
    let edge = AddressRange::parse("192.0.2.255-192.0.3.5").unwrap();
    assert!(a.overlaps(&edge) && !a.contains_range(&edge));
}

fn spec(v4: &[AddressPool], v6: &[AddressPool]) -> PoolSpec {
    PoolSpec { v4pools: Some(v4.to_vec()), v6pools: Some(v6.to_vec()), ..PoolSpec::default() }
}

fn err_of(spec: &PoolSpec) -> String {
    parse_pool_spec("spec.local", spec).unwrap_err().to_string()
}

#[test]
fn a_valid_dual_stack_spec() {
    let p = parse_pool_spec(
        "spec.local",
        &PoolSpec {
            v4pools: Some(vec![pool("192.0.2.240/29", "192.0.2.0/24")]),
            v4pool: Some(pool("192.0.2.250-192.0.2.252", "192.0.2.0/24")),
            v6pool: Some(pool("2001:db8::f0/124", "2001:db8::/64")),
            ..PoolSpec::default()
        },
    )
    .unwrap();
    assert_eq!(p.v4.len(), 2);
    assert_eq!(p.v4[1].field, "spec.local.v4pool", "single pool is appended after the list");
    assert_eq!(p.size(Family::V4), AddressCount::new(11));
    assert_eq!(p.size(Family::V6), AddressCount::new(16));
    assert_eq!(p.v6[0].aggregation, 64, "default aggregation is the subnet's prefix");
}

#[test]
fn error_unparsable_pool_names_field_and_value() {
    let e = err_of(&spec(&[pool("192.0.2.x", "192.0.2.0/24")], &[]));
    assert!(e.contains("spec.local.v4pools[0].pool") && e.contains("\"192.0.2.x\""), "{e}");
    let e = err_of(&spec(&[], &[pool("2001:db8::/129", "2001:db8::/64")]));
    assert!(e.contains("spec.local.v6pools[0].pool") && e.contains("/129") && e.contains("IPv6"), "{e}");
}

#[test]
fn error_mixed_families() {
    let e = err_of(&spec(&[pool("192.0.2.1-2001:db8::1", "192.0.2.0/24")], &[]));
    assert!(e.contains("spec.local.v4pools[0].pool") && e.contains("\"192.0.2.1-2001:db8::1\""), "{e}");
    assert!(e.contains("mixes IPv4 and IPv6"), "{e}");
    let e = err_of(&spec(&[], &[pool("2001:db8::1-192.0.2.1", "2001:db8::/64")]));
    assert!(e.contains("spec.local.v6pools[0].pool") && e.contains("mixes"), "{e}");
}

#[test]
fn error_reversed() {
    let e = err_of(&spec(&[pool("192.0.2.20-192.0.2.10", "192.0.2.0/24")], &[]));
    assert!(
        e.contains("spec.local.v4pools[0].pool") && e.contains("\"192.0.2.20-192.0.2.10\"") && e.contains("reversed"),
        "{e}"
    );
    let e = err_of(&spec(&[], &[pool("2001:db8::20-2001:db8::10", "2001:db8::/64")]));
    assert!(e.contains("spec.local.v6pools[0].pool") && e.contains("reversed"), "{e}");
}

#[test]
fn error_outside_subnet() {
    let e = err_of(&spec(&[pool("192.0.2.240/28", "198.51.100.0/24")], &[]));
    assert!(
        e.contains("spec.local.v4pools[0].pool")
            && e.contains("\"192.0.2.240/28\"")
            && e.contains("\"198.51.100.0/24\""),
        "{e}"
    );
    // Partly outside: the range runs past the end of the subnet.
    let e = err_of(&spec(&[pool("192.0.2.250-192.0.3.5", "192.0.2.0/24")], &[]));
    assert!(e.contains("not inside its subnet"), "{e}");
    let e = err_of(&spec(&[], &[pool("2001:db8:1::/120", "2001:db8::/64")]));
    assert!(e.contains("spec.local.v6pools[0].pool") && e.contains("not inside its subnet"), "{e}");
    let e = err_of(&spec(&[pool("192.0.2.1/32", "2001:db8::/64")], &[]));
    assert!(e.contains("is IPv4 but its subnet \"2001:db8::/64\" is IPv6"), "{e}");
}

#[test]
fn error_bad_subnet() {
    let e = err_of(&spec(&[pool("192.0.2.1/32", "192.0.2.0")], &[]));
    assert!(e.contains("spec.local.v4pools[0].subnet") && e.contains("\"192.0.2.0\""), "{e}");
    let e = err_of(&spec(&[pool("192.0.2.1/32", "192.0.2.0/40")], &[]));
    assert!(e.contains("spec.local.v4pools[0].subnet") && e.contains("/40"), "{e}");
}

#[test]
fn error_wrong_family_list() {
    let e = err_of(&spec(&[pool("2001:db8::1/128", "2001:db8::/64")], &[]));
    assert!(e.contains("spec.local.v4pools[0].pool") && e.contains("\"2001:db8::1/128\""), "{e}");
    assert!(e.contains("IPv6 range in v4pools: move it to v6pools"), "{e}");
    let e = err_of(&PoolSpec { v6pool: Some(pool("192.0.2.1/32", "192.0.2.0/24")), ..PoolSpec::default() });
    assert!(e.contains("spec.local.v6pool.pool") && e.contains("IPv4 range in v6pool: move it to v4pool"), "{e}");
}

#[test]
fn error_overlap_inside_a_group_including_containment() {
    let e = err_of(&spec(&[pool("192.0.2.0/24", "192.0.2.0/24"), pool("192.0.2.10-192.0.2.20", "192.0.2.0/24")], &[]));
    assert!(e.contains("spec.local.v4pools[1].pool") && e.contains("\"192.0.2.10-192.0.2.20\""), "{e}");
    assert!(e.contains("overlaps spec.local.v4pools[0].pool \"192.0.2.0/24\""), "{e}");
    let e = err_of(&PoolSpec {
        v6pools: Some(vec![pool("2001:db8::/120", "2001:db8::/64")]),
        v6pool: Some(pool("2001:db8::80-2001:db8::ff", "2001:db8::/64")),
        ..PoolSpec::default()
    });
    assert!(e.contains("spec.local.v6pool.pool") && e.contains("overlaps spec.local.v6pools[0].pool"), "{e}");
}

/// The overlap reported is the first candidate's, also when a later candidate that ends where an
/// earlier group's range ends overlaps both (mutation testing: `>` → `>=` in the sweep made the
/// later candidate the one that reaches furthest, and the first candidate's overlap went unseen).
#[test]
fn the_first_candidate_in_field_order_is_reported_when_ranges_end_together() {
    let earlier = parse_pool_spec("spec.remote", &spec(&[pool("192.0.2.0-192.0.2.20", "192.0.2.0/24")], &[])).unwrap();
    let first = parse_pool_spec("spec.local", &spec(&[pool("192.0.2.15-192.0.2.30", "192.0.2.0/24")], &[])).unwrap();
    let second = parse_pool_spec("spec.remote", &spec(&[pool("192.0.2.10-192.0.2.20", "192.0.2.0/24")], &[])).unwrap();
    let existing: Vec<(&str, &ParsedRange)> = earlier.all().map(|r| ("purelb-system/a", r)).collect();
    let own: Vec<&ParsedRange> = first.all().chain(second.all()).collect();
    let e = find_overlap(&own, &existing).unwrap().to_string();
    assert!(e.starts_with("spec.local.v4pools[0].pool: \"192.0.2.15-192.0.2.30\" overlaps"), "{e}");
    assert!(e.contains("of ServiceGroup purelb-system/a"), "{e}");
}

#[test]
fn error_overlap_with_an_earlier_group() {
    let earlier = parse_pool_spec("spec.remote", &spec(&[pool("198.51.100.0/24", "198.51.100.0/24")], &[])).unwrap();
    let mine = parse_pool_spec(
        "spec.local",
        &spec(&[pool("192.0.2.0/28", "192.0.2.0/24"), pool("198.51.100.128/25", "198.51.100.0/24")], &[]),
    )
    .unwrap();
    let existing: Vec<(&str, &ParsedRange)> = earlier.all().map(|r| ("purelb-system/a", r)).collect();
    let own: Vec<&ParsedRange> = mine.all().collect();
    let e = find_overlap(&own, &existing).unwrap().to_string();
    assert!(
        e.contains("spec.local.v4pools[1].pool: \"198.51.100.128/25\" overlaps spec.remote.v4pools[0].pool"),
        "{e}"
    );
    assert!(e.contains("of ServiceGroup purelb-system/a"), "{e}");
    // Non-overlapping groups pass, across families too.
    let other = parse_pool_spec(
        "spec.local",
        &spec(&[pool("203.0.113.0/24", "203.0.113.0/24")], &[pool("2001:db8::/64", "2001:db8::/64")]),
    )
    .unwrap();
    let own: Vec<&ParsedRange> = other.all().collect();
    assert!(find_overlap(&own, &existing).is_none());
}

#[test]
fn error_aggregation() {
    let mut p = pool("192.0.2.0/28", "192.0.2.0/24");
    p.aggregation = Some("/33".into());
    let e = err_of(&spec(&[p.clone()], &[]));
    assert!(e.contains("spec.local.v4pools[0].aggregation") && e.contains("\"/33\""), "{e}");
    p.aggregation = Some("32".into());
    let e = err_of(&spec(&[p.clone()], &[]));
    assert!(e.contains("spec.local.v4pools[0].aggregation") && e.contains("\"32\""), "{e}");
    p.aggregation = Some("/32".into());
    assert_eq!(parse_pool_spec("spec.local", &spec(&[p], &[])).unwrap().v4[0].aggregation, 32);
    let mut p6 = pool("2001:db8::/120", "2001:db8::/64");
    p6.aggregation = Some("/128".into());
    assert_eq!(parse_pool_spec("spec.local", &spec(&[], &[p6])).unwrap().v6[0].aggregation, 128);
    // One to three digits after the slash and nothing else (Rust's integer parser alone takes a
    // sign and any number of leading zeros).
    for text in ["/", "/+24", "/-0", "/0024", "/2 4", "/24a"] {
        assert!(parse_aggregation("f", Some(text), Family::V4, 32).is_err(), "{text}");
    }
    assert_eq!(parse_aggregation("f", Some("/024"), Family::V4, 32), Ok(24));
}

#[test]
fn error_no_ranges() {
    let e = err_of(&PoolSpec::default());
    assert!(e.contains("spec.local has no address ranges"), "{e}");
    let e = err_of(&spec(&[], &[]));
    assert!(e.contains("no address ranges"), "{e}");
}

fn any_range() -> impl Strategy<Value = AddressRange> {
    prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| {
            let (a, b) = (a.min(b), a.max(b));
            AddressRange::from_ends(IpAddr::V4(a.into()), IpAddr::V4(b.into())).unwrap()
        }),
        (any::<u128>(), any::<u128>()).prop_map(|(a, b)| {
            let (a, b) = (a.min(b), a.max(b));
            AddressRange::from_ends(IpAddr::V6(a.into()), IpAddr::V6(b.into())).unwrap()
        }),
        (any::<u32>(), 0_u8..=32)
            .prop_map(|(a, len)| AddressRange::parse(&format!("{}/{len}", Ipv4Addr::from(a))).unwrap()),
        (any::<u128>(), 0_u8..=128)
            .prop_map(|(a, len)| AddressRange::parse(&format!("{}/{len}", Ipv6Addr::from(a))).unwrap()),
    ]
}

proptest! {
    #[test]
    fn print_parse_round_trip(r in any_range()) {
        let text = r.to_string();
        prop_assert_eq!(AddressRange::parse(&text), Ok(r), "{}", text);
        let padded = format!("  {text}\t");
        prop_assert_eq!(AddressRange::parse(&padded), Ok(r));
    }

    #[test]
    fn size_and_contains_agree(r in any_range(), probe in any::<u128>()) {
        let (first, last) = r.bounds();
        prop_assert!(r.contains(r.first()) && r.contains(r.last()));
        let size = r.size();
        match size.to_u128() {
            Some(n) => prop_assert_eq!(n, last - first + 1),
            None => prop_assert!(first == 0 && last == u128::MAX),
        }
        if first > 0 { prop_assert!(!r.contains(r.family().address(first - 1))); }
        if last < r.family().max_value() { prop_assert!(!r.contains(r.family().address(last + 1))); }
        let probe = probe % (r.family().max_value().saturating_add(1).max(1));
        let inside = (first..=last).contains(&probe);
        prop_assert_eq!(r.contains(r.family().address(probe)), inside);
        if let Some(n) = size.to_u128() {
            prop_assert_eq!(r.nth(n - 1), Some(r.last()));
            prop_assert_eq!(r.nth(n), None);
        }
    }

    #[test]
    fn overlap_is_symmetric_and_matches_containment(a in any_range(), b in any_range()) {
        prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
        if a.contains_range(&b) { prop_assert!(a.overlaps(&b)); }
        let brute = a.family() == b.family() && (a.contains(b.first()) || a.contains(b.last()) || b.contains(a.first()));
        prop_assert_eq!(a.overlaps(&b), brute);
    }

    #[test]
    fn parser_never_panics(s in ".{0,60}") {
        let _ = AddressRange::parse(&s);
        let _ = Subnet::parse(&s);
    }
}

/// The carry into and the borrow from 2^128 (mutation testing found these paths unasserted).
#[test]
fn address_counts_carry_into_and_borrow_from_two_to_the_128() {
    let whole = AddressRange::parse("::/0").unwrap().size();
    let max = AddressCount::new(u128::MAX);
    assert_eq!(whole.to_u128(), None);
    assert_eq!(max.saturating_add(AddressCount::new(1)), whole, "u128::MAX + 1 carries into 2^128");
    assert_eq!(max.saturating_add(AddressCount::new(2)), whole, "past 2^128 saturates");
    assert_eq!(AddressCount::new(5).saturating_add(whole), whole);
    assert_eq!(whole.saturating_add(whole), whole);
    assert_eq!(whole.saturating_sub(AddressCount::new(1)), max, "2^128 − 1 borrows from the high part");
    assert_eq!(whole.saturating_sub(max), AddressCount::new(1));
    assert_eq!(whole.saturating_sub(whole), AddressCount::ZERO);
}

/// `skipIPv6DAD` and `balancePools` reach the parsed pools (mutation testing: deleting the field
/// from the struct expression went unnoticed).
#[test]
fn the_spec_flags_reach_the_parsed_pools() {
    let base = spec(&[pool("192.0.2.240/29", "192.0.2.0/24")], &[]);
    let p = parse_pool_spec("spec.local", &base).unwrap();
    assert!(!p.skip_ipv6_dad && !p.balance, "both off by default");
    let flagged = PoolSpec { skip_ipv6_dad: Some(true), balance_pools: Some(true), ..base };
    let p = parse_pool_spec("spec.local", &flagged).unwrap();
    assert!(p.skip_ipv6_dad && p.balance);
}

/// A local IPv4 pool that covers its subnet skips the network and broadcast addresses, and says
/// which and why (mutation testing: `skipped_reason` and `Display for Skipped` were unasserted).
#[test]
fn skipped_addresses_are_named_with_their_reason() {
    let p = parse_pool_spec("spec.local", &spec(&[pool("192.0.2.0/24", "192.0.2.0/24")], &[])).unwrap();
    let network = p.skipped_reason(ip("192.0.2.0")).expect("the network address is skipped");
    let broadcast = p.skipped_reason(ip("192.0.2.255")).expect("the broadcast address is skipped");
    assert!(!network.is_empty() && !broadcast.is_empty());
    assert_eq!(p.skipped_reason(ip("192.0.2.1")), None);
    // What is left to allocate is the range without them (mutation testing: the parsed range
    // could be the written one, skipped addresses included, unnoticed).
    assert_eq!(
        p.v4.iter().map(|r| r.range).collect::<Vec<_>>(),
        [AddressRange::parse("192.0.2.1-192.0.2.254").unwrap()]
    );
    let shown = p.skipped[0].to_string();
    assert!(shown.starts_with("spec.local.v4pools[0].pool \"192.0.2.0/24\": 192.0.2.0"), "{shown}");
    assert!(shown.ends_with(&format!("({network})")), "{shown}");
}

/// A subnet whose prefix is too long for its family says so, not merely "not a subnet"
/// (mutation testing: the match arm for it could be deleted unnoticed).
#[test]
fn a_subnet_prefix_too_long_is_named_as_such() {
    let e = parse_pool_spec("spec.local", &spec(&[pool("192.0.2.240/29", "192.0.2.0/33")], &[])).unwrap_err();
    assert!(
        matches!(&e, PoolError::PrefixTooLong { field, len: 33, family: Family::V4, .. } if field == "spec.local.v4pools[0].subnet"),
        "{e:?}"
    );
}
