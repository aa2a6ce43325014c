//! The address-range parser (`AddressPool.pool`, `subnet`, `aggregation`): never panics, and
//! what it accepts is consistent (first ≤ last, size matches the ends, the printed form parses
//! back to the same range), and a pool of a `local` or `remote` group never keeps an address
//! that is never handed out (special-purpose, or a local IPv4 subnet's network/broadcast).
#![no_main]

use libfuzzer_sys::fuzz_target;
use purelb::{
    api::{AddressPool, PoolSpec},
    core::ipam::{AddressRange, Family, Subnet, ip_value, parse_aggregation, parse_pool_spec, special},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(range) = AddressRange::parse(text) {
        let (lo, hi) = range.bounds();
        assert!(lo <= hi, "{text:?}: first after last");
        assert_eq!(ip_value(range.first()), lo);
        assert_eq!(ip_value(range.last()), hi);
        // An exact count: 2^128 (all of IPv6) does not fit a u128 and reads as None.
        assert_eq!(range.size().to_u128(), (hi - lo).checked_add(1), "{text:?}: size");
        assert!(range.contains(range.first()) && range.contains(range.last()));
        let again = AddressRange::parse(&range.to_string()).expect("a printed range parses");
        assert_eq!(again, range, "{text:?} printed as {range} parses differently");
    }
    // `POOL|SUBNET` as a pool spec: both ends of every usable part are allowed addresses.
    let (pool, subnet_text) = text.split_once('|').unwrap_or((text, text));
    let pool_spec = AddressPool { pool: pool.to_owned(), subnet: subnet_text.to_owned(), aggregation: None };
    for (base, local) in [("spec.local", true), ("spec.remote", false)] {
        let family_spec = |v4: bool| PoolSpec {
            v4pool: v4.then(|| pool_spec.clone()),
            v6pool: (!v4).then(|| pool_spec.clone()),
            ..PoolSpec::default()
        };
        for v4 in [true, false] {
            if let Ok(parsed) = parse_pool_spec(base, &family_spec(v4)) {
                for r in parsed.all() {
                    for ip in [r.range.first(), r.range.last()] {
                        assert!(special::never_used(ip, Some(&r.subnet), local).is_none(), "{text:?}: {ip} kept");
                    }
                }
            }
        }
    }
    if let Ok(subnet) = Subnet::parse(text) {
        assert!(subnet.prefix_len() <= subnet.family().bits());
        assert!(subnet.contains(subnet.network()));
        let again = Subnet::parse(&subnet.to_string()).expect("a printed subnet parses");
        assert_eq!(again, subnet);
    }
    for (family, len) in [(Family::V4, 32), (Family::V6, 128)] {
        if let Ok(agg) = parse_aggregation("aggregation", Some(text), family, len) {
            assert!(agg <= family.bits());
        }
    }
});
